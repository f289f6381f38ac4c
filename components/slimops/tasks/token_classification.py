"""token-classification (NER): word data, word-level model outputs, and seqeval's entity scores.

Data: one sentence per row, a column of words and a column of tags (``columns: {tokens: tokens, tags: ner_tags}``).
JSONL and Parquet cells are lists; a CSV/TSV cell is the words (or tags) separated by spaces. Tags that are names
map through the model's ``label2id``; integers are ids. The model's labels must be IOB tags (``O``, ``B-X``,
``I-X``; ``E-``/``S-`` too): seqeval reads entities from them.

Outputs: the model tokenizes the words (``is_split_into_words``); each word's logits are those of its first
sub-token, as the transformers token-classification examples train it. Every sentence's output is
``[max_length, num_labels]`` (word positions past its last word are zero), so batches concatenate and the PyTorch
baseline and every ONNX / OpenVINO candidate give the same shape. A word past ``max_length`` tokens is not seen by
the model: its logits are zero, which argmax reads as label id 0 (``O`` in the models slimops builds).

Scores (x100): seqeval's micro entity F1 (the gate's metric), precision and recall, and tag accuracy over words;
fidelity is the per-word tag agreement with the baseline; the drop interval is a paired bootstrap over sentences.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from slimops.errors import BadInput

TASK = "token-classification"
METRIC = "entity_f1"
TOKENS_NAMES = ("tokens", "words")  # column names read as the words when the recipe names no columns
TAGS_NAMES = ("ner_tags", "tags", "labels", "label")
IOB = re.compile(r"^(O|[BIES]-.+)$")


# ----------------------------------------------------------------------------- data


def is_token_data(spec, path: Path) -> bool:
    """Whether ``spec`` names token data: ``columns:`` with ``tokens``, or (no columns) a JSONL/Parquet table
    whose columns include ``tokens`` / ``words``."""
    if spec.columns:
        return "tokens" in spec.columns
    if spec.format not in ("jsonl", "parquet", "hf-dataset"):
        return False
    return any(name in TOKENS_NAMES for name in (_column_names(spec, path) or []))


def _column_names(spec, path: Path) -> list[str] | None:
    if spec.format == "hf-dataset":
        from slimops import hf_dataset

        try:
            return hf_dataset.read_table(spec)[0].column_names
        except BadInput:  # not a saved dataset: the table reader says so
            return None
    if spec.format == "parquet":
        try:
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        except Exception:  # noqa: BLE001 - not Parquet: the table reader says so
            return None
    import json

    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    return None
                return list(record) if isinstance(record, dict) else None
    return None


def read_tokens(spec):
    """A token dataset: inputs are word lists, ``tags`` the tags as written (resolved by ``resolve_tags``)."""
    from slimops.data import Dataset, _map_columns, _quoted, named_table

    path = Path(spec.path)
    if spec.format not in ("csv", "tsv", "jsonl", "parquet", "hf-dataset"):
        raise BadInput(f"data format '{spec.format}' cannot hold token data (words and tags); use jsonl, parquet, "
                       "hf-dataset, csv or tsv with columns: {tokens: ..., tags: ...}")
    names, rows, first_line, place = named_table(spec, lists=True)
    if spec.columns:
        roles = _map_columns(spec, names, path, rows)
    else:
        roles = _find_columns(names, path)
    words_all, tags_all, where_all = [], [], []
    for offset, row in enumerate(rows):
        if spec.limit and len(words_all) >= spec.limit:
            break
        line = first_line + offset
        where = place(line)
        words = _sequence(row, roles["tokens"], names, "tokens", where, spec.format)
        if not words:
            raise BadInput(f"{where}: the tokens cell holds no words; drop the row or give its words")
        if any(not isinstance(w, str) for w in words):
            bad = next(w for w in words if not isinstance(w, str))
            raise BadInput(f"{where}: the tokens list holds {_quoted(bad)} ({type(bad).__name__}), not a word; give "
                           "the words as strings")
        words_all.append(words)
        where_all.append(where)
        if "tags" in roles:
            tags = _sequence(row, roles["tags"], names, "tags", where, spec.format)
            if len(tags) != len(words):
                raise BadInput(f"{where}: {len(words)} words but {len(tags)} tags; give one tag per word")
            tags_all.append(tags)
    if not words_all:
        raise BadInput(f"data file {path} holds no examples (a header row at most); give a file with data")
    if "tags" not in roles:
        return Dataset(inputs=words_all)
    return Dataset(inputs=words_all, tags=tags_all, tag_where=where_all)


def _find_columns(names: list[str] | None, path: Path) -> dict[str, int]:
    from slimops.data import _quoted

    lowered = [n.lower() for n in names or []]
    roles = {}
    for role, candidates in (("tokens", TOKENS_NAMES), ("tags", TAGS_NAMES)):
        found = next((c for c in candidates if c in lowered), None)
        if found is not None:
            roles[role] = lowered.index(found)
    if "tokens" not in roles:
        shown = ", ".join(_quoted(n) for n in (names or [])[:20])
        raise BadInput(f"{path}: cannot tell which column holds the words (columns: {shown}); name them, e.g. "
                       "columns: {tokens: tokens, tags: ner_tags}")
    return roles


def _sequence(row, index: int, names, role: str, where: str, fmt: str) -> list:
    from slimops.data import _column_label, _quoted

    if index >= len(row):
        raise BadInput(f"{where}: has {len(row)} column(s), no column {_column_label(names, index)} for {role}; fix "
                       "the row or the columns: mapping")
    value = row[index]
    if value is None:
        raise BadInput(f"{where}: column {_column_label(names, index)} ({role}) is empty; fill it or drop the row")
    if isinstance(value, str) and fmt in ("csv", "tsv"):
        return value.split()  # a delimited table: the words (or tags) separated by spaces
    if isinstance(value, (list, tuple)):
        return list(value)
    kind = "text" if isinstance(value, str) else type(value).__name__
    raise BadInput(f"{where}: column {_column_label(names, index)} ({role}) holds {kind} {_quoted(value)}, not a "
                   f"list; give each sentence's {'words' if role == 'tokens' else 'tags'} as a list, one per word")


def resolve_tags(dataset, label2id: dict[str, int] | None) -> None:
    """Tags as written -> arrays of the model's label ids; ``dataset.tag_names`` = the model's labels by id."""
    from slimops.data import _quoted

    if not label2id:
        raise BadInput(f"{dataset.tag_where[0]}: token tags need the model's labels (id2label / label2id in its "
                       "config.json) to name entities; save the model with them")
    names = {i: name for name, i in label2id.items()}
    width = max(names) + 1
    if sorted(names) != list(range(width)):
        raise BadInput(f"the model's label2id ids {sorted(names)[:10]} are not 0..{width - 1}; fix config.json's "
                       "id2label / label2id")
    tag_names = [names[i] for i in range(width)]
    not_iob = [n for n in tag_names if not IOB.match(n)]
    if not_iob:
        raise BadInput(f"the model's labels include {', '.join(_quoted(n) for n in not_iob[:3])}, which are not IOB tags "
                       "(O, B-X, I-X); seqeval scores entities from IOB tags: save the model with id2label naming "
                       "its tags")
    resolved = []
    for tags, where in zip(dataset.tags, dataset.tag_where):
        ids = []
        for tag in tags:
            if isinstance(tag, str) and tag in label2id:
                ids.append(label2id[tag])
            elif isinstance(tag, int) and not isinstance(tag, bool) and 0 <= tag < width:
                ids.append(tag)
            elif isinstance(tag, str) and tag.strip().lstrip("-").isdigit() and 0 <= int(tag) < width:
                ids.append(int(tag))  # an id written as text (a CSV cell)
            else:
                known = ", ".join(_quoted(k) for k in tag_names[:10])
                raise BadInput(f"{where}: tag {_quoted(tag)} is not among the model's labels ({known}) nor an id "
                               f"0..{width - 1}; fix the file or the model's label2id")
        resolved.append(np.asarray(ids, dtype=np.int64))
    dataset.tags, dataset.tag_names, dataset.tag_where = resolved, tag_names, None


# ----------------------------------------------------------------------------- model inputs and outputs


def tokenize_words(tokenizer, batch, max_length: int) -> dict[str, np.ndarray]:
    """Word lists (a plain string is split on whitespace) tokenized as pre-split words, plus ``word_index``:
    [batch, tokens], the word a first sub-token starts, -1 elsewhere (special tokens, continuation pieces)."""
    words = [item.split() if isinstance(item, str) else list(item) for item in batch]
    if not getattr(tokenizer, "is_fast", False):
        raise BadInput("token-classification needs a fast tokenizer (tokenizer.json) to map words to tokens; save the "
                       "model's tokenizer with tokenizer.json")
    encoded = tokenizer(words, is_split_into_words=True, padding=True, truncation=True, max_length=max_length,
                        return_tensors="np")
    index = np.full(encoded["input_ids"].shape, -1, dtype=np.int64)
    for row in range(len(words)):
        previous = None
        for position, word in enumerate(encoded.word_ids(row)):
            if word is not None and word != previous:
                index[row, position] = word
            previous = word
    return {**dict(encoded), "word_index": index}


def word_logits(token_logits: np.ndarray, word_index: np.ndarray, width: int) -> np.ndarray:
    """[batch, tokens, labels] -> [batch, width, labels]: each word's first sub-token's logits, zero elsewhere."""
    out = np.zeros((token_logits.shape[0], width, token_logits.shape[-1]), dtype=np.float32)
    rows, positions = np.nonzero((word_index >= 0) & (word_index < width))
    out[rows, word_index[rows, positions]] = token_logits[rows, positions]
    return out


def sample_words() -> list[list[str]]:
    return [["Anna", "Smith", "flew", "from", "Berlin", "to", "New", "York", "."],
            ["Reuters", "reported", "the", "news", "."], ["Hello", "."],
            ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "near", "the", "river", "bank", "."]]


# ----------------------------------------------------------------------------- scores


def predicted_ids(outputs: np.ndarray, dataset) -> list[np.ndarray]:
    """Each sentence's predicted label ids, one per word (a word past the output width: id 0)."""
    best = outputs.argmax(axis=-1)
    width = outputs.shape[1]
    return [np.concatenate([best[i, :min(len(words), width)], np.zeros(max(0, len(words) - width), np.int64)])
            for i, words in enumerate(dataset.inputs)]


