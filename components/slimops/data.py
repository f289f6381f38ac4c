"""Data readers. A dataset is named in a recipe by a small typed spec and read here only.

Formats:
- ``sts``: STS Benchmark TSV (genre, file, year, id, score, sentence1, sentence2, ...).
- ``text``: one sentence per line (calibration / transfer data).
- ``text-classification``: TSV or CSV with a text column and an integer label column (by index), or with
  ``columns:`` naming them (then read as ``csv`` / ``tsv`` by the file's suffix).
- ``csv``, ``tsv``, ``jsonl``, ``parquet``: tables with named columns. ``columns:`` maps roles to columns
  (``{text: sentence1, text_pair: sentence2, label: label}``); without it, common names are recognised (text /
  sentence / sentence1 / premise / question, text_pair / sentence2 / hypothesis, label). A CSV/TSV header row is
  detected. String labels map through the model's ``label2id`` (config.json), integer labels are ids.
- token data (NER): ``columns: {tokens: ..., tags: ...}`` (or, in JSONL/Parquet, a ``tokens`` / ``words`` column): a
  list of words and a list of tags per row (slimops.tasks.token_classification).
- question-answering data: ``columns: {question: ..., context: ..., answers: ...}`` (or, in JSONL/Parquet, columns
  named ``question`` and ``context``): one question a row with its answers (slimops.tasks.question_answering).
- ``hf-dataset``: a Hugging Face dataset saved with ``save_to_disk`` (a folder), read as a table of named columns
  (slimops.hf_dataset); ``split:`` picks a DatasetDict's split.
- ``digits``: scikit-learn's 8x8 digits (ships offline), split by a seeded stratified split.
- ``npz``: arrays ``x`` and ``y`` (loaded with ``allow_pickle=False``).
- ``imagefolder``: a folder of image files, one subfolder per class (the label), turned into pixel_values by the
  model's own image processor (preprocessor_config.json; slimops.images).
"""

from __future__ import annotations

import csv
import functools
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimops.errors import BadInput
from slimops.manifest import sha256_file


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["sts", "text", "text-classification", "digits", "npz", "csv", "tsv", "jsonl", "parquet",
                    "hf-dataset", "imagefolder"]
    path: str | None = Field(None, description="file to read (not used by 'digits'); hf-dataset: the save_to_disk folder; "
                             "imagefolder: the folder of class folders")
    split: str | None = Field(None, description="digits: train | test | all (default) of the seeded split; "
                              "hf-dataset: the DatasetDict split to read (default: its only split)")
    limit: int | None = Field(None, gt=0, description="read at most this many examples")
    text_column: int = Field(0, ge=0, description="text-classification: column of the text")
    label_column: int = Field(1, ge=0, description="text-classification: column of the integer label")
    columns: dict[str, str | int] | None = Field(
        None, description="role -> column name (or 0-based index): text, text_pair, label; e.g. "
        "{text: sentence1, text_pair: sentence2, label: label}; token data: {tokens: tokens, tags: ner_tags}; "
        "question answering: {question: question, context: context, answers: answers}")
    header: bool | None = Field(None, description="csv/tsv: whether the first row names the columns (default: detected)")

    @field_validator("columns")
    @classmethod
    def _known_roles(cls, columns):
        if columns is not None:
            unknown = [key for key in columns if key not in COLUMN_ROLES]
            if unknown:
                raise ValueError(f"unknown column key {unknown[0]!r}; the keys are {', '.join(COLUMN_ROLES)}")
            if "tokens" in columns and set(columns) - {"tokens", "tags"}:
                raise ValueError("token data takes columns tokens and tags only (the words and their tags)")
            qa = {"question", "context", "answers"}
            if qa & set(columns) and not {"question", "context"} <= set(columns) <= qa:
                raise ValueError("question-answering data takes columns question, context and answers only (both "
                                 "question and context)")
            if "text" not in columns and "tokens" not in columns and "question" not in columns:
                raise ValueError("columns needs 'text' (the column of the input text), 'tokens' for token data, or "
                                 "'question' and 'context' for question answering")
        return columns

    @model_validator(mode="after")
    def _split_fits_format(self):
        if self.split is not None and self.format not in ("digits", "hf-dataset"):
            raise ValueError(f"split is for formats digits and hf-dataset, not {self.format}; remove it")
        if self.format == "digits" and self.split not in (None, "train", "test", "all"):
            raise ValueError(f"digits split {self.split!r}: use train, test or all")
        return self

    def fingerprint(self) -> dict:
        """What a manifest records: the spec plus the sha256 of the file (or hf-dataset folder) it read."""
        info = self.model_dump(exclude_none=True)
        if self.format == "hf-dataset" and self.path:
            from slimops import hf_dataset

            info["sha256"] = hf_dataset.fingerprint(self.path)
        elif self.format == "imagefolder" and self.path:
            from slimops import images

            info["sha256"] = images.fingerprint(self.path)
        elif self.path:
            if not Path(self.path).is_file():
                raise BadInput(f"data file not found: {self.path}; check the 'path' of the dataset")
            info["sha256"] = sha256_file(Path(self.path))
        return info


