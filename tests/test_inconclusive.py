"""An inconclusive gate is retried, never promoted: ``slimops step --retry-inconclusive N --retry-backoff S
--retry-factor F`` (the retry inside the container, for SageMaker and Azure ML, whose retry settings cannot see
exit 4) and ``slimops run`` share one loop (``slimops.retry.run_retrying``).

The inconclusive verdicts are real: the gate option ``max_timing_spread: 0`` (no timing is steady enough) makes
every validate run inconclusive. A verdict (pass or fail) is never rerun, and bad retry options are bad input.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import assert_bad_input, run_cli, write_digits_recipe

QUICK = ["--set", "data.format=digits", "--set", "data.split=test", "--set", "data.limit=200", "--set", "rounds=4",
         "--set", "latency_runs=5", "--set", "throughput_samples=64", "--set", "measure_memory=false",
         "--threads", "1"]


def validate(digits_onnx: Path, digits_trained: Path, out: Path, *options) -> tuple[int, list[str], float]:
    started = time.perf_counter()
    done = run_cli("step", "validate", "--model", digits_onnx, "--baseline", digits_trained, "--out", out, *QUICK,
                   *options)
    return done.returncode, done.stderr.strip().splitlines(), time.perf_counter() - started


def test_an_inconclusive_gate_is_rerun_after_each_backoff_then_exits_4(tmp_path, digits_onnx, digits_trained):
    out = tmp_path / "validated"
    code, stderr, seconds = validate(digits_onnx, digits_trained, out, "--set", "gate.max_timing_spread=0",
                                     "--set", "gate.min_speedup=0.01", "--on-gate-fail", "continue",
                                     "--gate-output", tmp_path / "passed", "--retry-inconclusive", "2",
                                     "--retry-backoff", "1", "--retry-factor", "3")
    # Not a verdict: exit 4 even with --on-gate-fail continue, after two reruns, waiting 1 s then 3 s.
    assert code == 4, stderr
    notes = [line for line in stderr if "attempt" in line]
    assert len(notes) == 2 and notes[0].endswith("attempt 2 of 3 in 1 s") and notes[1].endswith("attempt 3 of 3 in 3 s")
    assert all(line.startswith("slimops: gate inconclusive (") for line in notes), notes
    assert seconds >= 4
    assert stderr[-2].startswith("slimops: gate inconclusive:") and stderr[-1].startswith("slimops: gate report:")
    report = json.loads((out / "gate_report.json").read_text())
    assert report["passed"] is False and report["verdict"] == "inconclusive"
    assert json.loads((out / "manifest.json").read_text())["gate"]["verdict"] == "inconclusive"


def test_without_retries_an_inconclusive_gate_runs_once(tmp_path, digits_onnx, digits_trained):
    code, stderr, _ = validate(digits_onnx, digits_trained, tmp_path / "once", "--set", "gate.max_timing_spread=0",
                               "--set", "gate.min_speedup=0.01")
    assert code == 4 and not [line for line in stderr if "attempt" in line], stderr


@pytest.mark.parametrize("gate, code", [({"max_metric_drop": 100.0, "min_speedup": None}, 0),
                                        ({"max_size_ratio": 0.01, "min_speedup": None}, 3)])
def test_a_verdict_is_never_rerun(tmp_path, digits_onnx, digits_trained, gate, code):
    """Pass or fail, the gate decided: --retry-inconclusive changes nothing (and waits for nothing)."""
    options = [f"gate.{key}={json.dumps(value)}" for key, value in gate.items()]
    code_, stderr, _ = validate(digits_onnx, digits_trained, tmp_path / "decided",
                                *[arg for option in options for arg in ("--set", option)],
                                "--retry-inconclusive", "3", "--retry-backoff", "600")
    assert code_ == code, stderr
    assert not [line for line in stderr if "attempt" in line], stderr


@pytest.mark.parametrize("option, value, says", [
    ("--retry-inconclusive", "21", "less than or equal to 20"),
    ("--retry-inconclusive", "-1", "greater than or equal to 0"),
    ("--retry-backoff", "nan", "--retry-backoff nan"),
    ("--retry-backoff", "3601", "less than or equal to 3600"),
    ("--retry-factor", "0.5", "greater than or equal to 1"),
    ("--retry-inconclusive", "two", "invalid int value"),
])
def test_bad_retry_options_are_bad_input(tmp_path, digits_onnx, digits_trained, option, value, says):
    """The bounds of a recipe's retry_inconclusive, checked before anything runs: exit 2, one line, nothing written."""
    out = tmp_path / "never"
    done = run_cli("step", "validate", "--model", digits_onnx, "--baseline", digits_trained, "--out", out, *QUICK,
                   option, value)
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert says in line and option in line, line
