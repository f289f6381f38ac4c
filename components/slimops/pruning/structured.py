"""Structured pruning of a model directory: load, score, cut, write, check the written model, measure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slimops.data import load_dataset
from slimops.errors import BadInput
from slimops.evaluate import check_inputs
from slimops.handlers.runtime import dump_architecture, load, sample_batch
from slimops.pruning import Pruned

# The written model must reproduce the pruned model in memory: it is rebuilt from files, not pickled.
PARITY_TOLERANCE = 1e-4


def prune_structured(model_dir: Path, info, config, out_dir: Path, threads: int | None = None) -> Pruned:
    """Prune the model in ``model_dir`` as ``config`` (the prune step's fields) says and write it to ``out_dir``,
    which already holds the input's other files (tokenizer, config, architecture)."""
    if config.mode == "channels" and info.format != "torch":
        raise BadInput(f"mode channels prunes conv/linear channels of PyTorch module directories, got {info.format} "
                       f"in {model_dir}; for a Hugging Face encoder use mode heads, ffn or layers")
    if config.mode != "channels" and info.format != "hf":
        raise BadInput(f"mode {config.mode} prunes Hugging Face BERT-family encoders, got a {info.format} model "
                       f"in {model_dir}; for a PyTorch CNN use mode channels")
    if info.format == "hf":
        _precheck_encoder(model_dir, config)
    calibration = None
    if config.calibration is not None:
        calibration = load_dataset(config.calibration)
        check_inputs(info, calibration, "calibration data")
        calibration = _limit(calibration, config.calibration_samples)
    pruned = load(model_dir, info, threads)  # pruned in place below
    if info.format == "torch":
        cost_before, cost_after, details = _prune_torch(pruned, info, config, calibration)
        _write_torch(out_dir, pruned.model, info)
    else:
        cost_before, cost_after, details = _prune_encoder(pruned, info, config, calibration)
        _write_encoder(model_dir, out_dir, pruned.model)

    from slimops.pruning.measure import cost_metrics, latency_metrics

    timing_inputs = _timing_inputs(info, calibration, config.timing_samples)
    written = load(out_dir, info, threads)
    parity = float(np.abs(written.predict(timing_inputs[:8]) - pruned.predict(timing_inputs[:8])).max())
    if parity > PARITY_TOLERANCE:
        raise RuntimeError(f"the written model differs from the pruned one by {parity:.3g}; please report this bug")
    del pruned
    original = load(model_dir, info, threads)
    metrics = {"mode": config.mode, "amount": config.amount, **cost_metrics(cost_before, cost_after),
               **latency_metrics(original, written, timing_inputs, rounds=config.timing_rounds,
                                 latency_runs=config.latency_runs),
               "reload_max_abs_diff": parity}
    details.update({"importance": config.importance, "scope": config.scope,
                    "macs_note": _MACS_NOTE[info.format].format(seq=config.macs_seq_len)})
    return Pruned(metrics=metrics, details=details)


def _precheck_encoder(model_dir, config) -> None:
    """Refuse what config.json already rules out, before the model is loaded (fast, and nothing written)."""
    from slimops.pruning.transformer import check_layer_lists

    layout = json.loads((model_dir / "config.json").read_text())
    layers, heads, width = (layout.get(k) for k in ("num_hidden_layers", "num_attention_heads", "intermediate_size"))
    if config.mode == "layers" and isinstance(layers, int):
        check_layer_lists(config.keep_layers, config.drop_layers, layers)
    if config.mode == "heads" and config.scope == "layer" and isinstance(heads, int) and round(config.amount * heads) >= heads:
        raise BadInput(f"amount {config.amount} would remove all {heads} attention heads of every layer; lower "
                       "'amount' (a layer needs at least one head; drop whole layers with mode: layers)")
    if config.mode == "ffn" and isinstance(width, int) and round((1 - config.amount) * width) < 1:
        raise BadInput(f"amount {config.amount} would remove all {width} FFN neurons of every layer; lower 'amount'")


_MACS_NOTE = {
    "torch": "MACs of one example (torch-pruning's op counter)",
    "hf": "MACs of one sequence of {seq} tokens: linear/norm layers (torch-pruning's op counter) plus the "
          "attention score and context matmuls (2 * L^2 * heads * head_dim per layer)",
}


def _limit(dataset, n: int):
    from dataclasses import replace

    if dataset.kind == "sts":
        keep_pairs = dataset.pairs[:n]
        return replace(dataset, pairs=keep_pairs, scores=dataset.scores[:len(keep_pairs)])
    return replace(dataset, inputs=dataset.inputs[:n],
                   labels=None if dataset.labels is None else dataset.labels[:n])


def _timing_inputs(info, calibration, n: int):
    if calibration is None:
        return sample_batch(info, n)
    inputs = calibration.inputs
    reps = -(-n // len(inputs))
    if isinstance(inputs, np.ndarray):
        return np.concatenate([inputs] * reps)[:n]
    return (list(inputs) * reps)[:n]


def _prune_torch(runnable, info, config, calibration):
    import torch

    from slimops.pruning.channels import prune_channels
    from slimops.pruning.measure import torch_cost

    model = runnable.model
    if not info.input_shape:
        raise BadInput(f"{runnable.model_dir}/architecture.json has no input_shape; channel pruning traces the "
                       "model with an example input: add input_shape (one example's shape, e.g. [1, 8, 8])")
    example = torch.from_numpy(np.asarray(sample_batch(info, 2), dtype=np.float32))
    before = torch_cost(model, example[:1])
    calib = None if calibration is None else (calibration.inputs, calibration.labels)
    details = prune_channels(model, example, amount=config.amount, scope=config.scope,
                             importance=config.importance, norm=config.norm, exclude=config.exclude,
                             calibration=calib, max_layer_amount=config.max_layer_amount)
    model.eval()
    return before, torch_cost(model, example[:1]), details


def _write_torch(out_dir: Path, model, info) -> None:
    from safetensors.torch import save_file

    target = out_dir / info.file
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    # The narrower shapes are in the tensors themselves; architecture.json stays the factory's.
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(target),
              metadata={"format": "pt"})
    if not (out_dir / "architecture.json").is_file():
        dump_architecture(out_dir / "architecture.json", info)


def _prune_encoder(runnable, info, config, calibration):
    from slimops.pruning import scores, transformer
    from slimops.pruning.measure import encoder_cost

    model = runnable.model
    scores.encoder_layers(model)  # BadInput for a model that is not a BERT-family encoder
    before = encoder_cost(model, config.macs_seq_len)
    details = {}
    if config.importance == "taylor":
        details["objective"] = scores.taylor_gradients(model, runnable.tokenizer, calibration, info)
    if config.mode == "heads":
        if config.exclude:
            _exclude_heads(model, config)
        details.update(_heads(model, config))
    elif config.mode == "ffn":
        details.update(transformer.prune_ffn(model, config.amount, config.importance, config.norm))
    else:
        kept, layer_scores = transformer.choose_layers(model, config.keep_layers, config.drop_layers, config.amount)
        details.update(transformer.keep_layers(model, kept))
        if layer_scores is not None:
            details["layer_scores"] = layer_scores
    model.zero_grad(set_to_none=True)
    return before, encoder_cost(model, config.macs_seq_len), details


def _exclude_heads(model, config) -> None:
    total = model.config.num_hidden_layers
    names = [f"encoder.layer.{i}" for i in range(total)]
    for entry in config.exclude:
        if not any(n == entry or n.startswith(entry + ".") for n in names):
            raise BadInput(f"prune exclude entry {entry!r} names no encoder layer; give e.g. 'encoder.layer.0' "
                           f"(layers 0..{total - 1})")


def _heads(model, config) -> dict:
    from slimops.pruning import transformer

    excluded = frozenset(i for i in range(model.config.num_hidden_layers)
                         if any(f"encoder.layer.{i}" == e or f"encoder.layer.{i}".startswith(e + ".")
                                for e in config.exclude))
    return transformer.prune_heads(model, config.amount, config.scope, config.importance, config.norm, skip=excluded)


def _write_encoder(model_dir: Path, out_dir: Path, model) -> None:
    from safetensors.torch import save_file

    config_path = out_dir / "config.json"
    config = json.loads((model_dir / "config.json").read_text())
    # Only the keys that describe the new layout change; the rest of the file stays as it was.
    config["num_hidden_layers"] = model.config.num_hidden_layers
    config["intermediate_size"] = model.config.intermediate_size
    if model.config.pruned_heads:
        config["pruned_heads"] = {str(k): sorted(v) for k, v in sorted(model.config.pruned_heads.items())}
    else:
        config.pop("pruned_heads", None)
    config_path.unlink(missing_ok=True)  # never write through a hard link carried from the input
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    target = out_dir / "model.safetensors"
    target.unlink(missing_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(target),
              metadata={"format": "pt"})
