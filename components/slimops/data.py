"""Data readers. A dataset is named in a recipe by a small typed spec and read here only.

Formats:
- ``sts``: STS Benchmark TSV (genre, file, year, id, score, sentence1, sentence2, ...).
- ``text``: one sentence per line (calibration / transfer data).
- ``text-classification``: TSV or CSV with a text column and an integer label column.
- ``digits``: scikit-learn's 8x8 digits (ships offline), split by a seeded stratified split.
- ``npz``: arrays ``x`` and ``y`` (loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slimops.errors import BadInput
from slimops.manifest import sha256_file


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["sts", "text", "text-classification", "digits", "npz"]
    path: str | None = Field(None, description="file to read (not used by 'digits')")
    split: Literal["train", "test", "all"] = Field("all", description="digits only: which part of the seeded split")
    limit: int | None = Field(None, gt=0, description="read at most this many examples")
    text_column: int = Field(0, ge=0, description="text-classification: column of the text")
    label_column: int = Field(1, ge=0, description="text-classification: column of the integer label")

    def fingerprint(self) -> dict:
        """What a manifest records: the spec plus the sha256 of the file it read."""
        info = self.model_dump(exclude_none=True)
        if self.path:
            if not Path(self.path).is_file():
                raise BadInput(f"data file not found: {self.path}; check the 'path' of the dataset")
            info["sha256"] = sha256_file(Path(self.path))
        return info


@dataclass
class Dataset:
    """Inputs the model consumes and the targets its task metric compares against."""

    inputs: list[str] | np.ndarray  # sentences, or a float32 tensor batch
    labels: np.ndarray | None = None  # classification targets
    pairs: list[tuple[int, int]] = field(default_factory=list)  # STS: indices into inputs
    scores: np.ndarray | None = None  # STS gold similarity

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def kind(self) -> str:
        if self.scores is not None:
            return "sts"
        if self.labels is not None:
            return "classification"
        return "unlabeled"


def load_dataset(spec: DataSpec) -> Dataset:
    reader = _READERS[spec.format]
    if spec.format not in ("digits",):
        if not spec.path:
            raise BadInput(f"data format '{spec.format}' needs a path; set 'path' to the file to read")
        path = Path(spec.path)
        if not path.is_file():
            raise BadInput(f"data file not found: {path}; check the 'path' of the dataset")
    dataset = reader(spec)
    if len(dataset) == 0:
        raise BadInput(f"data file {spec.path or spec.format} holds no examples; give a file with data")
    return dataset


def _read_rows(path: Path, delimiter: str) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BadInput(f"data file {path} is not UTF-8 text ({err.reason}); give a text file") from None
    return [row for row in csv.reader(text.splitlines(), delimiter=delimiter, quoting=csv.QUOTE_NONE) if row]


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
            raise BadInput(f"{path}:{line_no}: score column holds {row[4]!r}, not a number; fix the file") from None
        ids = []
        for sentence in (row[5], row[6]):
            if sentence not in index:
                index[sentence] = len(sentences)
                sentences.append(sentence)
            ids.append(index[sentence])
        pairs.append((ids[0], ids[1]))
        scores.append(score)
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
        first = handle.readline().split("\t")
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
            raise BadInput(f"{path}:{line_no}: label {row[spec.label_column]!r} is not an integer; fix the file") from None
        texts.append(row[spec.text_column])
    return Dataset(inputs=texts, labels=np.asarray(labels, dtype=np.int64))


DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.25


def _read_digits(spec: DataSpec) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # N x 1 x 8 x 8 in [0, 1]
    y = digits.target.astype(np.int64)
    if spec.split != "all":
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SEED, stratify=y
        )
        x, y = (x_train, y_train) if spec.split == "train" else (x_test, y_test)
    return Dataset(inputs=x[: spec.limit], labels=y[: spec.limit])


def _read_npz(spec: DataSpec) -> Dataset:
    path = Path(spec.path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays:
                raise BadInput(f"{path} has arrays {sorted(arrays.files)}, no 'x'; save inputs as x (and labels as y)")
            x = arrays["x"].astype(np.float32)
            y = arrays["y"].astype(np.int64) if "y" in arrays else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise BadInput(f"{path} is not a readable .npz file ({type(err).__name__}: {err}); save it with numpy.savez") from None
    return Dataset(inputs=x[: spec.limit], labels=None if y is None else y[: spec.limit])


_READERS = {
    "sts": _read_sts,
    "text": _read_text,
    "text-classification": _read_text_classification,
    "digits": _read_digits,
    "npz": _read_npz,
}
