"""examples/digits-full.yaml: train -> prune -> export -> static INT8 -> pack -> validate, as a user runs it."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLES, run_cli


@pytest.mark.slow
def test_digits_full_chain_packs_small_and_keeps_accuracy(tmp_path):
    run_dir = tmp_path / "run"
    done = run_cli("run", EXAMPLES / "digits-full.yaml", "--out", run_dir, timeout=1800)  # trains: slow when busy
    summary = json.loads((run_dir / "run.json").read_text())
    assert [s["id"] for s in summary["steps"]] == ["train", "prune", "export", "quantize", "pack", "validate"]
    report = json.loads((run_dir / "steps" / "validate" / "gate_report.json").read_text())
    metrics = report["metrics"]
    # Size and accuracy do not depend on machine load; the verdict's speed check may (a busy machine makes it
    # inconclusive), so it must only agree with the exit code.
    assert metrics["size_ratio"] <= 0.1, metrics["size_ratio"]
    assert metrics["metric_drop"] <= 1.0, metrics["metric_drop"]
    assert done.returncode == {"pass": 0, "fail": 3, "inconclusive": 4}[report["verdict"]], done.stderr
    assert (run_dir / "steps" / "validate" / "model.onnx.zst").is_file()
    assert "sparsity" in (run_dir / "report.md").read_text()
