"""The bounded YAML parse, measured: a bomb is refused in under 2 s and under 200 MB (peak RSS of a fresh process).

Unbounded, the "billion laughs" recipe below grows past 3 GB before anything fails; the corpus (cases_bombs.py)
checks each bomb through the CLI, this file measures the parse itself and the whole CLI process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .cases_bombs import RECIPE_HEAD, _flow_laughs, _laughs

MAX_SECONDS = 2.0
MAX_PEAK_MB = 200

# Peak memory is the process's VmHWM: a fresh exec starts a fresh count (ru_maxrss would carry over the size of the
# pytest process that forked it).
PEAK = r"""
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

PARSE = PEAK + r"""
import json, sys, time
from slimops.errors import BadInput
from slimops.yamlsafe import load_yaml_file

start = time.perf_counter()
try:
    load_yaml_file(sys.argv[1], "recipe")
    outcome = "loaded"
except BadInput as err:
    outcome = str(err)
print(json.dumps({"seconds": time.perf_counter() - start, "outcome": outcome, "peak_mb": peak_mb()}))
"""

# The CLI as `slimops` runs it (main() with its imports), in one fresh process whose peak is measured.
CLI = PEAK + r"""
import contextlib, io, json, sys, time

start = time.perf_counter()
from slimops.cli import main

err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = main(sys.argv[1:])
print(json.dumps({"seconds": time.perf_counter() - start, "code": code, "stderr": err.getvalue(),
                  "peak_mb": peak_mb()}))
"""

BOMBS = {
    "billion-laughs": _laughs(),  # 9^9 = 387M values through aliases
    "billion-laughs-wider": _laughs(levels=12, width=30),
    "flow-laughs": "x: " + _flow_laughs() + "\n",
    "recursive-alias": "a: &a [1, *a]\n",
    "deep-flow-nesting": "a: " + "[" * 500_000 + "]" * 500_000 + "\n",
    "many-values": "a: [" + "1," * 1_500_000 + "1]\n",
}


def _measure(script: str, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", BOMBS)
def test_bounded_parse_is_fast_and_small(name, tmp_path):
    path = tmp_path / f"{name}.yaml"
    path.write_text(BOMBS[name])
    result = _measure(PARSE, path)
    print(name, json.dumps(result))
    assert result["outcome"] != "loaded", f"{name} was loaded"
    assert str(path) in result["outcome"]
    assert result["seconds"] < MAX_SECONDS, result
    assert result["peak_mb"] < MAX_PEAK_MB, result


def test_an_ordinary_recipe_still_loads(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE_HEAD + "description: &d plain\nx: [*d, *d]\n")
    assert _measure(PARSE, path)["outcome"] == "loaded"


@pytest.mark.parametrize("how", ["run", "config"])
def test_cli_refuses_the_bomb_quickly(how, tmp_path):
    """The whole CLI process (interpreter, imports, parse) on the billion-laughs file: exit 2, one line."""
    path = tmp_path / "bomb.yaml"
    if how == "run":
        path.write_text(RECIPE_HEAD + _laughs())
        argv = ["run", path, "--out", tmp_path / "run"]
    else:
        path.write_text(_laughs())
        argv = ["step", "export", "--model", tmp_path, "--out", tmp_path / "out", "--config", path]
    result = _measure(CLI, *argv)
    print(how, json.dumps({k: v for k, v in result.items() if k != "stderr"}))
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 2 and len(lines) == 1 and "aliases" in lines[0], result["stderr"]
    assert result["seconds"] < 10, result
    assert result["peak_mb"] < 500, result  # the interpreter with slimops' imports; unbounded: > 3 GB
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["bomb.yaml"]
