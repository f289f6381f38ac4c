"""Task metrics, fidelity and timing: the measurements every gate decision rests on."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from slimops.data import Dataset
from slimops.errors import BadInput
from slimops.tasks import causal_lm, question_answering


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
    if model_task == causal_lm.TASK:
        causal_lm.check_texts(dataset)
        return causal_lm.METRIC
    if dataset.kind == "qa" or model_task == question_answering.TASK:
        if model_task != question_answering.TASK:
            raise BadInput(f"question-answering data (questions, contexts, answers) needs a question-answering model, "
                           f"not {model_task}; give a *ForQuestionAnswering model or other data")
        if dataset.kind != "qa":
            raise BadInput("a question-answering model is scored on questions, contexts and their answers: give data "
                           "with columns: {question: ..., context: ..., answers: ...}")
        return question_answering.METRIC
    if dataset.kind == "sts":
        if model_task != "sentence-embedding":
            raise BadInput(f"STS data needs a sentence-embedding model, not {model_task}; use classification data")
        return "spearman"
    if dataset.kind == "tokens" or model_task == "token-classification":
        if dataset.kind != "tokens" or model_task != "token-classification":
            raise BadInput("token data (words and tags) needs a token-classification model, and a token-classification "
                           "model needs token data: columns: {tokens: ..., tags: ...}" if dataset.kind != "unlabeled"
                           else "evaluation data for a token-classification model needs tags: columns: {tokens: ..., "
                           "tags: ...}")
        from slimops.tasks.token_classification import METRIC

        return METRIC
    if dataset.kind == "classification":
        if model_task == "sentence-embedding":
            raise BadInput("classification data needs a classifier; for an encoder use STS data (format: sts)")
        return "accuracy"
    raise BadInput("evaluation data has no labels or scores; use format 'sts', 'text-classification', 'digits' or npz with y")


LOWER_IS_BETTER = {causal_lm.METRIC}


def metric_drop(name: str, baseline: float, candidate: float) -> float:
    """How much worse the candidate is: baseline - candidate for a higher-is-better metric (accuracy, Spearman),
    candidate - baseline for a lower-is-better one (perplexity: its increase)."""
    return candidate - baseline if name in LOWER_IS_BETTER else baseline - candidate


def check_inputs(info, dataset: Dataset, where: str = "data") -> None:
    """Refuse data the model cannot consume, before any model runs on it."""
    tensor_model = info.task == "tensor-classification"
    tensor_data = isinstance(dataset.inputs, np.ndarray)
    if tensor_model and not tensor_data:
        raise BadInput(f"{where} is text but the model takes tensors {info.input_shape}; use format digits, npz or "
                       "imagefolder")
    if not tensor_model and tensor_data:
        raise BadInput(f"{where} holds tensors but the model takes text; use format sts, text or text-classification")
    if tensor_model and info.input_shape:
        shape = list(dataset.inputs.shape[1:])
        expected = [d for d in info.input_shape]
        if len(shape) != len(expected) or any(e and e != d for e, d in zip(expected, shape)):
            raise BadInput(f"{where} examples have shape {shape}, the model takes {expected}; reshape the data")


def finite_outputs(outputs: np.ndarray, what: str = "the model") -> None:
    """A metric computed from NaN/inf outputs is no measurement: no gate verdict may rest on it."""
    outputs = np.asarray(outputs)
    if outputs.dtype.kind in "fc" and not np.isfinite(outputs).all():
        rows = ~np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1) if outputs.ndim else np.array([True])
        raise BadInput(f"{what} gives NaN or inf outputs on {int(rows.sum())} of {len(rows)} examples, so no metric "
                       "can be measured; check the model's weights (a broken export or quantization)")


def finite_metrics(metrics: dict[str, float], what: str) -> dict[str, float]:
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)}
    if bad:
        raise BadInput(f"{', '.join(bad)} of {what} is {', '.join(str(v) for v in bad.values())}, not a number a "
                       "gate can compare; give evaluation data on which the metric is defined")
    return metrics


def task_metrics(outputs: np.ndarray, dataset: Dataset) -> dict[str, float]:
    """Spearman x100 of cosine similarity for STS; accuracy and macro-F1 x100 for classification (and the positive
    class's F1 for a binary classifier)."""
    finite_outputs(outputs)
    if dataset.kind == "tokens":
        from slimops.tasks import token_classification

        return finite_metrics(token_classification.task_metrics(outputs, dataset), "the token data")
    if dataset.kind == "qa":
        return finite_metrics(question_answering.task_metrics(outputs, dataset), "the question-answering data")
    if dataset.kind == "unlabeled":  # only a causal LM gets past metric_name with plain text
        return finite_metrics(causal_lm.metrics(outputs), "the text")
    if dataset.kind == "sts":
        from scipy.stats import spearmanr

        cos = _pair_cosines(outputs, dataset.pairs)
        if len(cos) < 2 or np.ptp(cos) == 0 or np.ptp(dataset.scores) == 0:
            raise BadInput(f"Spearman is undefined on these {len(cos)} STS pairs: "
                           f"{'the model gives every pair the same similarity' if len(cos) > 1 and np.ptp(cos) == 0 else 'the gold scores do not vary'}; "
                           "give more pairs with different scores")
        return finite_metrics({"spearman": 100.0 * float(spearmanr(cos, dataset.scores).statistic)}, "the STS data")
    from sklearn.metrics import f1_score

    predicted = outputs.argmax(axis=1)
    scores = {"accuracy": 100.0 * float((predicted == dataset.labels).mean()),
              "f1_macro": 100.0 * float(f1_score(dataset.labels, predicted, average="macro"))}
    if outputs.ndim == 2 and outputs.shape[1] == 2:  # a binary classifier: F1 of the positive class (id 1)
        scores["f1"] = 100.0 * float(f1_score(dataset.labels, predicted, average="binary", pos_label=1,
                                              zero_division=0))
    return finite_metrics(scores, "the classification data")


def fidelity(baseline: np.ndarray, candidate: np.ndarray, task: str, dataset: Dataset | None = None) -> dict[str, float]:
    """How closely the candidate reproduces the baseline's own outputs (token-classification: on ``dataset``'s words)."""
    finite_outputs(baseline, "the baseline")
    finite_outputs(candidate, "the candidate")
    if task == "token-classification":
        from slimops.tasks import token_classification

        return finite_metrics(token_classification.fidelity(baseline, candidate, dataset), "fidelity")
    if task == question_answering.TASK:
        return finite_metrics(question_answering.fidelity(baseline, candidate, dataset), "fidelity")
    if task == "sentence-embedding":
        cos = (baseline * candidate).sum(1) / (
            np.linalg.norm(baseline, axis=1) * np.linalg.norm(candidate, axis=1) + 1e-12)
        return finite_metrics({"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}, "fidelity")
    if task == causal_lm.TASK:
        return finite_metrics(causal_lm.agreement(baseline, candidate), "fidelity")
    return finite_metrics({"top1_agreement": 100.0 * float((baseline.argmax(1) == candidate.argmax(1)).mean())},
                          "fidelity")


def headline_fidelity(fid: dict[str, float]) -> float | None:
    """The one fidelity number a gate's min_fidelity compares: mean cosine (embeddings), top-1 agreement %
    (classifiers, next-token of an LM), per-word tag agreement % (token classification) or answer-span agreement %
    (question answering)."""
    return next((fid[key] for key in ("mean_cosine", "top1_agreement", "tag_agreement", "span_agreement")
                 if key in fid), None)


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


def drop_interval(baseline: np.ndarray, candidate: np.ndarray, dataset: Dataset, confidence: float,
                  resamples: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap of the metric drop (baseline - candidate, x100 points; for perplexity candidate - baseline)
    over the evaluation examples.

    Paired: each resample scores both models on the same examples (STS: the same pairs), so what varies is
    where the two models disagree, not which examples happened to be in the set. A candidate that gives the
    baseline's answers has an interval of [0, 0] on any set; one that disagrees often on a small set has a
    wide one. Token data: entity F1 over resampled sentences.
    """
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    if dataset.kind == "unlabeled":  # a causal LM: resample texts, recompute both perplexities
        picks = rng.integers(0, len(baseline), size=(resamples, len(baseline)))
        drops = causal_lm.perplexity_increase_samples(baseline, candidate, picks)
        units = len(baseline)
    elif dataset.kind == "sts":
        gold = np.asarray(dataset.scores, float)
        sims = [_pair_cosines(outputs, dataset.pairs) for outputs in (baseline, candidate)]
        picks = rng.integers(0, len(gold), size=(resamples, len(gold)))
        gold_ranks = rankdata(gold[picks], axis=1)
        scores = [_row_correlation(rankdata(sim[picks], axis=1), gold_ranks) for sim in sims]
        drops = 100.0 * (scores[0] - scores[1])
        units = len(gold)
    elif dataset.kind == "tokens":  # entity F1 over resampled sentences
        from slimops.tasks.token_classification import bootstrap_drops

        drops = bootstrap_drops(baseline, candidate, dataset, rng, resamples)
        units = len(dataset.tags)
    elif dataset.kind == "qa":  # F1 over resampled questions
        drops = question_answering.bootstrap_drops(baseline, candidate, dataset, rng, resamples)
        units = len(dataset.answers)
    else:
        labels = np.asarray(dataset.labels)
        right = [(outputs.argmax(axis=1) == labels).astype(float) for outputs in (baseline, candidate)]
        picks = rng.integers(0, len(labels), size=(resamples, len(labels)))
        drops = 100.0 * (right[0][picks].mean(axis=1) - right[1][picks].mean(axis=1))
        units = len(labels)
    drops = drops[np.isfinite(drops)]  # a resample of constant similarities has no Spearman
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(drops, [tail, 100 - tail]) if len(drops) else (float("nan"),) * 2
    return {"low": float(low), "high": float(high), "confidence": confidence, "resamples": resamples,
            "examples": units}


def _pair_cosines(outputs: np.ndarray, pairs) -> np.ndarray:
    a = np.array([outputs[i] for i, _ in pairs])
    b = np.array([outputs[j] for _, j in pairs])
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _row_correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))


def sample_size_warnings(interval: dict, limit: float | None) -> list[str]:
    """What the report says when the evaluation set is too small for the bound asked."""
    warnings = []
    n, half = interval["examples"], (interval["high"] - interval["low"]) / 2
    level = f"{100 * interval['confidence']:g}%"
    if n < 100:
        warnings.append(f"only {n} evaluation examples: a {level} interval from so few is rough; use at least 100")
    if limit is not None and limit > 0 and np.isfinite(half) and half > limit / 2:
        needed = int(np.ceil(n * (2 * half / limit) ** 2))
        warnings.append(f"the {level} interval of the metric drop is +/-{half:.2f} points on {n} examples, so only a "
                        f"drop under {max(0.0, limit - half):.2f} can be shown within the limit {limit:g}; about "
                        f"{needed} examples would narrow it to +/-{limit / 2:g}")
    return warnings
