"""text-generation (a causal LM), scored with perplexity on plain text.

What a causal LM's ``predict(texts)`` returns, one fixed-width row per text (so batches concatenate):

    [sum of the negative log-likelihood (nats) of its predicted tokens, number of predicted tokens,
     the model's top-1 next-token id at each predicted position (-1 past the end), ...]

Every token after the first is predicted from the ones before it (padding is never predicted). The width is
``2 + max_length - 1``. From these rows:

- perplexity = exp(total NLL / total predicted tokens) over the data (lower is better);
- fidelity = top-1 next-token agreement with the baseline (%), over every predicted position;
- the paired bootstrap resamples texts and recomputes both models' perplexity on each resample.
"""

from __future__ import annotations

import numpy as np

from slimops.errors import BadInput

TASK = "causal-lm"
METRIC = "perplexity"


def position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """Positions 0.. along each text's real tokens (right padding: the padding gets the last position)."""
    return np.clip(np.cumsum(attention_mask, axis=1) - 1, 0, None).astype(np.int64)


def rows(logits: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray, max_length: int) -> np.ndarray:
    """Per-text [nll_sum, tokens, top-1 id per predicted position...] from logits [batch, seq, vocab]."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 3 or logits.shape[:2] != input_ids.shape:
        raise BadInput(f"a causal LM returns logits [batch, sequence, vocabulary]; this one returned shape "
                       f"{list(logits.shape)} for inputs {list(input_ids.shape)}: export it as text-generation")
    width = max_length - 1
    out = np.full((len(input_ids), 2 + width), -1.0, dtype=np.float64)
    predicted = logits[:, :-1]  # position t predicts token t + 1
    target = input_ids[:, 1:]
    mask = (attention_mask[:, 1:] * attention_mask[:, :-1]).astype(bool)
    peak = predicted.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(predicted - peak).sum(axis=-1)) + peak[..., 0]
    picked = np.take_along_axis(predicted, target[..., None], axis=-1)[..., 0]
    nll = (log_norm - picked).astype(np.float64)
    out[:, 0] = np.where(mask, nll, 0.0).sum(axis=1)
    out[:, 1] = mask.sum(axis=1)
    top = np.where(mask, predicted.argmax(axis=-1), -1)[:, :width]
    out[:, 2:2 + top.shape[1]] = top
    return out


def check_texts(dataset) -> None:
    """A causal LM reads one text per example and needs no labels: refuse what would be scored as something else."""
    if dataset.kind == "sts":
        raise BadInput("STS pairs and scores are not text-generation data; a causal LM is scored by perplexity on "
                       "plain text: give format text (one text per line) or a table with columns: {text: ...}")
    if dataset.kind == "classification":
        raise BadInput("the data has labels, but a causal LM is scored by perplexity on plain text; drop 'label' "
                       "from columns: (give columns: {text: ...}) or use format text")
    if len(dataset.inputs) and isinstance(dataset.inputs[0], (tuple, list)):
        raise BadInput("the data holds text pairs (text_pair), but a causal LM reads one text per example; give "
                       "columns: {text: ...} only")


def _totals(outputs: np.ndarray) -> tuple[float, float]:
    return float(outputs[:, 0].sum()), float(outputs[:, 1].sum())


def metrics(outputs: np.ndarray) -> dict[str, float]:
    """Perplexity and the mean NLL per predicted token (nats) over all texts."""
    nll, tokens = _totals(outputs)
    if tokens == 0:
        raise BadInput(f"the {len(outputs)} texts give no token to predict (each is at most one token after "
                       "tokenization), so perplexity is undefined; give texts of several words")
    return {METRIC: float(np.exp(nll / tokens)), "nll_per_token": nll / tokens, "predicted_tokens": tokens}


def agreement(baseline: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Top-1 next-token agreement (%) over the positions both models predicted."""
    width = min(baseline.shape[1], candidate.shape[1])
    a, b = baseline[:, 2:width], candidate[:, 2:width]
    scored = (a >= 0) & (b >= 0)
    if not scored.any():
        raise BadInput("no predicted token to compare the candidate with the baseline on; give texts of several words")
    return {"top1_agreement": 100.0 * float((a[scored] == b[scored]).mean())}


def perplexity_increase_samples(baseline: np.ndarray, candidate: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Candidate minus baseline perplexity on each resample of texts (``picks``: resamples x texts)."""
    def ppl(outputs):
        nll, tokens = outputs[:, 0][picks].sum(axis=1), outputs[:, 1][picks].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.exp(nll / tokens)
    return ppl(candidate) - ppl(baseline)


def check_max_length(model_dir, max_length: int) -> None:
    """Texts are cut to ``max_length`` tokens; a causal LM has position embeddings for only so many."""
    from pathlib import Path

    from slimops.formats import load_json_file

    path = Path(model_dir) / "config.json"
    config = load_json_file(path) if path.is_file() else {}
    positions = config.get("n_positions", config.get("max_position_embeddings")) if isinstance(config, dict) else None
    if isinstance(positions, int) and not isinstance(positions, bool) and 0 < positions < max_length:
        raise BadInput(f"max_length {max_length} is longer than the {positions} positions of {path}; set "
                       f"max_length to at most {positions} (--set max_length={positions})")