def _check_outputs(outputs: np.ndarray, dataset) -> None:
    if outputs.ndim != 3 or outputs.shape[-1] != len(dataset.tag_names):
        raise BadInput(f"the model gives outputs of shape {list(outputs.shape)}, not [sentences, words, "
                       f"{len(dataset.tag_names)} labels] as its label2id says; check the model's config.json")


def task_metrics(outputs: np.ndarray, dataset) -> dict[str, float]:
    """seqeval entity F1 / precision / recall (micro, x100) and word tag accuracy (x100)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    _check_outputs(outputs, dataset)
    names = dataset.tag_names
    gold = [[names[i] for i in tags] for tags in dataset.tags]
    pred = [[names[i] for i in ids] for ids in predicted_ids(outputs, dataset)]
    if not any(t != "O" for sentence in gold for t in sentence):
        raise BadInput("the evaluation data tags no entity (every tag is O), so entity F1 is undefined; give data "
                       "with entities")
    words = sum(len(t) for t in gold)
    right = sum(int((p == g).sum()) for p, g in zip(predicted_ids(outputs, dataset), dataset.tags))
    return {METRIC: 100.0 * float(f1_score(gold, pred, zero_division=0)),
            "entity_precision": 100.0 * float(precision_score(gold, pred, zero_division=0)),
            "entity_recall": 100.0 * float(recall_score(gold, pred, zero_division=0)),
            "tag_accuracy": 100.0 * right / words}


def fidelity(baseline: np.ndarray, candidate: np.ndarray, dataset) -> dict[str, float]:
    """Per-word tag agreement with the baseline (x100), over the words of the evaluation data."""
    same = [(b == c).mean() * len(b) for b, c in zip(predicted_ids(baseline, dataset), predicted_ids(candidate, dataset))]
    return {"tag_agreement": 100.0 * float(sum(same)) / sum(len(w) for w in dataset.inputs)}


def entity_counts(outputs: np.ndarray, dataset) -> np.ndarray:
    """[sentences, 3]: gold entities, predicted entities, and correct ones (type and span), per sentence: the
    sums give seqeval's micro scores, so a bootstrap resamples sentences by summing rows."""
    from seqeval.metrics.sequence_labeling import get_entities

    names = dataset.tag_names
    counts = np.zeros((len(dataset.tags), 3), dtype=np.int64)
    for i, (tags, ids) in enumerate(zip(dataset.tags, predicted_ids(outputs, dataset))):
        gold = set(get_entities([names[t] for t in tags]))
        pred = set(get_entities([names[t] for t in ids]))
        counts[i] = len(gold), len(pred), len(gold & pred)
    return counts


def f1_of(counts: np.ndarray) -> np.ndarray:
    """Micro entity F1 (x100) from summed counts [..., 3]: 2 * correct / (gold + predicted)."""
    gold, pred, correct = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(gold + pred > 0, 200.0 * correct / (gold + pred), 0.0)


def bootstrap_drops(baseline: np.ndarray, candidate: np.ndarray, dataset, rng, resamples: int) -> np.ndarray:
    """Entity F1 drops (baseline - candidate, x100) over ``resamples`` paired resamples of the sentences."""
    _check_outputs(baseline, dataset)
    _check_outputs(candidate, dataset)
    counts = [entity_counts(outputs, dataset) for outputs in (baseline, candidate)]
    picks = rng.integers(0, len(dataset.tags), size=(resamples, len(dataset.tags)))
    return f1_of(counts[0][picks].sum(axis=1)) - f1_of(counts[1][picks].sum(axis=1))