COLUMN_ROLES = ("text", "text_pair", "label", "tokens", "tags", "question", "context", "answers")
# Column names recognised when a table has a header but the recipe names no columns.
COMMON_NAMES = {
    "text": ("text", "sentence", "sentence1", "premise", "question", "question1", "query", "text_a"),
    "text_pair": ("text_pair", "sentence2", "hypothesis", "question2", "passage", "text_b"),
    "label": ("label", "labels", "target", "class"),
}


@dataclass
class Dataset:
    """Inputs the model consumes and the targets its task metric compares against."""

    inputs: list[str] | np.ndarray  # sentences, or a float32 tensor batch
    labels: np.ndarray | None = None  # classification targets
    pairs: list[tuple[int, int]] = field(default_factory=list)  # STS: indices into inputs
    scores: np.ndarray | None = None  # STS gold similarity
    raw_labels: list[str] | None = None  # labels as written (strings), until mapped through a model's label2id
    label_where: list[str] | None = None  # "file:line" of each raw label, for error messages
    tags: list | None = None  # token data: each sentence's tags (as written, then label-id arrays)
    tag_names: list[str] | None = None  # token data: the model's labels by id, once tags are resolved
    tag_where: list[str] | None = None  # token data: "file:line" of each sentence, until tags are resolved
    answers: list[list[str]] | None = None  # question answering: each question's gold answer texts

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def kind(self) -> str:
        if self.scores is not None:
            return "sts"
        if self.tags is not None:
            return "tokens"
        if self.answers is not None:
            return "qa"
        if self.labels is not None or self.raw_labels is not None:
            return "classification"
        return "unlabeled"


def load_for_model(spec: DataSpec, *model_dirs) -> Dataset:
    """Read ``spec`` for the model in ``model_dirs`` (the first that has what is needed): string labels map through
    its label2id, image files become pixel_values through its image processor."""
    return load_dataset(spec, label2id_of(*model_dirs), model_dirs=model_dirs)


