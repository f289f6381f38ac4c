"""Class: a saved Hugging Face dataset folder (format hf-dataset) is data, not trusted: links out of it, special
files, a state.json naming files elsewhere, corrupt Arrow shards and URLs are refused in one line, before any read."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .corpus import Case, Invocation

FAST = ["--set", "rounds=1", "--set", "latency_runs=5", "--set", "measure_memory=false",
        "--set", "throughput_samples=16", "--set", "gate.min_speedup=null"]


def _saved(work: Path) -> Path:
    from datasets import Dataset

    folder = work / "data" / "pairs"
    Dataset.from_dict({"sentence1": ["A man plays."], "sentence2": ["Someone plays."], "label": [1]}).save_to_disk(folder)
    return folder


def _validate(tamper, stderr_has: str, path=None):
    """validate with ``format: hf-dataset`` on a saved folder that ``tamper(folder, work)`` changed."""
    def build(work: Path, bases) -> Invocation:
        folder = _saved(work)
        tamper(folder, work)
        spec = json.dumps({"format": "hf-dataset", "path": str(path(folder) if callable(path) else path or folder)})
        argv = ["step", "validate", "--model", bases.get("digits_int8"), "--baseline", bases.get("digits_onnx"),
                "--out", work / "out", "--set", f"data={spec}", *FAST]
        return Invocation(argv, out=work / "out", watch=[work / "data"], stderr_has=stderr_has, timeout=60)
    return build


def _secret(work: Path) -> Path:
    secret = work / "data" / "secret.txt"
    secret.write_text("api-key=hunter2\n")
    return secret


def _link_out(folder: Path, work: Path) -> None:
    os.symlink(_secret(work), folder / "notes.txt")


def _fifo(folder: Path, work: Path) -> None:
    os.mkfifo(folder / "data-00001-of-00002.arrow")  # a reader would block forever


def _state_names(filename: str):
    def tamper(folder: Path, work: Path) -> None:
        _secret(work)
        state = json.loads((folder / "state.json").read_text())
        state["_data_files"] = [{"filename": filename}]
        (folder / "state.json").write_text(json.dumps(state))
    return tamper


def _corrupt_shard(folder: Path, work: Path) -> None:
    shard = next(folder.glob("*.arrow"))
    shard.write_bytes(b"\xff" * 64)


def _split_escapes(folder: Path, work: Path) -> None:
    (folder.parent / "dict").mkdir()
    (folder.parent / "dict" / "dataset_dict.json").write_text(json.dumps({"splits": ["../pairs"]}))


def cases() -> list[Case]:
    return [
        Case("data/hf-dataset-link-outside", _validate(_link_out, "links outside the dataset folder")),
        Case("data/hf-dataset-fifo-shard", _validate(_fifo, "not a regular file")),
        Case("data/hf-dataset-state-names-parent", _validate(_state_names("../secret.txt"), "outside its folder")),
        Case("data/hf-dataset-state-names-absolute", _validate(_state_names("/etc/passwd"), "outside its folder")),
        Case("data/hf-dataset-corrupt-shard", _validate(_corrupt_shard, "datasets cannot load")),
        Case("data/hf-dataset-url", _validate(lambda folder, work: None, "is a URL", path="s3://bucket/pairs")),
        Case("data/hf-dataset-split-escapes", _validate(_split_escapes, "has no folder with state.json",
                                                        path=lambda folder: folder.parent / "dict")),
    ]
