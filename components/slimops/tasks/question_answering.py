"""question-answering (extractive, SQuAD-style): question/context data, one answer span per question, SQuAD EM/F1.

Data: one question a row, ``columns: {question: ..., context: ..., answers: ...}``. In JSONL and Parquet,
``answers`` is SQuAD's ``{"text": [...], "answer_start": [...]}``, a list of answer texts, or one text; in a
CSV/TSV the cell is the answer text. Without ``columns:``, JSONL/Parquet columns named ``question`` and
``context`` (and ``answers``) are recognised. Every answer must lie in its context (at ``answer_start`` when given).

Outputs: the model reads ``[CLS] question [SEP] context [SEP]``, the context cut to ``max_length`` tokens (no
document stride: an answer past the cut cannot be found). The answer is the context span with the highest start +
end logit (start <= end, at most ``MAX_ANSWER_TOKENS`` tokens), as the transformers question-answering pipeline
picks it. Every question's output is one float32 row ``[char_start, char_end, score]`` (``[-1, -1, 0]`` when no
context token is left), so batches concatenate and the PyTorch baseline and every ONNX / OpenVINO candidate give
the same shape.

Scores (x100): SQuAD v1.1 exact match and F1 (transformers' ``squad_metrics``: answers normalised - lowercase, no
punctuation or articles - and the best over the gold answers); F1 is the gate's metric. Fidelity: the share of
questions whose answer span is the baseline's; the drop interval is a paired bootstrap over questions of their F1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slimops.errors import BadInput

TASK = "question-answering"
METRIC = "squad_f1"
ROLES = ("question", "context", "answers")
MAX_ANSWER_TOKENS = 30  # the longest span the runtime returns, as run_qa.py's max_answer_length
DEFAULT_MAX_LENGTH = 384  # tokens of question + context, as the SQuAD examples train


# ----------------------------------------------------------------------------- data


def is_qa_data(spec, path: Path) -> bool:
    """Whether ``spec`` names QA data: ``columns:`` with ``question``, or (no columns) a JSONL/Parquet table whose
    columns include ``question`` and ``context`` (also a saved HF dataset's)."""
    if spec.columns:
        return "question" in spec.columns or "context" in spec.columns
    if spec.format not in ("jsonl", "parquet", "hf-dataset"):
        return False
    from slimops.tasks.token_classification import _column_names

    names = {n.lower() for n in (_column_names(spec, path) or [])}
    return {"question", "context"} <= names


def read_qa(spec):
    """A QA dataset: inputs are (question, context) pairs, ``answers`` each question's gold answer texts."""
    from slimops.data import Dataset, _map_columns, named_table

    path = Path(spec.path)
    if spec.format not in ("csv", "tsv", "jsonl", "parquet", "hf-dataset"):
        raise BadInput(f"data format '{spec.format}' cannot hold question-answering data; use jsonl, parquet, "
                       "hf-dataset, csv or tsv with columns: {question: ..., context: ..., answers: ...}")
    names, rows, first_line, place = named_table(spec, lists=True, dicts=True)
    if spec.columns:
        roles = _map_columns(spec, names, path, rows)
    else:
        lowered = [n.lower() for n in names or []]
        roles = {role: lowered.index(role) for role in ROLES if role in lowered}
    inputs, answers = [], []
    for offset, row in enumerate(rows):
        if spec.limit and len(inputs) >= spec.limit:
            break
        line = first_line + offset
        where = place(line)
        question, context = (_text(row, roles[r], names, r, where) for r in ("question", "context"))
        inputs.append((question, context))
        if "answers" in roles:
            answers.append(_answers(row, roles["answers"], names, context, where))
    if not inputs:
        raise BadInput(f"data file {path} holds no examples (a header row at most); give a file with data")
    if "answers" not in roles:
        return Dataset(inputs=inputs)
    return Dataset(inputs=inputs, answers=answers)


def _cell(row, index: int, names, role: str, where: str):
    from slimops.data import _column_label

    if index >= len(row):
        raise BadInput(f"{where}: has {len(row)} column(s), no column {_column_label(names, index)} for {role}; fix "
                       "the row or the columns: mapping")
    value = row[index]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadInput(f"{where}: column {_column_label(names, index)} ({role}) is empty; fill it or drop the row")
    return value


def _text(row, index: int, names, role: str, where: str) -> str:
    from slimops.data import _column_label, _quoted

    value = _cell(row, index, names, role, where)
    if not isinstance(value, str):
        raise BadInput(f"{where}: column {_column_label(names, index)} ({role}) holds {_quoted(value)} "
                       f"({type(value).__name__}), not text; give the {role} as a string")
    return value


def _answers(row, index: int, names, context: str, where: str) -> list[str]:
    """The gold answer texts of one question, each checked to lie in its context."""
    from slimops.data import _quoted

    value = _cell(row, index, names, "answers", where)
    starts = None
    if isinstance(value, dict):  # SQuAD: {"text": [...], "answer_start": [...]}
        texts, starts = value.get("text"), value.get("answer_start")
        if not isinstance(texts, (list, tuple)) or (starts is not None and (
                not isinstance(starts, (list, tuple)) or len(starts) != len(texts))):
            raise BadInput(f"{where}: answers {_quoted(value)} is not SQuAD's {{\"text\": [...], \"answer_start\": "
                           "[...]}} (one start per text); fix the row")
    elif isinstance(value, str):
        texts = [value]
    elif isinstance(value, (list, tuple)):
        texts = list(value)
    else:
        raise BadInput(f"{where}: answers holds {_quoted(value)} ({type(value).__name__}); give the answer text, a list "
                       "of answer texts, or SQuAD's {\"text\": [...], \"answer_start\": [...]}")
    if not texts:
        raise BadInput(f"{where}: the question has no answer (an unanswerable SQuAD v2 question is not scored); give "
                       "its answer or drop the row")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise BadInput(f"{where}: answer {_quoted(text)} is not a text; give each answer as the words of the context "
                           "it is")
        if starts is not None:
            start = starts[i]
            if isinstance(start, bool) or not isinstance(start, int) or context[start:start + len(text)] != text:
                raise BadInput(f"{where}: answer {_quoted(text)} is not at answer_start {_quoted(start)} of its "
                               "context; fix answer_start (a character offset) or the answer")
        elif text not in context:
            raise BadInput(f"{where}: answer {_quoted(text)} is not found in its context; an extractive answer is a "
                           "span of the context: fix the answer or the context")
    return list(texts)


# ----------------------------------------------------------------------------- model inputs and outputs


def tokenize_pairs(tokenizer, batch, max_length: int) -> dict[str, np.ndarray]:
    """(question, context) pairs -> the model's inputs, plus ``offset_mapping`` [batch, tokens, 2] (character span
    of each token in its context, -1 for question, special and padding tokens); only the context is cut."""
    pairs = list(batch)
    if not pairs or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
        raise BadInput("question-answering reads (question, context) pairs; give data with columns: {question: ..., "
                       "context: ...}")
    if not getattr(tokenizer, "is_fast", False):
        raise BadInput("question-answering needs a fast tokenizer (tokenizer.json) to map tokens to characters; save "
                       "the model's tokenizer with tokenizer.json")
    try:
        encoded = tokenizer([q for q, _ in pairs], [c for _, c in pairs], padding=True, truncation="only_second",
                            max_length=max_length, return_offsets_mapping=True, return_tensors="np")
    except Exception as err:  # noqa: BLE001 - tokenizers: the question alone is longer than max_length
        raise BadInput(f"cannot tokenize a question with its context in {max_length} tokens ({type(err).__name__}: "
                       f"{' '.join(str(err).split())[:120]}); shorten the question or raise max_length") from None
    offsets = encoded.pop("offset_mapping").astype(np.int64)
    for row in range(len(pairs)):
        in_context = np.array([s == 1 for s in encoded.sequence_ids(row)])
        offsets[row, ~in_context] = -1
    return {**{k: v for k, v in encoded.items()}, "offset_mapping": offsets}


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """[batch, 3] float32: each question's best context span as [char_start, char_end, start + end logit]."""
    start_logits = np.asarray(start_logits, dtype=np.float32)
    end_logits = np.asarray(end_logits, dtype=np.float32)
    if start_logits.ndim != 2 or start_logits.shape != end_logits.shape or start_logits.shape != offsets.shape[:2]:
        raise BadInput(f"a question-answering model returns start and end logits [batch, tokens]; this one returned "
                       f"shapes {list(start_logits.shape)} and {list(end_logits.shape)}: export it as "
                       "question-answering")
    tokens = start_logits.shape[1]
    in_context = offsets[..., 0] >= 0
    scores = start_logits[:, :, None] + end_logits[:, None, :]
    span = np.arange(tokens)[None, :] - np.arange(tokens)[:, None]  # end - start
    allowed = (span >= 0) & (span < MAX_ANSWER_TOKENS)
    allowed = allowed[None] & in_context[:, :, None] & in_context[:, None, :]
    scores = np.where(allowed, scores, -np.inf).reshape(len(scores), -1)
    best = scores.argmax(axis=1)
    rows = np.full((len(scores), 3), [-1.0, -1.0, 0.0], dtype=np.float32)
    for i, flat in enumerate(best):
        if np.isfinite(scores[i, flat]):
            start, end = divmod(int(flat), tokens)
            rows[i] = offsets[i, start, 0], offsets[i, end, 1], scores[i, flat]
    return rows


def sample_pairs() -> list[tuple[str, str]]:
    return [("Where was Anna born?", "Anna Smith was born in Berlin in 1990. She works for Siemens."),
            ("Who works for Reuters?", "Reuters hired Ben Novak last year. Ben lives in Oslo."),
            ("What is short?", "Short."),
            ("When did the storm hit?", "A storm hit the town on Friday night, and the river flooded the bank.")]


# ----------------------------------------------------------------------------- scores


def predicted_texts(outputs: np.ndarray, dataset) -> list[str]:
    _check_outputs(outputs, dataset)
    return [context[int(s):int(e)] if s >= 0 else "" for (_, context), (s, e, _) in zip(dataset.inputs, outputs)]


def _check_outputs(outputs: np.ndarray, dataset) -> None:
    if outputs.ndim != 2 or outputs.shape[1] != 3 or len(outputs) != len(dataset.inputs):
        raise BadInput(f"the model gives outputs of shape {list(outputs.shape)}, not [questions, 3] answer spans; give "
                       "a question-answering model (config.json: *ForQuestionAnswering, or task: question-answering)")


def per_question(outputs: np.ndarray, dataset) -> np.ndarray:
    """[questions, 2]: each question's exact match and F1 (0..1), the best over its gold answers."""
    from transformers.data.metrics.squad_metrics import compute_exact, compute_f1

    scores = np.zeros((len(dataset.answers), 2))
    for i, (pred, gold) in enumerate(zip(predicted_texts(outputs, dataset), dataset.answers)):
        scores[i] = max(compute_exact(g, pred) for g in gold), max(compute_f1(g, pred) for g in gold)
    return scores


def task_metrics(outputs: np.ndarray, dataset) -> dict[str, float]:
    """SQuAD v1.1 F1 (the gate's metric) and exact match, x100."""
    scores = per_question(outputs, dataset)
    return {METRIC: 100.0 * float(scores[:, 1].mean()), "exact_match": 100.0 * float(scores[:, 0].mean())}


def fidelity(baseline: np.ndarray, candidate: np.ndarray, dataset) -> dict[str, float]:
    """The share of questions (x100) whose answer is the baseline's character span."""
    _check_outputs(baseline, dataset)
    _check_outputs(candidate, dataset)
    same = (baseline[:, :2] == candidate[:, :2]).all(axis=1)
    return {"span_agreement": 100.0 * float(same.mean())}


def bootstrap_drops(baseline: np.ndarray, candidate: np.ndarray, dataset, rng, resamples: int) -> np.ndarray:
    """F1 drops (baseline - candidate, x100) over ``resamples`` paired resamples of the questions."""
    f1 = [per_question(outputs, dataset)[:, 1] for outputs in (baseline, candidate)]
    picks = rng.integers(0, len(f1[0]), size=(resamples, len(f1[0])))
    return 100.0 * (f1[0][picks].mean(axis=1) - f1[1][picks].mean(axis=1))