def load_dataset(spec: DataSpec, label2id: dict[str, int] | None = None, model_dirs: tuple = ()) -> Dataset:
    """Read ``spec``; string labels are mapped through ``label2id`` (the model's, see ``label2id_of``); image files
    need the model (``model_dirs``: its image processor, see ``load_for_model``)."""
    reader = _READERS.get(spec.format)
    if spec.format == "imagefolder":
        from slimops import images

        if not spec.path:
            raise BadInput("data format 'imagefolder' needs a path; set 'path' to the folder of class folders")
        reader = functools.partial(images.read_imagefolder, model_dirs=model_dirs, label2id=label2id)
    elif spec.format not in ("digits",):
        if not spec.path:
            raise BadInput(f"data format '{spec.format}' needs a path; set 'path' to the file to read")
        path = Path(spec.path)
        if spec.format == "hf-dataset":
            from slimops import hf_dataset

            hf_dataset.check_directory(spec.path)
        elif not path.is_file():
            raise BadInput(f"data file not found: {path}; check the 'path' of the dataset")
    if spec.format == "text-classification" and (spec.columns or _has_header_words(Path(spec.path))):
        reader = _read_table  # named columns: read as csv / tsv by the file's suffix
    if spec.format in ("csv", "tsv", "jsonl", "parquet", "hf-dataset"):
        from slimops.tasks import question_answering, token_classification

        if token_classification.is_token_data(spec, Path(spec.path)):
            reader = token_classification.read_tokens
        elif question_answering.is_qa_data(spec, Path(spec.path)):
            reader = question_answering.read_qa
    dataset = reader(spec)
    if len(dataset) == 0:
        raise BadInput(f"data file {spec.path or spec.format} holds no examples; give a file with data")
    if dataset.raw_labels is not None:
        resolve_labels(dataset, label2id)
    if dataset.tags is not None:
        from slimops.tasks.token_classification import resolve_tags

        resolve_tags(dataset, label2id)
    return dataset


def label2id_of(*model_dirs) -> dict[str, int] | None:
    """The ``label2id`` of the first model directory whose config.json has one (exports carry config.json)."""
    from slimops.formats import load_json_file

    for model_dir in model_dirs:
        path = Path(model_dir) / "config.json" if model_dir else None
        if path is None or not path.is_file():
            continue
        config = load_json_file(path)
        mapping = config.get("label2id") if isinstance(config, dict) else None
        if not mapping and isinstance(config, dict) and isinstance(config.get("id2label"), dict):
            mapping = {str(v): int(k) for k, v in config["id2label"].items() if str(k).lstrip("-").isdigit()}
        if isinstance(mapping, dict) and mapping:
            return {str(k): int(v) for k, v in mapping.items() if isinstance(v, int) or str(v).isdigit()}
    return None


def resolve_labels(dataset: Dataset, label2id: dict[str, int] | None) -> None:
    """Map the labels as written to class ids: a label the model names (label2id) is its id; an integer is an id."""
    mapped = []
    for value, where in zip(dataset.raw_labels, dataset.label_where):
        if label2id and value in label2id:
            mapped.append(label2id[value])
            continue
        try:
            mapped.append(int(value))
            continue
        except ValueError:
            try:
                number = float(value)  # 1.0 from a float column of JSONL or Parquet
            except ValueError:
                number = None
            if number is not None and math.isfinite(number) and number == int(number):
                mapped.append(int(number))
                continue
        if not label2id:
            raise BadInput(f"{where}: label {_quoted(value)} is a name, but the model has no label2id in its "
                           "config.json; give integer labels, or save the model with id2label/label2id")
        known = ", ".join(_quoted(k) for k in list(label2id)[:10])
        raise BadInput(f"{where}: label {_quoted(value)} is not among the model's labels ({known}); fix the file "
                       "or the model's label2id")
    dataset.labels = np.asarray(mapped, dtype=np.int64)
    dataset.raw_labels = dataset.label_where = None


MAX_LINE_CHARS = 1024 * 1024  # far longer than any model input: a longer line is not a sentence
MAX_NPZ_VALUES = 2**28  # values in one .npz array (1 GiB as float32)


def _read_rows(path: Path, delimiter: str) -> list[list[str]]:
    lines = _read_lines(path)
    reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    try:
        return [row for row in reader if row]
    except csv.Error as err:  # a field over csv.field_size_limit(), a NUL byte, ...
        raise BadInput(f"{path}:{reader.line_num}: cannot split the line into columns ({err}); "
                       f"no model input is that long: shorten or remove the line") from None


