"""compile target 'openvino': OpenVINO IR from the ONNX export, runnable and faithful to the source."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimops.core import run_step
from slimops.handlers import load
from slimops.handlers.runtime import sample_batch

pytest.importorskip("openvino", reason="the 'openvino' extra (pip install 'slimops[openvino]') is not installed")


def test_openvino_ir_matches_onnx_on_digits(digits_onnx, tmp_path):
    out = tmp_path / "ir"
    manifest = run_step("compile", digits_onnx, out, {"target": "openvino"})
    assert manifest["model"]["format"] == "openvino"
    assert (out / "model.xml").is_file() and (out / "model.bin").is_file()
    batch = sample_batch(load(digits_onnx).info, 8)
    np.testing.assert_allclose(load(out).predict(batch), load(digits_onnx).predict(batch), atol=1e-4)
    assert json.loads((out / "manifest.json").read_text())["details"]["openvino"]


def test_openvino_ir_validates_against_the_trained_baseline(digits_onnx, digits_trained, tmp_path):
    ir = tmp_path / "ir"
    run_step("compile", digits_onnx, ir, {"target": "openvino"})
    manifest = run_step("validate", ir, tmp_path / "checked",
                        {"data": {"format": "digits", "split": "test", "limit": 100}, "rounds": 2,
                         "latency_runs": 5, "throughput_samples": 64, "measure_memory": False,
                         "gate": {"max_metric_drop": 0.5, "min_speedup": None}},
                        inputs={"baseline": digits_trained})
    assert abs(manifest["metrics"]["metric_drop"]) <= 0.5
    assert manifest["metrics"]["candidate_size_mb"] > 0  # model.xml + model.bin are counted
