"""Class 2: files outside the model directory never leak through links, and special files are refused."""

from __future__ import annotations

import os
from pathlib import Path

from .corpus import Case, Invocation, copy_model

DIGITS_TEST = '{"format": "digits", "split": "test", "limit": 40}'
FAST = ["--set", "rounds=1", "--set", "latency_runs=5", "--set", "measure_memory=false",
        "--set", "throughput_samples=16", "--set", "gate.min_speedup=null"]


def _secret(work: Path) -> Path:
    secret = work / "home" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("api-key=hunter2\n")
    secret.chmod(0o600)
    return secret


def _argv(step: str, model: Path, work: Path, bases) -> list:
    argv = ["step", step, "--model", model, "--out", work / "out"]
    if step == "validate":
        argv += ["--baseline", bases.get("digits_onnx"), "--set", f"data={DIGITS_TEST}", *FAST]
    if step == "register":
        argv += ["--set", "name=digits", "--set", f"registry_dir={work / 'registry'}"]
    return argv


def _link(base: str, name: str, target, step: str = "quantize"):
    """``name`` inside a copy of ``base`` links to ``target(work)``."""
    def build(work: Path, bases) -> Invocation:
        model = copy_model(bases.get(base), work / "model")
        path = model / name
        path.parent.mkdir(parents=True, exist_ok=True)
        where = target(work, model)
        if path.exists() or path.is_symlink():
            path.unlink()
        os.symlink(where, path)
        return Invocation(_argv(step, model, work, bases), out=work / "out", watch=[model, work / "home"],
                          canary=work / "registry", stderr_has=name.split("/")[-1])
    return build


def _outside_copy(work: Path, model: Path) -> Path:
    """A real model file outside the directory (what a linked model.onnx would leak)."""
    outside = work / "home" / "model.onnx"
    outside.parent.mkdir(exist_ok=True)
    outside.write_bytes((model / "model.onnx").read_bytes())
    return outside


def _fifo(name: str, base: str = "digits_onnx", step: str = "quantize"):
    def build(work: Path, bases) -> Invocation:
        model = copy_model(bases.get(base), work / "model")
        (model / name).unlink(missing_ok=True)
        os.mkfifo(model / name)  # a reader would block forever
        return Invocation(_argv(step, model, work, bases), out=work / "out", watch=[model], timeout=60,
                          stderr_has=name)
    return build


def _baseline_link(work: Path, bases) -> Invocation:
    baseline = copy_model(bases.get("digits_onnx"), work / "baseline")
    os.symlink(_secret(work), baseline / "notes.txt")
    model = bases.get("digits_int8")
    return Invocation(["step", "validate", "--model", model, "--baseline", baseline, "--out", work / "out",
                       "--set", f"data={DIGITS_TEST}", *FAST], out=work / "out", watch=[baseline, model, work / "home"],
                      stderr_has="notes.txt")


def cases() -> list[Case]:
    secret = lambda work, model: _secret(work)  # noqa: E731
    return [
        Case("links/notes-outside-quantize", _link("digits_onnx", "notes.txt", secret)),
        Case("links/notes-outside-validate", _link("digits_int8", "notes.txt", secret, step="validate")),
        Case("links/notes-outside-register", _link("digits_validated", "notes.txt", secret, step="register")),
        Case("links/notes-outside-export", _link("digits_trained", "notes.txt", secret, step="export")),
        Case("links/notes-outside-relative", _link("digits_onnx", "notes.txt",
                                                   lambda work, model: os.path.relpath(_secret(work), model))),
        Case("links/notes-outside-in-subfolder", _link("digits_onnx", "extra/deep/notes.txt", secret)),
        Case("links/model-onnx-outside", _link("digits_onnx", "model.onnx", lambda work, model: _outside_copy(work, model))),
        Case("links/etc-passwd", _link("digits_onnx", "passwd", lambda work, model: "/etc/passwd")),
        Case("links/proc-self-environ", _link("digits_onnx", "environ", lambda work, model: "/proc/self/environ")),
        Case("links/folder-inside", _link("digits_onnx", "again", lambda work, model: model)),
        Case("links/folder-outside", _link("digits_onnx", "home", lambda work, model: _secret(work).parent)),
        Case("links/broken", _link("digits_onnx", "dangling.txt", lambda work, model: work / "nothing-here")),
        Case("links/tokenizer-outside", _link("minilm_path", "tokenizer.json", secret, step="export")),
        Case("links/safetensors-outside", _link("digits_trained", "model.safetensors",
                                                lambda work, model: "/dev/zero", step="export")),
        Case("links/baseline-notes-outside", _baseline_link),
        Case("links/fifo-model-onnx", _fifo("model.onnx")),
        Case("links/fifo-notes", _fifo("notes.txt")),
        Case("links/fifo-architecture", _fifo("architecture.json", base="digits_trained", step="export")),
    ]
