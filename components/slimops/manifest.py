"""The step contract on disk: a model directory with ``manifest.json``, written atomically.

A manifest records the step, its resolved config, sha256 of every input and output file,
metrics, library versions and the parent manifest, so any model can be traced back to
its base model and the data it was checked on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import slimops
from slimops.errors import BadInput

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


MAX_MANIFEST_BYTES = 64 << 20


def read_manifest(model_dir: Path) -> dict | None:
    """The manifest in ``model_dir``, or None when there is none. A manifest is read from directories anyone may
    hand in: one that is not a JSON object exits 2 instead of crashing."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BadInput(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; it was not written by slimops")
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        raise BadInput(f"{path} is not valid JSON; remove it, or re-run the step that wrote the directory") from None
    if not isinstance(value, dict):
        raise BadInput(f"{path} is not a JSON object; remove it, or re-run the step that wrote the directory")
    return value


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities as null: the files slimops writes are strict JSON that any parser takes."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json_atomic(path: Path, value: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = json.dumps(strict_json(value), indent=2, sort_keys=False, default=str, allow_nan=False)
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no second copy of the weights), or a copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def written_by_slimops(out: Path) -> str | None:
    """None if ``out`` may be replaced by a new output; else why not.

    Only a directory slimops wrote may be replaced: one whose manifest lists every file in it, or an empty
    directory (orchestrators create output folders before the step). Anything else holds user files.
    """
    out = Path(out)
    if not os.path.lexists(out):
        return None
    if out.is_symlink():
        return "is a symbolic link"
    if not out.is_dir():
        return "is a file"
    entries = list(out.iterdir())
    if not entries:
        return None
    try:
        manifest = read_manifest(out)
    except BadInput:
        manifest = None
    if not manifest or not isinstance(manifest.get("outputs"), dict) or "step" not in manifest:
        return "is a directory slimops did not write (no slimops manifest.json)"
    listed = set(manifest["outputs"]) | {MANIFEST}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if path.is_symlink() or (path.is_file() and rel not in listed):
            return f"holds {rel[:80]!r}, which slimops did not write"
    return None


def within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both already resolved)."""
    return os.path.commonpath([path, folder]) == folder


def check_out(out: Path, inputs: dict[str, Path], data: list[Path] = ()) -> None:
    """Refuse an OUT that would lose user files: one that is, contains or sits inside an input (after resolving
    links), contains a data file, or exists and was not written by slimops. Raises BadInput."""
    out_real = os.path.realpath(out)
    for name, path in inputs.items():
        real = os.path.realpath(path)
        if within(out_real, real):
            raise BadInput(f"--out {out} is inside the input {name} {path}; write the output somewhere else")
        if within(real, out_real):
            raise BadInput(f"--out {out} contains the input {name} {path}; replacing it would delete the input, "
                           "write the output somewhere else")
    for path in data:
        if within(os.path.realpath(path), out_real):
            raise BadInput(f"--out {out} contains the data file {path}; write the output somewhere else")
    why = written_by_slimops(out)
    if why:
        raise BadInput(f"--out {out} {why}; slimops replaces only its own outputs, choose a new OUT or remove it")


@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold ``.OUT.lock`` beside ``out`` for as long as one process writes it. A second writer exits 2 at once,
    naming the pid that holds it, instead of deleting the first one's temporary directory mid-write."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_name(f".{out.name}.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BadInput(f"{out} is in use by pid {holder} (another slimops step or run writes it); wait for it "
                           "to finish or choose another OUT") from None
        try:  # the holder before us may have removed the file after we opened it: lock the live one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; rename it into place only if the block succeeds.

    A step killed mid-write leaves only a ``.out.tmp-*`` directory, never a partial ``out``; the next run
    removes such leftovers before it starts. Only one process writes ``out`` at a time (``out_lock``), and
    only an ``out`` that slimops wrote is ever replaced (``written_by_slimops``).
    """
    out = Path(out).absolute()
    with out_lock(out):
        why = written_by_slimops(out)
        if why:
            raise BadInput(f"--out {out} {why}; slimops replaces only its own outputs, choose a new OUT or remove it")
        clean_stale_temps(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        tmp.chmod(0o755)  # mkdtemp makes 0700; a model directory is read by servers and containers as other users
        try:
            yield tmp
            _readable_by_all(tmp)
            if os.path.lexists(out):
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


@contextlib.contextmanager
def scratch_dir(out: Path) -> Iterator[Path]:
    """A private working folder beside ``out`` for files a library insists on writing next to its input (ONNX
    Runtime's quantizer writes ``<model>-inferred.onnx``): steps never write into their input, which
    orchestrators mount read-only. Removed afterwards; a killed step's is removed with the other leftovers."""
    out = Path(out).absolute()
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-work-", dir=out.parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
