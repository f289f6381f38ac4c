"""The step contract on disk: a model directory with ``manifest.json``, written atomically.

A manifest records the step, its resolved config, sha256 of every input and output file,
metrics, library versions and the parent manifest, so any model can be traced back to
its base model and the data it was checked on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import slimops

MANIFEST = "manifest.json"
_TRACKED_LIBRARIES = ("torch", "onnx", "onnxruntime", "transformers", "optimum", "optimum-onnx", "numpy")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path, skip: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """sha256 of every file under ``root`` (or of ``root`` itself when it is a file)."""
    root = Path(root)
    if root.is_file():
        return {root.name: sha256_file(root)}
    return {
        str(path.relative_to(root)): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in skip
    }


def digest_of(value: Any) -> str:
    """A stable hash of any JSON-serialisable value (config, file hashes, ...)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"slimops": slimops.__version__}
    for name in _TRACKED_LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def read_manifest(model_dir: Path) -> dict | None:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_json_atomic(path: Path, value: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; rename it into place only if the block succeeds.

    A step killed mid-write leaves only a ``.out.tmp-*`` directory, never a partial ``out``;
    the next run removes such leftovers before it starts.
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; a model directory is read by servers and containers as other users
    try:
        yield tmp
        _readable_by_all(tmp)
        if out.exists():
            # Replace a previous output only once the new one is complete.
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _readable_by_all(root: Path) -> None:
    # Some writers (safetensors' save_file) create files 0600; a model made by one user (root in a pipeline
    # step) must be readable by the next step's container user and by servers.
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o444)
        elif path.is_dir():
            path.chmod(path.stat().st_mode | 0o555)


def clean_stale_temps(out: Path) -> None:
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)
