"""Class 3: no user file is ever lost. OUT may only replace a directory slimops wrote; it may never be, contain
or sit inside an input."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .corpus import Case, Invocation, copy_model


def _quantize(out_of, cwd_of=None, model_of=None, extra=()):
    """``slimops step quantize`` on a copy of the digits ONNX model with OUT = out_of(work, model)."""
    def build(work: Path, bases) -> Invocation:
        model = copy_model(bases.get("digits_onnx"), work / "models" / "model")
        (work / "models" / "keep.txt").write_text("user file\n")
        (work / "notes.txt").write_text("user file\n")
        out = out_of(work, model)
        given = model_of(work, model) if model_of else model
        return Invocation(["step", "quantize", "--model", given, "--out", out, *extra],
                          cwd=cwd_of(work, model) if cwd_of else work,
                          out=out if os.path.isabs(str(out)) and str(out) != "/" else None,
                          watch=[work / "models", work / "notes.txt"])
    return build


def _foreign(kind: str):
    """OUT exists and slimops did not write it (or a user added to it)."""
    def out_of(work: Path, model: Path) -> Path:
        out = work / "out"
        if kind == "file":
            out.write_text("user file\n")
        elif kind == "dir":
            out.mkdir()
            (out / "thesis.tex").write_text("user file\n")
        elif kind == "fake-manifest":
            out.mkdir()
            (out / "manifest.json").write_text(json.dumps({"step": "quantize", "outputs": {}}))
            (out / "thesis.tex").write_text("user file\n")
        elif kind == "slimops-plus-user-file":
            copy_model(model, out)
            (out / "thesis.tex").write_text("user file\n")
        elif kind == "slimops-plus-user-folder":
            copy_model(model, out)
            (out / "drafts").mkdir()
            (out / "drafts" / "a.txt").write_text("user file\n")
        elif kind == "bad-manifest":
            out.mkdir()
            (out / "manifest.json").write_text("{not json")
        elif kind == "symlink-to-dir":
            (work / "elsewhere").mkdir()
            (work / "elsewhere" / "data.txt").write_text("user file\n")
            os.symlink(work / "elsewhere", out)
        return out
    return out_of


def _run_out(kind: str):
    def build(work: Path, bases) -> Invocation:
        model = copy_model(bases.get("digits_onnx"), work / "model")
        recipe = work / "recipe.yaml"
        recipe.write_text("name: r\nmodel: {path: model}\nsteps:\n  - step: quantize\n")
        run_dir = work / "run"
        if kind == "user-files":
            run_dir.mkdir()
            (run_dir / "thesis.tex").write_text("user file\n")
        elif kind == "file":
            run_dir.write_text("user file\n")
        elif kind == "recipe-dir":
            run_dir = work
        return Invocation(["run", recipe, "--out", run_dir], out=run_dir, watch=[model, recipe])
    return build


def _source_out(work: Path, bases) -> Invocation:
    out = work / "src"
    out.mkdir()
    (out / "thesis.tex").write_text("user file\n")
    return Invocation(["source", "--out", out, "--set", "factory=slimops.zoo.digits:DigitsCNN",
                       "--set", "input_shape=[1,8,8]"], out=out)


def _validate_out_contains_baseline(work: Path, bases) -> Invocation:
    baseline = copy_model(bases.get("digits_onnx"), work / "parent" / "baseline")
    return Invocation(["step", "validate", "--model", bases.get("digits_int8"), "--baseline", baseline,
                       "--out", work / "parent", "--set", 'data={"format": "digits", "split": "test", "limit": 20}'],
                      out=work / "parent", watch=[baseline])


def _out_contains_data(work: Path, bases) -> Invocation:
    import numpy as np

    out = work / "out"
    out.mkdir()
    np.savez(out / "cal.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(4, np.int64))
    model = copy_model(bases.get("digits_onnx"), work / "model")
    return Invocation(["step", "quantize", "--model", model, "--out", out, "--set", "mode=static",
                       "--set", f'calibration={{"format": "npz", "path": "{out / "cal.npz"}"}}'],
                      out=out, watch=[model])


def cases() -> list[Case]:
    return [
        Case("out/dot-is-parent-of-input", _quantize(lambda w, m: ".", cwd_of=lambda w, m: w / "models")),
        Case("out/dot-is-input", _quantize(lambda w, m: ".", cwd_of=lambda w, m: m)),
        Case("out/is-input", _quantize(lambda w, m: m)),
        Case("out/inside-input", _quantize(lambda w, m: m / "quantized")),
        Case("out/deep-inside-input", _quantize(lambda w, m: m / "a" / "b")),
        Case("out/parent-of-input", _quantize(lambda w, m: m.parent)),
        Case("out/grandparent-of-input", _quantize(lambda w, m: w)),
        Case("out/root", _quantize(lambda w, m: Path("/"))),
        Case("out/input-via-link-out-is-real-parent", _quantize(
            lambda w, m: m.parent, model_of=lambda w, m: (os.symlink(m, w / "link"), w / "link")[1])),
        Case("out/is-link-to-input", _quantize(lambda w, m: (os.symlink(m, w / "out"), w / "out")[1])),
        Case("out/dotdot-path-to-input", _quantize(lambda w, m: m / ".." / "model")),
        Case("out/existing-file", _quantize(_foreign("file"))),
        Case("out/existing-foreign-dir", _quantize(_foreign("dir"))),
        Case("out/fake-manifest-with-user-file", _quantize(_foreign("fake-manifest"))),
        Case("out/slimops-output-plus-user-file", _quantize(_foreign("slimops-plus-user-file"))),
        Case("out/slimops-output-plus-user-folder", _quantize(_foreign("slimops-plus-user-folder"))),
        Case("out/unreadable-manifest", _quantize(_foreign("bad-manifest"))),
        Case("out/symlink-to-user-dir", _quantize(_foreign("symlink-to-dir"))),
        Case("out/run-dir-with-user-files", _run_out("user-files")),
        Case("out/run-dir-is-a-file", _run_out("file")),
        Case("out/run-dir-holds-the-recipe", _run_out("recipe-dir")),
        Case("out/source-into-user-dir", _source_out),
        Case("out/validate-out-contains-baseline", _validate_out_contains_baseline),
        Case("out/out-contains-calibration-data", _out_contains_data),
    ]
