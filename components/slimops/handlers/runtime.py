"""Run a described model: ``load(dir).predict(batch)`` gives embeddings or logits as numpy.

Every format goes through the same tokenisation and pooling code so a comparison between a
PyTorch baseline and an ONNX candidate measures the model, not the glue around it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slimops.errors import BadInput
from slimops.formats import library_error  # noqa: F401 - steps import it from here too
from slimops.handlers.base import Runnable, TextMixin
from slimops.handlers.info import ModelInfo, describe, read_packed
from slimops.tasks import causal_lm


class HFModel(TextMixin, Runnable):
    def __init__(self, model_dir, info, threads=None):
        super().__init__(model_dir, info)
        import torch
        from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForImageClassification,
                                  AutoModelForQuestionAnswering,
                                  AutoModelForSequenceClassification, AutoModelForTokenClassification)

        if threads:
            torch.set_num_threads(threads)
        cls = {"text-classification": AutoModelForSequenceClassification,
               "token-classification": AutoModelForTokenClassification,
               "tensor-classification": AutoModelForImageClassification,  # a vision model: pixel_values in
               "question-answering": AutoModelForQuestionAnswering,
               "causal-lm": AutoModelForCausalLM}.get(info.task, AutoModel)
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its weight warnings are lines on stderr; the check below says it in one
        try:
            self.model, loading = cls.from_pretrained(str(model_dir), use_safetensors=True, trust_remote_code=False,
                                                      output_loading_info=True)
        except (ValueError, KeyError, TypeError, OSError, RuntimeError, AttributeError) as err:
            raise BadInput(f"transformers cannot load {model_dir} ({library_error(err)}); check config.json and "
                           "the weights, or re-save the model with save_pretrained") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        self.model.eval()
        if info.task != "sentence-embedding":  # a head the weights do not hold would be random: no baseline at all
            prefix = f"{self.model.base_model_prefix}."
            head = [key for key in loading.get("missing_keys", []) if not key.startswith(prefix)]
            if head:
                raise BadInput(f"{model_dir}/model.safetensors holds no weights for {', '.join(head[:3])}, which "
                               f"{type(self.model).__name__} needs (config.json's architectures name another head than "
                               "the weights were trained with?); fix architectures, or --set task=... to the task "
                               "the head was trained for")
        if info.task != "tensor-classification":
            self._init_tokenizer()

    def predict(self, batch):
        import torch

        if self.info.task == "tensor-classification":  # the data's tensors are the model's pixel_values, as they are
            with torch.inference_mode():
                pixels = torch.as_tensor(np.asarray(batch, dtype=np.float32))
                return self.model(pixel_values=pixels).logits.float().numpy()
        encoded = self.tokenize(batch)
        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v) for k, v in encoded.items() if k not in NOT_MODEL_INPUTS})
        if self.info.task == "question-answering":
            from slimops.tasks.question_answering import best_spans

            return best_spans(out.start_logits.float().numpy(), out.end_logits.float().numpy(),
                              encoded["offset_mapping"])
        if self.info.task == "causal-lm":
            return causal_lm.rows(out.logits.float().numpy(), encoded["input_ids"], encoded["attention_mask"],
                                  self.info.max_length)
        first = out.last_hidden_state if self.info.task == "sentence-embedding" else out.logits
        return self.finish(first.float().numpy(), encoded["attention_mask"], encoded.get("word_index"))


NOT_MODEL_INPUTS = ("word_index", "offset_mapping")  # what tokenize adds for the task's outputs, not for the model


def import_factory(spec: str, where: str = "model factory"):
    """The factory ``spec`` names, only if the user's allowlist admits it (slimops.factories)."""
    from slimops import factories

    return factories.load(spec, where)


def build_within(build, kwargs: dict, state: dict, weights) -> "torch.nn.Module":
    """``build(**kwargs)``, first on the meta device (no memory): kwargs read from a model directory must not
    make a module far larger than its weights file (``channels: 10**9`` would exhaust memory)."""
    import torch

    try:
        with torch.device("meta"):
            probe = build(**kwargs)
        wanted = sum(p.numel() for p in probe.parameters()) + sum(b.numel() for b in probe.buffers())
        held = sum(t.numel() for t in state.values())
        if wanted > 16 * held + 10_000_000:
            raise BadInput(f"{weights}: the factory's kwargs build a module of {wanted:,} values, the weights hold "
                           f"{held:,}; fix kwargs in architecture.json")
        del probe
        return build(**kwargs)
    except BadInput:
        raise
    except Exception as err:  # a wrong keyword or value: the factory's own error, on one line
        raise BadInput(f"{weights}: the factory failed with kwargs {str(kwargs)[:80]} ({type(err).__name__}: "
                       f"{str(err).splitlines()[0][:120] if str(err) else ''}); fix kwargs in architecture.json") from None


