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
import math
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


MAX_LINE_CHARS = 1024 * 1024  # far longer than any model input: a longer line is not a sentence
MAX_NPZ_VALUES = 2**28  # values in one .npz array (1 GiB as float32)


def _read_rows(path: Path, delimiter: str) -> list[list[str]]:
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
    reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    try:
        return [row for row in reader if row]
    except csv.Error as err:  # a field over csv.field_size_limit(), a NUL byte, ...
        raise BadInput(f"{path}:{reader.line_num}: cannot split the line into columns ({err}); "
                       f"no model input is that long: shorten or remove the line") from None


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
}
