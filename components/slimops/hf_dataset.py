"""``format: hf-dataset``: a Hugging Face dataset saved with ``save_to_disk``, read with ``datasets.load_from_disk``.

The directory is read as a table of named columns, like Parquet (it is Arrow on disk), so ``columns:``, the common
column names, label2id and token data all work the same way. A ``DatasetDict`` (``dataset_dict.json`` with one
folder per split) needs ``split:`` unless it holds one split. Only a local directory is read: ``load_from_disk``
also takes fsspec URLs (s3://, hf://), which would reach the network, so a path is resolved and must be a folder
here, with no link leading out of it. ClassLabel columns hold class ids, which are the model's ids as the
transformers examples train them.
"""

from __future__ import annotations

import os
from pathlib import Path

from slimops.errors import BadInput

FORMAT = "hf-dataset"
DICT_FILE = "dataset_dict.json"
STATE_FILE = "state.json"


def check_directory(path: str | Path) -> Path:
    """The saved dataset's folder; BadInput when it is not a local save_to_disk folder."""
    if "://" in str(path):
        raise BadInput(f"hf-dataset path {path} is a URL; slimops reads only a local folder written by save_to_disk")
    path = Path(path)
    if not path.is_dir():
        raise BadInput(f"hf-dataset path {path} is not a directory; give the folder written by "
                       "Dataset.save_to_disk or DatasetDict.save_to_disk")
    from slimops.handlers.info import check_tree

    check_tree(path, "dataset folder")  # no link out of the folder, no FIFO: load_from_disk would follow or hang on them
    if not (path / STATE_FILE).is_file() and not (path / DICT_FILE).is_file():
        raise BadInput(f"{path} is not a saved Hugging Face dataset (no {STATE_FILE} or {DICT_FILE}); write it with "
                       "save_to_disk, or give the files with format csv, tsv, jsonl or parquet")
    return path


def fingerprint(path: str | Path) -> str:
    """One sha256 over every file in the folder (relative path and content), for the manifest and the step cache."""
    from slimops.manifest import digest_of, hash_tree

    return digest_of(hash_tree(check_directory(path), skip=()))


def split_folder(path: Path, split: str | None) -> tuple[Path, str]:
    """The folder of one Dataset: ``path`` itself, or a DatasetDict's split (``split``, or its only one)."""
    from slimops.formats import load_json_file

    if not (path / DICT_FILE).is_file():
        if split is not None:
            raise BadInput(f"{path} is one Dataset, not a DatasetDict: it has no splits; remove split:")
        return path, str(path)
    listed = load_json_file(path / DICT_FILE)
    splits = listed.get("splits") if isinstance(listed, dict) else None
    if not isinstance(splits, list) or not all(isinstance(name, str) for name in splits):
        raise BadInput(f"{path / DICT_FILE} does not list the splits; write the dataset again with save_to_disk")
    shown = ", ".join(splits) or "none"
    if not splits:
        raise BadInput(f"{path} is a DatasetDict with no splits; save a dataset with data")
    if split is None and len(splits) > 1:
        raise BadInput(f"{path} holds the splits {shown}; choose one with split: (e.g. split: {splits[-1]})")
    name = split or splits[0]
    if name not in splits:
        raise BadInput(f"{path} has no split {name!r}; its splits are {shown}")
    folder = path / name
    if Path(name).name != name or not (folder / STATE_FILE).is_file():
        raise BadInput(f"{path}: split {name!r} has no folder with {STATE_FILE}; write the dataset again with save_to_disk")
    return folder, f"{path} [{name}]"


def read_table(spec):
    """The chosen split as a pyarrow Table (at most ``spec.limit`` rows), and how to name it in messages."""
    from slimops.formats import load_json_file, one_line

    folder, where = split_folder(check_directory(spec.path), spec.split)
    state = load_json_file(folder / STATE_FILE)
    files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("filename"), str) for f in files):
        raise BadInput(f"{folder / STATE_FILE} does not list the data files; write the dataset again with save_to_disk")
    if any(Path(f["filename"]).name != f["filename"] for f in files):
        raise BadInput(f"{folder / STATE_FILE} names a data file outside its folder; write the dataset again with save_to_disk")
    if not files:
        raise BadInput(f"{where} is an empty split (0 rows); give a split with data")
    try:
        import datasets
    except ImportError:
        raise BadInput("format 'hf-dataset' needs the datasets library: pip install 'slimops[datasets]'") from None
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_from_disk(str(folder), keep_in_memory=False)
    except Exception as err:  # noqa: BLE001 - datasets raises FileNotFoundError, ValueError, ArrowInvalid, ...
        raise BadInput(f"datasets cannot load {where} ({type(err).__name__}: {one_line(err, 160)}); write it again "
                       "with save_to_disk") from None
    if len(loaded) == 0:
        raise BadInput(f"{where} is an empty split (0 rows); give a split with data")
    return loaded.with_format("arrow")[: spec.limit or len(loaded)], where
