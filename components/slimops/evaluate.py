"""Task metrics, fidelity and timing: the measurements every gate decision rests on."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from slimops.data import Dataset
from slimops.errors import BadInput


def batches(inputs, size: int):
    for start in range(0, len(inputs), size):
        yield inputs[start:start + size]


def predict_all(model, inputs, batch_size: int = 32, progress=None) -> np.ndarray:
    outputs = []
    for batch in batches(inputs, batch_size):
        outputs.append(model.predict(batch))
        if progress:
            progress(len(batch))
    return np.concatenate(outputs)


def metric_name(model_task: str, dataset: Dataset) -> str:
    if dataset.kind == "sts":
        if model_task != "sentence-embedding":
            raise BadInput(f"STS data needs a sentence-embedding model, not {model_task}; use classification data")
        return "spearman"
    if dataset.kind == "classification":
        if model_task == "sentence-embedding":
            raise BadInput("classification data needs a classifier; for an encoder use STS data (format: sts)")
        return "accuracy"
    raise BadInput("evaluation data has no labels or scores; use format 'sts', 'text-classification', 'digits' or npz with y")


def check_inputs(info, dataset: Dataset, where: str = "data") -> None:
    """Refuse data the model cannot consume, before any model runs on it."""
    tensor_model = info.task == "tensor-classification"
    tensor_data = isinstance(dataset.inputs, np.ndarray)
    if tensor_model and not tensor_data:
        raise BadInput(f"{where} is text but the model takes tensors {info.input_shape}; use format digits or npz")
    if not tensor_model and tensor_data:
        raise BadInput(f"{where} holds tensors but the model takes text; use format sts, text or text-classification")
    if tensor_model and info.input_shape:
        shape = list(dataset.inputs.shape[1:])
        expected = [d for d in info.input_shape]
        if len(shape) != len(expected) or any(e and e != d for e, d in zip(expected, shape)):
            raise BadInput(f"{where} examples have shape {shape}, the model takes {expected}; reshape the data")


def task_metrics(outputs: np.ndarray, dataset: Dataset) -> dict[str, float]:
    """Spearman x100 of cosine similarity for STS; accuracy and macro-F1 x100 for classification."""
    if dataset.kind == "sts":
        from scipy.stats import spearmanr

        a = np.array([outputs[i] for i, _ in dataset.pairs])
        b = np.array([outputs[j] for _, j in dataset.pairs])
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        return {"spearman": 100.0 * float(spearmanr(cos, dataset.scores).statistic)}
    from sklearn.metrics import f1_score

    predicted = outputs.argmax(axis=1)
    return {"accuracy": 100.0 * float((predicted == dataset.labels).mean()),
            "f1_macro": 100.0 * float(f1_score(dataset.labels, predicted, average="macro"))}


def fidelity(baseline: np.ndarray, candidate: np.ndarray, task: str) -> dict[str, float]:
    """How closely the candidate reproduces the baseline's own outputs."""
    if task == "sentence-embedding":
        cos = (baseline * candidate).sum(1) / (
            np.linalg.norm(baseline, axis=1) * np.linalg.norm(candidate, axis=1) + 1e-12)
        return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    return {"top1_agreement": 100.0 * float((baseline.argmax(1) == candidate.argmax(1)).mean())}


@dataclass
class Timing:
    seconds: list[float]

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))


def alternate_throughput(models: dict, inputs, batch_size: int, rounds: int, warmup: int = 1) -> dict[str, Timing]:
    """Time each model over the same inputs, alternating A, B, A, B, ... so drift hits all alike."""
    for model in models.values():
        for batch in list(batches(inputs, batch_size))[:warmup]:
            model.predict(batch)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for batch in batches(inputs, batch_size):
                model.predict(batch)
            times[name].append(time.perf_counter() - start)
    return {name: Timing(t) for name, t in times.items()}


def alternate_latency(models: dict, inputs, runs: int, blocks: int = 5, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Batch-1 latency p50/p95 in ms: ``blocks`` rounds, each a block of requests per model in turn.

    Blocks rather than one request each: a runtime's worker threads keep spinning for a moment
    after a call, and would otherwise slow the next model's request on a small machine.
    """
    per_block = max(1, runs // blocks)
    times = {name: [] for name in models}
    for block in range(blocks):
        samples = [inputs[(block * per_block + i) % len(inputs):][:1] for i in range(per_block)]
        for name, model in models.items():
            for sample in samples[:warmup]:
                model.predict(sample)
            for sample in samples:
                start = time.perf_counter()
                model.predict(sample)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95))}
            for name, t in times.items()}
