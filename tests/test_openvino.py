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


def test_fp32_ir_runs_f32_on_every_cpu(digits_onnx, tmp_path):
    """The default hint is bf16 on AVX512-BF16 / AMX CPUs: slimops asks for f32 and the compiled model says so."""
    out = tmp_path / "ir"
    manifest = run_step("compile", digits_onnx, out, {"target": "openvino"})
    assert manifest["details"]["precision"] == "fp32"
    assert manifest["details"]["precision_ran"] == "fp32"
    model = load(out)
    assert model.precision_ran == "fp32"
    assert model.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"


def test_bf16_is_a_mode_and_the_precision_that_ran_is_recorded(digits_onnx, tmp_path):
    from slimops.hardware import detect

    out = tmp_path / "ir"
    manifest = run_step("compile", digits_onnx, out, {"target": "openvino", "precision": "bf16"})
    assert manifest["model"]["precision"] == "bf16"
    ran = manifest["details"]["precision_ran"]
    model = load(out)
    assert model.precision_ran == ran
    if detect().bf16:  # per CPU feature: bf16 arithmetic runs bf16, elsewhere OpenVINO falls back to f32
        assert ran == "bf16"
        batch = sample_batch(load(digits_onnx).info, 8)
        assert np.abs(model.predict(batch) - load(digits_onnx).predict(batch)).max() < 0.5  # close, not equal
    else:
        assert ran in ("fp32", "bf16")


def test_bf16_needs_openvino(digits_onnx, tmp_path):
    from slimops.errors import BadInput

    with pytest.raises(BadInput, match="bf16 is an OpenVINO mode"):
        run_step("compile", digits_onnx, tmp_path / "x", {"precision": "bf16"})


def test_validate_records_the_precision_that_ran(digits_onnx, digits_trained, tmp_path):
    ir = tmp_path / "ir"
    run_step("compile", digits_onnx, ir, {"target": "openvino"})
    manifest = run_step("validate", ir, tmp_path / "checked",
                        {"data": {"format": "digits", "split": "test", "limit": 50}, "rounds": 2,
                         "latency_runs": 5, "throughput_samples": 32, "measure_memory": False,
                         "gate": {"max_metric_drop": 5, "min_speedup": None}},
                        inputs={"baseline": digits_trained})
    assert manifest["metrics"]["candidate_precision"] == "fp32"
    assert manifest["metrics"]["baseline_precision"] == "fp32"
