"""No string read from a model directory reaches importlib, and two writers never share an OUT."""

from __future__ import annotations

import builtins
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimops.errors import BadInput

MARK = "slimops_canary_module"


@pytest.fixture
def imports(monkeypatch):
    """Every module name asked of importlib.import_module or __import__ while the test runs."""
    seen: list[str] = []
    real_import_module, real_import = importlib.import_module, builtins.__import__

    def import_module(name, package=None):
        seen.append(name)
        return real_import_module(name, package)

    def dunder_import(name, *args, **kwargs):
        seen.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", import_module)
    monkeypatch.setattr(builtins, "__import__", dunder_import)
    return seen


def _hostile_torch_dir(base: Path, tmp_path: Path, where: str) -> Path:
    model = Path(shutil.copytree(base, tmp_path / "model"))
    spec = f"{MARK}.evil:build"
    if where == "architecture":
        (model / "manifest.json").unlink()
        arch = json.loads((model / "architecture.json").read_text())
        (model / "architecture.json").write_text(json.dumps({**arch, "factory": spec}))
    else:
        manifest = json.loads((model / "manifest.json").read_text())
        manifest["model"]["factory"] = spec
        (model / "manifest.json").write_text(json.dumps(manifest))
    return model


@pytest.mark.parametrize("where", ["architecture", "manifest"])
def test_a_factory_named_by_a_model_directory_is_never_imported(where, imports, digits_trained, tmp_path):
    from slimops.core import run_step
    from slimops.handlers import describe, load

    model = _hostile_torch_dir(digits_trained, tmp_path, where)
    for attempt in (lambda: describe(model), lambda: load(model),
                    lambda: run_step("export", model, tmp_path / "out", {})):
        with pytest.raises(BadInput, match="allowlist"):
            attempt()
    assert not [name for name in imports if MARK in name], "a name from the model directory reached importlib"
    assert MARK not in " ".join(sys.modules)
    assert not (tmp_path / "out").exists()


def test_an_allowed_factory_is_imported(digits_trained, tmp_path, monkeypatch):
    """The allowlist is the user's: an entry admits the factory (here slimops's own zoo, under another name)."""
    from slimops import factories
    from slimops.handlers import load

    model = Path(shutil.copytree(digits_trained, tmp_path / "model"))
    (model / "manifest.json").unlink()
    assert load(model).model is not None  # slimops.zoo is allowed by default
    monkeypatch.setattr(factories, "BUILTIN", ())
    with pytest.raises(BadInput, match="allow-factory slimops.zoo.digits"):
        load(model)
    monkeypatch.setenv(factories.ENV, "slimops.zoo.digits")
    assert load(model).model is not None


def _quantize(model: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slimops", "step", "quantize", "--model", str(model),
                             "--out", str(out), "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_steps_on_one_out_never_mix(digits_onnx, tmp_path):
    """Two `slimops step` on the same OUT at once: each either finishes or exits 2 saying the OUT is in use;
    the OUT left is one complete output (its manifest lists every file with its true hash)."""
    from slimops.manifest import hash_tree

    out = tmp_path / "out"
    for _ in range(3):
        first, second = _quantize(digits_onnx, out), _quantize(digits_onnx, out)
        results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
        for code, err in results:
            assert code == 0 or (code == 2 and "in use by pid" in err and len(err.strip().splitlines()) == 1), err
        assert any(code == 0 for code, _ in results)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["outputs"] == hash_tree(out)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]
