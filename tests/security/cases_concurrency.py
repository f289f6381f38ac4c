"""Class 7: one writer per OUT. A second step or run on an OUT in use exits 2 naming the pid that holds it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .corpus import Case, Invocation, copy_model

HOLD = """
import sys, time
from pathlib import Path
from slimops.manifest import out_lock
with out_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _held(out: Path, seconds: float = 120) -> subprocess.Popen:
    """Another process writing ``out`` (holding its lock) for a while; the case ends it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _step_while_held(work: Path, bases) -> Invocation:
    model = copy_model(bases.get("digits_onnx"), work / "model")
    holder = _held(work / "out")
    return Invocation(["step", "quantize", "--model", model, "--out", work / "out"], out=work / "out",
                      watch=[model], stderr_has=f"pid {holder.pid}", cleanup=holder.kill)


def _run_while_held(work: Path, bases) -> Invocation:
    model = copy_model(bases.get("digits_onnx"), work / "model")
    recipe = work / "recipe.yaml"
    recipe.write_text("name: r\nmodel: {path: model}\nsteps:\n  - step: quantize\n")
    holder = _held(work / "run")
    return Invocation(["run", recipe, "--out", work / "run"], out=work / "run", watch=[model, recipe],
                      stderr_has=f"pid {holder.pid}", cleanup=holder.kill)


def _source_while_held(work: Path, bases) -> Invocation:
    holder = _held(work / "src")
    return Invocation(["source", "--out", work / "src", "--set", "factory=slimops.zoo.digits:DigitsCNN",
                       "--set", "input_shape=[1,8,8]"], out=work / "src", stderr_has="in use", cleanup=holder.kill)


def cases() -> list[Case]:
    return [
        Case("concurrency/step-on-out-in-use", _step_while_held),
        Case("concurrency/run-on-run-dir-in-use", _run_while_held),
        Case("concurrency/source-on-out-in-use", _source_while_held),
    ]
