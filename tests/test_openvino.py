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


def test_slimops_serve_runs_an_openvino_ir(digits_onnx, tmp_path):
    """The IR compile keeps is served by `slimops serve` on the OpenVINO runtime, with the ONNX model's answers."""
    from test_serve import digits_request, infer, server

    ir = tmp_path / "ir"
    run_step("compile", digits_onnx, ir, {"target": "openvino"})
    body, x = digits_request(batch=3)
    expected = load(digits_onnx).predict(x)
    with server("--champion", ir, "--name", "digits") as (client, _):
        meta = client.get("/v2/models/digits").json()
        assert meta["platform"] == "openvino_ir"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        response = infer(client, body, "digits")
        assert response.status_code == 200, response.text
        [output] = response.json()["outputs"]
        np.testing.assert_allclose(np.array(output["data"]).reshape(3, 10), expected, atol=1e-4)


def test_served_model_answers_from_the_ir_in_process(digits_onnx, tmp_path):
    from slimops.serving.model import ServedModel

    ir = tmp_path / "ir"
    run_step("compile", digits_onnx, ir, {"target": "openvino"})
    served = ServedModel("digits", "1", ir)
    x = sample_batch(load(digits_onnx).info, 4)
    out = served.run({"input": x}, served.output_names(None))
    np.testing.assert_allclose(next(iter(out.values())), load(digits_onnx).predict(x), atol=1e-4)


def test_kserve_refuses_an_ir_and_says_what_to_do(digits_onnx, tmp_path):
    """KServe runs Triton's onnxruntime backend: an OpenVINO IR is refused (exit 2), with the search option to use."""
    import yaml

    from conftest import assert_bad_input, cli_env

    ir = tmp_path / "ir"
    run_step("compile", digits_onnx, ir, {"target": "openvino"})
    checked = tmp_path / "checked"
    run_step("validate", ir, checked, {"data": {"format": "digits", "split": "test", "limit": 60}, "rounds": 2,
                                       "latency_runs": 5, "throughput_samples": 32, "measure_memory": False,
                                       "gate": {"max_metric_drop": 50, "min_speedup": None}},
             inputs={"baseline": digits_onnx})
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({"name": "digits", "target": {
        "type": "kserve", "storage_uri": "s3://models/digits"}}))
    import subprocess
    import sys

    out = tmp_path / "deployed"
    done = subprocess.run([sys.executable, "-m", "slimops", "step", "deploy", "--model", str(checked), "--out", str(out),
                           "--config", str(config)], env=cli_env(), capture_output=True, text=True, timeout=300)
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "kserve serves onnx" in line and "search.serve_on: kserve" in line
