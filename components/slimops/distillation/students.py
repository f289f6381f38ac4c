"""Students, built from (or checked against) the teacher before any training.

- Hugging Face encoders: keep some of the teacher's transformer layers (weights copied), optionally with a
  narrower feed-forward block whose neurons are the teacher's largest-norm ones.
- PyTorch classifiers: any importable ``package.module:factory``, trained from scratch; its output size must
  match the teacher's.

Every incompatibility is a BadInput raised here, before anything is trained or written.
"""

from __future__ import annotations

import copy
import re

from slimops.errors import BadInput

# Layer prefixes of the common encoder families (BERT/MiniLM/RoBERTa: encoder.layer.N, DistilBERT: transformer.layer.N).
_LAYER_KEY = re.compile(r"^((?:.*\.)?(?:encoder\.layer|transformer\.layer|layers))\.(\d+)\.(.*)$")


def check_layers(layers: list[int], num_layers: int) -> None:
    if not layers:
        raise BadInput("student.layers is empty; list the teacher layers to keep, e.g. [0, 2, 4]")
    for index in layers:
        if not 0 <= index < num_layers:
            raise BadInput(f"student.layers: layer index {index} out of range for a {num_layers}-layer teacher "
                           f"(valid: 0..{num_layers - 1})")
    duplicates = sorted({i for i in layers if layers.count(i) > 1})
    if duplicates:
        raise BadInput(f"student.layers: layer index {duplicates[0]} is listed twice; list each teacher layer once")


def encoder_student(teacher, layers: list[int], intermediate_size: int | None = None):
    """A copy of ``teacher`` (a transformers encoder) keeping ``layers`` in that order. Returns the new model."""
    import torch

    config = teacher.config
    num_layers = int(config.num_hidden_layers)
    check_layers(layers, num_layers)
    teacher_ffn = int(getattr(config, "intermediate_size", 0) or 0)
    if intermediate_size is not None:
        if not teacher_ffn:
            raise BadInput(f"student.intermediate_size: the teacher ({type(teacher).__name__}) has no "
                           "intermediate_size to narrow; leave it out")
        if intermediate_size > teacher_ffn:
            raise BadInput(f"student.intermediate_size {intermediate_size} is wider than the teacher's {teacher_ffn}; "
                           "give a value up to it (or leave it out)")

    student_config = copy.deepcopy(config)
    student_config.num_hidden_layers = len(layers)
    if intermediate_size is not None:
        student_config.intermediate_size = intermediate_size
    from transformers import AutoModel

    student = AutoModel.from_config(student_config)

    teacher_state = teacher.state_dict()
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    state = {}
    for name, tensor in teacher_state.items():
        match = _LAYER_KEY.match(name)
        if match:
            by_layer.setdefault(int(match.group(2)), {})[name] = tensor
        else:
            state[name] = tensor
    for new_index, old_index in enumerate(layers):
        layer_state = {}
        for name, tensor in by_layer.get(old_index, {}).items():
            prefix, _, rest = _LAYER_KEY.match(name).groups()
            layer_state[rest] = (prefix, tensor)
        if intermediate_size is not None and intermediate_size < teacher_ffn:
            layer_state = _narrow_ffn(layer_state, intermediate_size, type(teacher).__name__)
        for rest, (prefix, tensor) in layer_state.items():
            state[f"{prefix}.{new_index}.{rest}"] = tensor
    missing, unexpected = student.load_state_dict({k: v.clone() for k, v in state.items()}, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing or unexpected:
        raise BadInput(f"cannot map the teacher's weights onto a {len(layers)}-layer student "
                       f"(missing {missing[:2]}, unexpected {unexpected[:2]}); this encoder family is not supported")
    return student


def _narrow_ffn(layer_state: dict, size: int, family: str) -> dict:
    """Keep the ``size`` feed-forward neurons with the largest |w_in| * |w_out| (BERT naming)."""
    import torch

    w_in = layer_state.get("intermediate.dense.weight")
    w_out = layer_state.get("output.dense.weight")
    if w_in is None or w_out is None:
        raise BadInput(f"student.intermediate_size: {family} layers have no intermediate.dense/output.dense "
                       "(BERT naming); leave intermediate_size out")
    score = w_in[1].norm(dim=1) * w_out[1].norm(dim=0)
    keep = torch.sort(torch.topk(score, size).indices).values
    narrowed = dict(layer_state)
    prefix = w_in[0]
    narrowed["intermediate.dense.weight"] = (prefix, w_in[1][keep])
    narrowed["intermediate.dense.bias"] = (prefix, layer_state["intermediate.dense.bias"][1][keep])
    narrowed["output.dense.weight"] = (prefix, w_out[1][:, keep])
    return narrowed


def check_encoder_pair(teacher, student, student_tokenizer, teacher_tokenizer) -> None:
    """A given student (``from_input``) must embed into the teacher's space and read the same token ids."""
    t_width, s_width = int(teacher.config.hidden_size), int(student.config.hidden_size)
    if t_width != s_width:
        raise BadInput(f"the student's embeddings have {s_width} dimensions, the teacher's {t_width}; embedding "
                       "distillation needs the same width (prune heads, FFN neurons or layers, not the hidden size)")
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise BadInput("the student and the teacher use different vocabularies; distil a student derived from the "
                       "teacher (same tokenizer)")


def check_classifier_pair(student, input_shape: list[int] | None, num_labels: int, where,
                          hint: str = "distil a student with the teacher's outputs") -> None:
    """A student (given with ``from_input``, or built by a factory) must take the teacher's inputs and give as
    many outputs."""
    import torch

    if not input_shape:
        return
    was_training = student.training
    student.eval()
    try:
        with torch.inference_mode():
            out = student(torch.zeros(2, *input_shape))
    except Exception as err:
        raise BadInput(f"the student {where} cannot take the teacher's inputs {input_shape} "
                       f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    finally:
        student.train(was_training)
    if out.ndim != 2 or out.shape[1] != num_labels:
        raise BadInput(f"the student {where} outputs shape {list(out.shape[1:])} per example, the teacher "
                       f"{[num_labels]}; {hint}")


def factory_student(factory: str, kwargs: dict, input_shape: list[int] | None, num_labels: int):
    """A freshly initialised ``factory(**kwargs)`` whose output has ``num_labels`` columns, as the teacher's."""
    import torch

    from slimops.handlers.runtime import import_factory

    build = import_factory(factory, "distill student.factory")
    try:
        model = build(**kwargs)
    except Exception as err:  # a wrong keyword, a bad value: the factory's own error, on one line
        raise BadInput(f"student factory {factory}(**{kwargs}) failed: {type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''}; fix student.kwargs") from None
    if not isinstance(model, torch.nn.Module):
        raise BadInput(f"student factory {factory} returned {type(model).__name__}, not a torch.nn.Module")
    check_classifier_pair(model, input_shape, num_labels, factory,
                          hint=f"give kwargs that make {num_labels} outputs (e.g. num_classes)")
    return model.train()


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