def _read_lines(path: Path) -> list[str]:
    """The file's lines, decoded as UTF-8, each under MAX_LINE_CHARS."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BadInput(f"cannot read data file {path} ({err.strerror or err}); check the path and its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise BadInput(f"data file {path}:{line} is not UTF-8 text ({err.reason}); save the file as UTF-8") from None
    lines = text.splitlines()
    for line_no, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_CHARS:
            raise BadInput(f"{path}:{line_no}: a line of {len(line)} characters, over the limit of {MAX_LINE_CHARS} "
                           "(no model input is that long); split or shorten it")
    return lines


def _read_sts(spec: DataSpec) -> Dataset:
    path = Path(spec.path)
    rows = _read_rows(path, "\t")
    sentences: list[str] = []
    index: dict[str, int] = {}
    pairs, scores = [], []
    for line_no, row in enumerate(rows, 1):
        if spec.limit and len(pairs) >= spec.limit:
            break
        if len(row) < 7:
            raise BadInput(
                f"{path}:{line_no}: expected STS-B columns (genre, file, year, id, score, sentence1, sentence2), "
                f"found {len(row)} column(s); give an STS-B formatted TSV"
            )
        try:
            score = float(row[4])
        except ValueError:
            raise BadInput(f"{path}:{line_no}: score column holds {_quoted(row[4])}, not a number; fix the file") from None
        if not math.isfinite(score):
            raise BadInput(f"{path}:{line_no}: score {_quoted(row[4])} is not a finite number; give a similarity score")
        ids = []
        for sentence in (row[5], row[6]):
            if sentence not in index:
                index[sentence] = len(sentences)
                sentences.append(sentence)
            ids.append(index[sentence])
        pairs.append((ids[0], ids[1]))
        scores.append(score)
    if spec.format == "sts" and pairs:  # an evaluation set: Spearman needs pairs that differ in score
        if len(pairs) < 2:
            raise BadInput(f"STS data {path} holds one pair{' (limit 1)' if spec.limit == 1 else ''}; a rank correlation "
                           "needs at least two pairs with different scores: give more pairs")
        if min(scores) == max(scores):
            raise BadInput(f"STS data {path}: all {len(pairs)} pairs have the score {scores[0]:g}, so no correlation is "
                           "defined; give pairs with different scores")
    return Dataset(inputs=sentences, pairs=pairs, scores=np.asarray(scores, dtype=np.float64))


def _read_text(spec: DataSpec) -> Dataset:
    path = Path(spec.path)
    if path.suffix == ".tsv" and _looks_like_sts(path):
        # STS files double as calibration text: both sentence columns are real sentences.
        return Dataset(inputs=_read_sts(spec).inputs[: spec.limit])
    lines = [row[0] for row in _read_rows(path, "\x1f") if row[0].strip()]
    return Dataset(inputs=lines[: spec.limit])


def _looks_like_sts(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline(MAX_LINE_CHARS + 1).split("\t")
    return len(first) >= 7


def _read_text_classification(spec: DataSpec) -> Dataset:
    path = Path(spec.path)
    rows = _read_rows(path, "\t" if path.suffix == ".tsv" else ",")
    texts, labels = [], []
    for line_no, row in enumerate(rows, 1):
        if spec.limit and len(texts) >= spec.limit:
            break
        if len(row) <= max(spec.text_column, spec.label_column):
            raise BadInput(f"{path}:{line_no}: expected a text column {spec.text_column} and a label column "
                           f"{spec.label_column}, found {len(row)} column(s); set text_column/label_column")
        try:
            labels.append(int(row[spec.label_column]))
        except ValueError:
            if line_no == 1:
                continue  # a header row
            raise BadInput(f"{path}:{line_no}: label {_quoted(row[spec.label_column])} is not an integer; "
                           "fix the file") from None
        texts.append(row[spec.text_column])
    return Dataset(inputs=texts, labels=np.asarray(labels, dtype=np.int64))


def _read_table(spec: DataSpec) -> Dataset:
    """csv / tsv / jsonl / parquet (or text-classification with columns): named columns mapped to roles."""
    path = Path(spec.path)
    names, rows, first_line, place = named_table(spec)
    roles = _map_columns(spec, names, path, rows)
    texts, labels, where = [], [], []
    for offset, row in enumerate(rows):
        if spec.limit and len(texts) >= spec.limit:
            break
        line = first_line + offset

        def cell(role):
            index = roles[role]
            if index >= len(row):
                raise BadInput(f"{place(line)}: has {len(row)} column(s), no column {_column_label(names, index)} "
                               f"for {role}; fix the row or the columns: mapping")
            value = row[index]
            if value is None:
                raise BadInput(f"{place(line)}: column {_column_label(names, index)} ({role}) is empty; fill it or "
                               "drop the row")
            return value if isinstance(value, str) else str(value)

        text = cell("text")
        texts.append((text, cell("text_pair")) if "text_pair" in roles else text)
        if "label" in roles:
            labels.append(cell("label"))
            where.append(place(line))
    if not texts:
        raise BadInput(f"data file {path} holds no examples (a header row at most); give a file with data")
    if "label" not in roles:
        return Dataset(inputs=texts)
    return Dataset(inputs=texts, raw_labels=labels, label_where=where)


def _column_label(names: list[str] | None, index: int) -> str:
    return _quoted(names[index]) if names and index < len(names) else str(index)


HEADER_WORDS = {name for group in COMMON_NAMES.values() for name in group} | {"id", "idx", "score", "guid"}


def _delimited_table(path: Path, spec: DataSpec, delimiter: str):
    """(column names or None, data rows, line number of the first data row). TSV fields are taken as written
    (quotes are text, as in STS-B); CSV fields follow the CSV quoting rules."""
    if delimiter == "\t":
        rows = _read_rows(path, delimiter)
    else:
        rows = _read_csv_rows(path)
    if not rows:
        return None, [], 1
    named = spec.columns and any(isinstance(v, str) for v in spec.columns.values())
    header = spec.header
    if header is None:
        first = [cell.strip().lower() for cell in rows[0]]
        header = bool(named) or any(cell in HEADER_WORDS for cell in first) or _label_looks_like_header(spec, rows)
    if header:
        return [cell.strip() for cell in rows[0]], rows[1:], 2
    return None, rows, 1


def _label_looks_like_header(spec: DataSpec, rows: list[list[str]]) -> bool:
    """No header words: a first row whose label cell is not an integer while the next rows' are is a header."""
    index = (spec.columns or {}).get("label", spec.label_column if not spec.columns else None)
    if not isinstance(index, int) or len(rows) < 2:
        return False
    def is_int(row):
        try:
            int(row[index])
            return True
        except (ValueError, IndexError):
            return False
    return not is_int(rows[0]) and all(is_int(row) for row in rows[1:20])