class TorchModule(Runnable):
    def __init__(self, model_dir, info, threads=None):
        super().__init__(model_dir, info)
        import torch
        from safetensors.torch import load_file

        if threads:
            torch.set_num_threads(threads)
        from slimops.pruning.reshape import fit_to_state

        build = import_factory(info.factory, f"{self.model_dir}/architecture.json")
        state = load_file(str(self.model_dir / info.file))
        self.model = build_within(build, info.kwargs, state, self.model_dir / info.file)
        # A structurally pruned module has narrower layers than the factory builds: take the file's shapes.
        self.reshaped = fit_to_state(self.model, state)
        try:
            self.model.load_state_dict(state)
        except RuntimeError as err:
            raise BadInput(f"weights in {self.model_dir / info.file} do not fit {info.factory}: "
                           f"{str(err).splitlines()[0]}") from None
        self.model.eval()

    def predict(self, batch):
        import torch

        with torch.inference_mode():
            return self.model(torch.as_tensor(np.asarray(batch, dtype=np.float32))).float().numpy()


class OnnxModel(TextMixin, Runnable):
    """An ONNX Runtime session on ``model_dir/info.file``, or on ``model_bytes`` (a packed model, decompressed)."""

    def __init__(self, model_dir, info, threads=None, providers=None, model_bytes: bytes | None = None):
        super().__init__(model_dir, info)
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            source = model_bytes if model_bytes is not None else str(self.model_dir / info.file)
            self.session = ort.InferenceSession(source, options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own Fail/InvalidGraph types
            raise BadInput(f"ONNX Runtime cannot load {self.model_dir / info.file}: "
                           f"{str(err).splitlines()[0][:300]}; re-export the model") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        if info.task != "tensor-classification":
            self._init_tokenizer()

    def predict(self, batch):
        if self.info.task == "tensor-classification":
            x = np.asarray(batch, dtype=np.float32)
            if "float16" in self.input_types[self.input_names[0]]:
                x = x.astype(np.float16)
            return self.session.run(None, {self.input_names[0]: x})[0].astype(np.float32)
        encoded = self.tokenize(batch)
        if self.info.task == "causal-lm" and "position_ids" in self.input_names:
            encoded["position_ids"] = causal_lm.position_ids(encoded["attention_mask"])
        feeds = {name: encoded[name].astype(np.int64) for name in self.input_names if name in encoded}
        missing = set(self.input_names) - set(feeds)
        if missing:
            raise BadInput(f"{self.model_dir / self.info.file} expects inputs {sorted(missing)} "
                           "that its tokenizer does not produce; re-export the model with its tokenizer")
        outputs = [np.asarray(o, dtype=np.float32) for o in self.session.run(None, feeds)]
        return self.finish_outputs(outputs, [o.name for o in self.session.get_outputs()], encoded)


def load(model_dir: Path, info: ModelInfo | None = None, threads: int | None = None) -> Runnable:
    info = info or describe(model_dir)
    if info.format == "hf":
        return HFModel(model_dir, info, threads)
    if info.format == "torch":
        return TorchModule(model_dir, info, threads)
    if info.format == "onnx":
        return OnnxModel(model_dir, info, threads)
    if info.format == "onnx-packed":
        return OnnxModel(model_dir, info, threads, model_bytes=read_packed(Path(model_dir) / info.file))
    if info.format == "openvino":
        from slimops.handlers.openvino_model import OpenVinoModel

        return OpenVinoModel(model_dir, info, threads)
    raise BadInput(f"no runtime for model format {info.format!r}")


def sample_batch(info: ModelInfo, size: int = 4):
    """Representative inputs for parity checks and smoke runs."""
    if info.task == "tensor-classification":
        rng = np.random.default_rng(0)
        return rng.random((size, *info.input_shape), dtype=np.float32)
    if info.task == "token-classification":
        from slimops.tasks.token_classification import sample_words

        return (sample_words() * size)[:size]
    if info.task == "question-answering":
        from slimops.tasks.question_answering import sample_pairs

        return (sample_pairs() * size)[:size]
    sentences = [
        "A man is playing a guitar.",
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Compression should not change what the model means.",
        "Short.",
    ]
    return (sentences * size)[:size]


def dump_architecture(path: Path, info: ModelInfo) -> None:
    """Write ``architecture.json`` so a torch module directory describes itself."""
    path.write_text(json.dumps({"factory": info.factory, "kwargs": info.kwargs, "weights": info.file,
                                "task": info.task, "input_shape": info.input_shape,
                                "num_labels": info.num_labels}, indent=2) + "\n")
