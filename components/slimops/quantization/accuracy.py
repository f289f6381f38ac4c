"""Accuracy-aware quantization: when the metric would fail, keep the most sensitive nodes in float.

1. Quantize everything; if the task metric on the target data holds, done.
2. Rank nodes by sensitivity: leave one node in float at a time and measure how much of the
   output error (against the float model, on a few examples) goes away.
3. Keep the top 1, 2, 4, ... nodes in float until the metric holds (or ``max_float_nodes``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from slimops import progress
from slimops.data import load_for_model
from slimops.evaluate import check_inputs, metric_drop, metric_name, predict_all, task_metrics
from slimops.handlers.info import TOKENIZER_FILES
from slimops.handlers.runtime import OnnxModel
from slimops.quantization import quantize_model

# Op types the ORT quantizers turn into integer kernels, and the input that carries the weight.
_WEIGHTED_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "Gather", "EmbedLayerNormalization"}


def accuracy_aware(source: Path, target: Path, config, calibration, model_dir: Path, info,
                   threads: int | None = None) -> dict:
    """Write ``target`` quantized from ``source`` (the ONNX model of ``model_dir``, described by ``info``) with as
    few nodes in float as ``config.accuracy`` allows; return the search for the manifest."""
    target_cfg = config.accuracy
    data = load_for_model(target_cfg.data, model_dir)
    name = metric_name(info.task, data)
    check_inputs(info, data, "accuracy data")
    workdir = Path(tempfile.mkdtemp(prefix="slimops-aaq-"))
    try:
        def run_model(path: Path, inputs) -> np.ndarray:
            model = OnnxModel(path.parent, info.model_copy(update={"file": path.name}), threads)
            return predict_all(model, inputs, 32)

        def metric_of(path: Path) -> float:
            return task_metrics(run_model(path, data.inputs), data)[name]

        def quantize(exclude: list[str]) -> Path:
            out = workdir / "model.onnx"
            quantize_model(source, out, config, exclude, model_dir, calibration)
            return out

        _link_tokenizer(model_dir, workdir)
        baseline = metric_of(source)
        base_exclude = list(config.exclude_nodes)
        current = metric_of(quantize(base_exclude))
        history = [{"float_nodes": 0, "metric": current}]
        float_nodes: list[str] = []
        ranking: list[tuple[str, float]] = []
        if metric_drop(name, baseline, current) > target_cfg.max_metric_drop:  # perplexity: its increase
            ranking = _rank_nodes(source, base_exclude, data.inputs[: target_cfg.sensitivity_samples],
                                  run_model, quantize, info.task)
            limit = min(target_cfg.max_float_nodes, len(ranking))
            k = 1
            while metric_drop(name, baseline, current) > target_cfg.max_metric_drop and k <= limit:
                float_nodes = [node for node, _ in ranking[:k]]
                current = metric_of(quantize(base_exclude + float_nodes))
                history.append({"float_nodes": k, "metric": current})
                if k == limit:
                    break
                k = min(k * 2, limit)
        # The last quantize() call above wrote exactly base_exclude + float_nodes.
        shutil.copyfile(workdir / "model.onnx", target)
        return {
            "accuracy_aware": {
                "metric": name,
                "float_metric": baseline,
                "quantized_metric": current,
                "max_metric_drop": target_cfg.max_metric_drop,
                "target_met": metric_drop(name, baseline, current) <= target_cfg.max_metric_drop,
                "float_nodes": float_nodes,
                "sensitivity": [{"node": n, "score": s} for n, s in ranking[:32]],
                "search": history,
            }
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _rank_nodes(source, base_exclude, inputs, run_model, quantize, task) -> list[tuple[str, float]]:
    reference = run_model(source, inputs)
    full_error = _error(reference, run_model(quantize(base_exclude), inputs), task)
    candidates = _weighted_nodes(source, base_exclude)
    scores = []
    with progress.task(f"ranking {len(candidates)} nodes by quantization sensitivity", len(candidates)) as advance:
        for node in candidates:
            error = _error(reference, run_model(quantize(base_exclude + [node]), inputs), task)
            scores.append((node, full_error - error))  # how much error keeping it float removes
            advance()
    return sorted(scores, key=lambda item: item[1], reverse=True)


def _weighted_nodes(source: Path, exclude: list[str]) -> list[str]:
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    return [n.name for n in graph.node
            if n.op_type in _WEIGHTED_OPS and n.name not in exclude and any(i in constants for i in n.input)]


def _error(reference: np.ndarray, candidate: np.ndarray, task: str) -> float:
    if task == "causal-lm":  # rows [NLL sum, predicted tokens, ...]: the mean change of NLL per token, per text
        tokens = np.clip(reference[:, 1], 1, None)
        return float((np.abs(reference[:, 0] - candidate[:, 0]) / tokens).mean())
    if task == "question-answering":  # rows [char_start, char_end, score]: the share of answer spans that moved
        return float((reference[:, :2] != candidate[:, :2]).any(axis=1).mean())
    if task == "sentence-embedding":
        cos = (reference * candidate).sum(1) / (
            np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1) + 1e-12)
        return float(1.0 - cos.mean())
    return float(np.abs(_softmax(reference) - _softmax(candidate)).sum(-1).mean())  # per example (per word)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _link_tokenizer(model_dir: Path, workdir: Path) -> None:
    for name in (*TOKENIZER_FILES, "config.json"):
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, workdir / name)
