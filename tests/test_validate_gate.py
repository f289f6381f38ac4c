"""validate and its gate: exit 3 with a written report when the candidate fails, exit 0 when it passes."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import assert_outputs_match, run_cli, tmp_siblings, write_digits_recipe
from slimops.cli import main
from slimops.core import run_step

FAST = ["--set", "data.format=digits", "--set", "data.split=test", "--set", "measure_memory=false",
        "--set", "latency_runs=10", "--set", "rounds=5"]


@pytest.fixture(scope="module")
def digits_int8(tmp_path_factory, digits_onnx):
    out = tmp_path_factory.mktemp("int8") / "int8"
    run_step("quantize", digits_onnx, out, {"mode": "dynamic"})
    return out


def test_identical_models_fail_a_speedup_gate(tmp_path, capsys, digits_onnx):
    """A copy of the baseline is not faster than the baseline: min_speedup 3 must fail it.

    25 alternating rounds: the tiny model's single rounds swing 0.2x-5x on a loaded 2-core machine; their
    median stays near 1.0, though once went past 1.5 while other test runs shared the machine.
    """
    baseline = tmp_path / "baseline"
    shutil.copytree(digits_onnx, baseline)
    out = tmp_path / "validated"
    code = main(["step", "validate", "--model", str(digits_onnx), "--baseline", str(baseline), "--out", str(out),
                 *FAST, "--set", "rounds=25", "--set", "gate.min_speedup=3", "--set", "gate.max_metric_drop=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert err[-2].startswith("slimops: gate failed: speedup") and "is not >= 3" in err[-2]
    assert err[-1] == f"slimops: gate report: {out / 'gate_report.json'}"

    report = json.loads((out / "gate_report.json").read_text())
    assert report["passed"] is False
    assert len(report["reasons"]) == 1 and report["reasons"][0].startswith("speedup ")
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["speedup"]["passed"] is False and checks["speedup"]["limit"] == 3.0
    assert checks["metric_drop"]["passed"] is True and checks["metric_drop"]["value"] == 0  # same model, same outputs
    assert report["metrics"]["fidelity"] == 100.0
    assert report["metrics"]["size_ratio"] == pytest.approx(1.0)
    manifest = assert_outputs_match(out)  # the rejected candidate is kept, complete, with its verdict
    assert manifest["gate"] == {"passed": False, "reasons": report["reasons"], "verdict": "fail"}
    assert tmp_siblings(out) == []


def test_smaller_but_not_faster_fails(tmp_path, digits_onnx, digits_int8):
    """A gate asks for speed as well as size: passing the size rule does not rescue a slow candidate."""
    out = tmp_path / "validated"
    done = run_cli("step", "validate", "--model", digits_int8, "--baseline", digits_onnx, "--out", out, *FAST,
                   "--set", "gate.max_size_ratio=0.5", "--set", "gate.min_speedup=100", "--set",
                   "gate.max_metric_drop=5")
    assert done.returncode == 3, done.stderr
    report = json.loads((out / "gate_report.json").read_text())
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["size_ratio"]["passed"] is True and checks["size_ratio"]["value"] < 0.5
    assert checks["speedup"]["passed"] is False
    assert [r.split()[0] for r in report["reasons"]] == ["speedup"]
    assert "speedup" in done.stderr


def test_passing_gate_exits_zero(tmp_path, capsys, digits_onnx, digits_int8):
    out = tmp_path / "validated"
    code = main(["step", "validate", "--model", str(digits_int8), "--baseline", str(digits_onnx), "--out", str(out),
                 *FAST, "--set", "gate.max_metric_drop=2", "--set", "gate.min_speedup=null",
                 "--set", "gate.max_size_ratio=0.5", "--set", "gate.min_fidelity=95"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = json.loads(captured.out)
    report = json.loads((out / "gate_report.json").read_text())
    assert report["passed"] is True and report["reasons"] == []
    assert {c["check"] for c in report["checks"]} == {"metric_drop", "size_ratio", "fidelity"}  # null = rule off
    assert printed["metrics"]["metric_drop"] == report["metrics"]["metric_drop"] <= 2
    assert (out / "model.onnx").read_bytes() == (digits_int8 / "model.onnx").read_bytes()


def test_impossible_gate_on_a_recipe(tmp_path):
    """`slimops run` exits 3; report.md says FAILED and why; steps after the failed gate never run."""
    recipe = write_digits_recipe(tmp_path / "recipe.yaml", gate={"max_metric_drop": 5.0, "min_speedup": None,
                                                               "max_size_ratio": 0.001},
                                 extra_steps=[{"step": "compile"}])
    run_dir = tmp_path / "run"
    done = run_cli("run", recipe, "--out", run_dir)
    assert done.returncode == 3, done.stderr
    assert "gate FAILED" in done.stderr and "size_ratio" in done.stderr

    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["exit_code"] == 3
    assert summary["gate"]["passed"] is False and summary["gate"]["step"] == "validate"
    assert [s["id"] for s in summary["steps"]] == ["train", "export", "quantize", "validate"]  # no compile
    assert not (run_dir / "steps" / "compile").exists()
    md = (run_dir / "report.md").read_text()
    assert "**Gate: FAILED**" in md
    reason = next(line for line in md.splitlines() if line.startswith("- size_ratio"))
    assert "is not <= 0.001" in reason
    assert "| size_ratio |" in md and "| FAIL |" in md
    html = (run_dir / "report.html").read_text()
    assert "Gate: FAILED" in html and "size_ratio" in html
    gate_report = json.loads((run_dir / "steps" / "validate" / "gate_report.json").read_text())
    assert gate_report["passed"] is False

    # A cached failed gate is still a failed gate: rerunning does not turn it into a pass.
    assert main(["run", str(recipe), "--out", str(run_dir)]) == 3
    summary = json.loads((run_dir / "run.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["cached"] * 4
    assert summary["gate"]["passed"] is False and summary["exit_code"] == 3


def test_relative_metric_drop_and_latency_rules(tmp_path, capsys, digits_onnx, digits_int8):
    """Every rule the policy sets is checked and reported; a rule the model cannot meet names itself."""
    out = tmp_path / "validated"
    code = main(["step", "validate", "--model", str(digits_int8), "--baseline", str(digits_onnx), "--out", str(out),
                 *FAST, "--set", "gate.min_speedup=null", "--set", "gate.max_metric_drop=5",
                 "--set", "gate.max_relative_metric_drop=0.5",
                 "--set", "gate.max_p95_latency_ms=0.000001"])
    capsys.readouterr()
    assert code == 3
    report = json.loads((out / "gate_report.json").read_text())
    checks = {c["check"]: c["passed"] for c in report["checks"]}
    assert checks == {"metric_drop": True, "relative_metric_drop": True, "p95_latency_ms": False}
    assert report["reasons"][0].startswith("p95_latency_ms ")
