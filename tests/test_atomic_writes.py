"""A step killed mid-write leaves no partial output; rerunning it completes and cleans up.

Orchestrators kill pods and retry: an output directory that exists must always be complete,
because the next step (and the runner's cache) trusts whatever it finds there.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_outputs_match, cli_env, run_cli, tmp_siblings


def start_step(model: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slimops", "step", "quantize", "--model", str(model),
                             "--out", str(out), "--set", "mode=dynamic"],
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_mid_write(model: Path, out: Path) -> list[Path]:
    """Start the step, SIGKILL it once its temporary sibling of OUT exists; return the leftovers."""
    before = set(tmp_siblings(out))
    proc = start_step(model, out)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            fresh = [p for p in tmp_siblings(out) if p.name.startswith(f".{out.name}.tmp-") and p not in before]
            if fresh:
                time.sleep(0.3)  # let it write into the temporary directory for a moment
                break
            if proc.poll() is not None:
                pytest.fail(f"the step finished (exit {proc.returncode}) before its temporary directory was seen")
            time.sleep(0.02)
        else:
            pytest.fail("no temporary directory appeared next to OUT within 120 s")
        assert proc.poll() is None, "the step finished before it could be killed; the kill window was missed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return [p for p in tmp_siblings(out) if p not in before]


def test_kill_mid_write_leaves_no_output_and_rerun_completes(tmp_path, minilm_onnx):
    """Quantizing MiniLM takes seconds: long enough to SIGKILL the step while it writes."""
    out = tmp_path / "quantized"
    leftovers = kill_mid_write(minilm_onnx, out)
    assert not out.exists(), "a killed step left a (partial) output directory"
    assert leftovers and all(p.name.startswith(".quantized.tmp-") for p in leftovers), \
        "the step was not killed while writing its temporary directory"

    done = run_cli("step", "quantize", "--model", minilm_onnx, "--out", out, "--set", "mode=dynamic")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["out"] == str(out.absolute())
    manifest = assert_outputs_match(out)
    assert {"model.onnx", "tokenizer.json", "config.json"} <= set(manifest["outputs"])
    assert tmp_siblings(out) == [], "the rerun did not remove the killed run's temporary directory"


def test_kill_while_replacing_keeps_the_previous_output(tmp_path, digits_onnx, minilm_onnx):
    """Rerunning into an existing OUT and dying must leave the old, complete OUT in place."""
    out = tmp_path / "quantized"
    done = run_cli("step", "quantize", "--model", digits_onnx, "--out", out, "--set", "mode=dynamic")
    assert done.returncode == 0, done.stderr
    previous = assert_outputs_match(out)

    kill_mid_write(minilm_onnx, out)
    assert out.is_dir(), "the previous output vanished when a replacing run was killed"
    assert assert_outputs_match(out) == previous