def _has_header_words(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline(MAX_LINE_CHARS + 1)
    cells = next(csv.reader([first.rstrip("\r\n")], delimiter="\t" if path.suffix == ".tsv" else ","), [])
    return any(cell.strip().lower() in HEADER_WORDS - {"id", "idx", "guid"} for cell in cells)


def _read_csv_rows(path: Path) -> list[list[str]]:
    reader = csv.reader(_read_lines(path))
    try:
        return [row for row in reader if row]
    except csv.Error as err:
        raise BadInput(f"{path}:{reader.line_num}: cannot split the line into columns ({err}); fix its quoting") from None


def _jsonl_table(path: Path, lists: bool = False, dicts: bool = False):
    """(column names, rows, first line); ``lists``: cells may hold JSON lists (token data's words and tags);
    ``dicts``: and objects (SQuAD's answers)."""
    import json

    records, names = [], []
    for line_no, line in enumerate(_read_lines(path), 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise BadInput(f"{path}:{line_no}: not a JSON object ({err.msg}); give one JSON object per line") from None
        if not isinstance(record, dict):
            raise BadInput(f"{path}:{line_no}: a JSON {type(record).__name__}, not an object; give one object per line")
        for key in record:
            if key not in names:
                names.append(key)
        records.append(record)
    rows = [[record.get(name) for name in names] for record in records]
    for row in rows:
        for i, value in enumerate(row):
            if (isinstance(value, dict) and not dicts) or (isinstance(value, list) and not lists):
                raise BadInput(f"{path}: column {_quoted(names[i])} holds a JSON {type(value).__name__}, not text or a "
                               "label; name a column of strings or numbers")
    return names, rows, 1


def named_table(spec: DataSpec, lists: bool = False, dicts: bool = False):
    """A table format's (column names or None, data rows, number of the first data row, place(number) -> how a
    message names that row: "file:line" or "file row N"). ``lists``: cells may hold lists (token data); ``dicts``: and objects (SQuAD's answers)."""
    path = Path(spec.path)
    fmt = spec.format if spec.format != "text-classification" else ("tsv" if path.suffix == ".tsv" else "csv")
    if fmt in ("csv", "tsv"):
        return (*_delimited_table(path, spec, "\t" if fmt == "tsv" else ","), lambda line: f"{path}:{line}")
    if fmt == "jsonl":
        return (*_jsonl_table(path, lists, dicts), lambda line: f"{path}:{line}")
    if fmt == "parquet":
        return (*_parquet_table(path, lists, dicts), lambda row: f"{path} row {row}")
    if fmt == "hf-dataset":
        from slimops import hf_dataset

        table, shown = hf_dataset.read_table(spec)
        return (*_arrow_rows(table, lists, dicts), lambda row: f"{shown} row {row}")
    raise BadInput(f"data format '{spec.format}' is not a table of named columns; use csv, tsv, jsonl, parquet or "
                   "hf-dataset")


def _parquet_table(path: Path, lists: bool = False, dicts: bool = False):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BadInput("format 'parquet' needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow's ArrowInvalid / OSError: the file is not Parquet
        raise BadInput(f"{path} is not a readable Parquet file ({type(err).__name__}: "
                       f"{_quoted(' '.join(str(err).split()))}); write it with pyarrow or pandas") from None
    return _arrow_rows(table, lists, dicts)


def _arrow_rows(table, lists: bool = False, dicts: bool = False):
    """(column names, rows, 0) of an Arrow table (Parquet, a saved HF dataset); nested cells become None."""
    names = list(table.column_names)
    columns = [table.column(name).to_pylist() for name in names]
    for name, values in zip(names, columns):
        kept = (bytes,) if dicts else (dict, bytes)  # dicts: SQuAD's answers
        kept = kept if lists else (*kept, list)  # lists: token data's words and tags
        if any(isinstance(v, kept) for v in values[:100]):
            columns[names.index(name)] = [v if not isinstance(v, kept) else None for v in values]
    rows = [list(row) for row in zip(*columns)] if columns else []
    return names, rows, 0


def _map_columns(spec: DataSpec, names: list[str] | None, path: Path, rows: list) -> dict[str, int]:
    """role -> column index, from ``columns:``, else the header's common names, else text=0, label=1."""
    shown = ", ".join(_quoted(n) for n in (names or [])[:20])
    if spec.columns:
        roles = {}
        for role, column in spec.columns.items():
            if isinstance(column, int):
                roles[role] = column
            elif names is None:
                raise BadInput(f"{path}: columns.{role} names the column {_quoted(column)}, but the file has no header "
                               "row; add a header row, or give the column's 0-based index")
            elif column not in names:
                raise BadInput(f"{path}: no column {_quoted(column)} (columns.{role}); the file's columns are {shown}")
            else:
                roles[role] = names.index(column)
        return roles
    if names:
        lowered = [n.lower() for n in names]
        roles = {}
        for role, candidates in COMMON_NAMES.items():
            for candidate in candidates:
                if candidate in lowered:
                    roles[role] = lowered.index(candidate)
                    break
        if "text" not in roles and len(names) == 2:
            return {"text": 0, "label": 1}  # two unnamed columns: text, then label (as text-classification reads)
        if "text" in roles and "label" not in roles and spec.format == "text-classification":
            roles["label"] = spec.label_column  # the label column by index, as text-classification always read it
        if "text" not in roles:
            raise BadInput(f"{path}: cannot tell which column holds the text (columns: {shown}); name them, e.g. "
                           "columns: {text: sentence1, text_pair: sentence2, label: label}")
        return roles
    width = len(rows[0]) if rows else 0
    if spec.format == "text-classification" or width <= 2:
        return {"text": spec.text_column, "label": spec.label_column} if width != 1 else {"text": 0}
    raise BadInput(f"{path}: {width} columns and no header row, so slimops cannot tell which hold the text and the "
                   "label; set columns:, e.g. {text: 0, text_pair: 1, label: 2}")


DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.25


def _read_digits(spec: DataSpec) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # N x 1 x 8 x 8 in [0, 1]
    y = digits.target.astype(np.int64)
    if spec.split not in (None, "all"):
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SEED, stratify=y
        )
        x, y = (x_train, y_train) if spec.split == "train" else (x_test, y_test)
    return Dataset(inputs=x[: spec.limit], labels=y[: spec.limit])


def _read_npz(spec: DataSpec) -> Dataset:
    path = Path(spec.path)
    headers = _npz_headers(path)  # shapes and dtypes, read before any array is loaded
    if "x" not in headers:
        raise BadInput(f"{path} has arrays {sorted(headers)[:10]}, no 'x'; save inputs as x (and labels as y)")
    for name in ("x", "y"):
        if name not in headers:
            continue
        shape, dtype = headers[name]
        if dtype.hasobject or dtype.kind not in "biuf":
            raise BadInput(f"{path}: array {name!r} has dtype {_quoted(str(dtype))}; it must hold numbers "
                           "(object arrays need pickle; slimops loads .npz with allow_pickle=False): save it as float32 / int64")
        if math.prod(shape) > MAX_NPZ_VALUES:
            raise BadInput(f"{path}: array {name!r} has shape {_quoted(list(shape))}, over {MAX_NPZ_VALUES} values; "
                           "give a smaller evaluation set")
    if len(headers["x"][0]) < 2:
        raise BadInput(f"{path}: x has shape {list(headers['x'][0])}; it must be examples x features "
                       "(one row per example)")
    if "y" in headers and (len(headers["y"][0]) != 1 or headers["y"][0][0] != headers["x"][0][0]):
        raise BadInput(f"{path}: y has shape {list(headers['y'][0])} but x holds {headers['x'][0][0]} examples; "
                       "give one integer label per example")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            x = arrays["x"]
            y = arrays["y"] if "y" in arrays else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise BadInput(f"{path} is not a readable .npz file ({type(err).__name__}: {_quoted(str(err))}); "
                       "save it with numpy.savez") from None
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0][0])
        raise BadInput(f"{path}: x holds NaN or inf (first in example {bad}); give finite inputs")
    if y is not None and y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise BadInput(f"{path}: y holds values that are not integer labels (NaN, inf or fractions); "
                       "give one integer class label per example")
    x, y = x.astype(np.float32), None if y is None else y.astype(np.int64)
    if not np.isfinite(x).all():
        raise BadInput(f"{path}: x holds values too large for float32; scale the inputs")
    return Dataset(inputs=x[: spec.limit], labels=None if y is None else y[: spec.limit])


def _npz_headers(path: Path) -> dict:
    """{name: (shape, dtype)} of the arrays in a .npz, from their .npy headers (nothing is decompressed in full)."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist()[:1000]:
                if not entry.filename.endswith(".npy"):
                    continue
                with archive.open(entry) as handle:
                    version = np.lib.format.read_magic(handle)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(handle)
                headers[entry.filename[:-4]] = (tuple(shape), dtype)
    except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise BadInput(f"{path} is not a readable .npz file ({type(err).__name__}: {_quoted(str(err))}); "
                       "save it with numpy.savez") from None
    return headers


def _quoted(value, limit: int = 80) -> str:
    from slimops.formats import quoted

    return quoted(value, limit)


_READERS = {
    "sts": _read_sts,
    "text": _read_text,
    "text-classification": _read_text_classification,
    "digits": _read_digits,
    "npz": _read_npz,
    "csv": _read_table,
    "tsv": _read_table,
    "jsonl": _read_table,
    "parquet": _read_table,
    "hf-dataset": _read_table,
}
