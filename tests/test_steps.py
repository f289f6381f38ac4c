"""Each step on real (small) models: what it writes, what it records, and that the model still works."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from conftest import (STSB_DEV, accuracy_of, assert_outputs_match, model_bytes, onnx_ops, spearman_of,
                      tmp_siblings)
from slimops.core import run_step
from slimops.errors import BadInput
from slimops.handlers import describe, load

# An int8 model of a well-trained digits classifier should lose at most this many accuracy points.
MAX_DIGITS_DROP = 2.0


@pytest.fixture(scope="module")
def float_accuracy(digits_onnx, digits_test):
    return accuracy_of(digits_onnx, digits_test)


# ----------------------------------------------------------------------------- export


def test_export_torch_parity(digits_trained, digits_onnx, digits_test):
    manifest = assert_outputs_match(digits_onnx)
    diff = manifest["metrics"]["parity_max_abs_diff"]
    assert 0 <= diff < manifest["config"]["tolerance"]
    info = describe(digits_onnx)
    assert (info.format, info.task, info.input_shape) == ("onnx", "tensor-classification", [1, 8, 8])
    # Not just the recorded number: the ONNX model reproduces the PyTorch logits on real images.
    x = digits_test.inputs[:64]
    torch_logits, onnx_logits = load(digits_trained).predict(x), load(digits_onnx).predict(x)
    assert np.max(np.abs(torch_logits - onnx_logits)) < 1e-3
    assert (torch_logits.argmax(1) == onnx_logits.argmax(1)).all()


def test_export_hf_parity(minilm_path, minilm_onnx, sts_small):
    manifest = assert_outputs_match(minilm_onnx)
    assert 0 <= manifest["metrics"]["parity_max_abs_diff"] < 1e-3
    info = describe(minilm_onnx)
    assert (info.format, info.task, info.max_length, info.pooling) == ("onnx", "sentence-embedding", 128, "mean")
    assert {"model.onnx", "tokenizer.json", "config.json"} <= set(manifest["outputs"])
    sentences = sts_small.inputs[:48]
    hf, exported = load(minilm_path).predict(sentences), load(minilm_onnx).predict(sentences)
    assert np.max(np.abs(hf - exported)) < 1e-3
    assert np.allclose(np.linalg.norm(exported, axis=1), 1.0, atol=1e-4)  # normalised like sentence-transformers


def test_export_beyond_tolerance_is_refused(tmp_path, digits_trained):
    out = tmp_path / "out"
    with pytest.raises(BadInput, match="differs from the source"):
        run_step("export", digits_trained, out, {"tolerance": 1e-12})
    assert not out.exists() and tmp_siblings(out) == []


def test_export_refuses_onnx_input(tmp_path, digits_onnx):
    with pytest.raises(BadInput, match="already ONNX"):
        run_step("export", digits_onnx, tmp_path / "out", {})


# ----------------------------------------------------------------------------- compile


def test_compile_records_bert_fusions(minilm_onnx, minilm_compiled, sts_small):
    manifest = assert_outputs_match(minilm_compiled)
    fusions = manifest["details"]["fusions"]
    assert manifest["details"]["model_type"] == "bert"
    for op in ("Attention", "SkipLayerNormalization", "EmbedLayerNormalization"):
        assert fusions.get(op, 0) > 0, f"no {op} fusion recorded: {fusions}"
    assert fusions["Attention"] == 6  # one per MiniLM-L6 layer
    assert manifest["metrics"]["fused_ops"] == sum(fusions.values())
    ops = onnx_ops(minilm_compiled / "model.onnx")
    assert ops.get("Attention") == 6 and ops.get("SkipLayerNormalization", 0) > 0
    # Fusion changes the graph, not the embeddings.
    sentences = sts_small.inputs[:48]
    before, after = load(minilm_onnx).predict(sentences), load(minilm_compiled).predict(sentences)
    assert float((before * after).sum(1).min()) > 0.9999


def test_compile_generic_model(tmp_path, digits_onnx, digits_test):
    out = tmp_path / "compiled"
    manifest = run_step("compile", digits_onnx, out, {})
    assert manifest["details"]["model_type"] == "generic"
    x = digits_test.inputs[:64]
    assert np.max(np.abs(load(digits_onnx).predict(x) - load(out).predict(x))) < 1e-4


def test_compile_refuses_a_torch_model(tmp_path, digits_trained):
    with pytest.raises(BadInput, match="run the export step first"):
        run_step("compile", digits_trained, tmp_path / "out", {})


def test_compile_minilm_to_openvino(tmp_path, minilm_onnx, sts_small):
    """OpenVINO IR of the encoder carries its tokenizer and embeds like the ONNX model (digits: test_openvino.py)."""
    pytest.importorskip("openvino", reason="OpenVINO runtime not installed (extra 'slimops[openvino]')")
    out = tmp_path / "ir"
    manifest = run_step("compile", minilm_onnx, out, {"target": "openvino"})
    assert manifest["model"]["task"] == "sentence-embedding"
    assert {"model.xml", "model.bin", "tokenizer.json"} <= set(manifest["outputs"])
    assert type(load(out)).__name__ == "OpenVinoModel"
    sentences = sts_small.inputs[:32]
    assert float((load(minilm_onnx).predict(sentences) * load(out).predict(sentences)).sum(1).min()) > 0.9999
    with pytest.raises(BadInput, match="quantize takes an ONNX model"):
        run_step("quantize", out, tmp_path / "int8", {"mode": "dynamic"})


# ----------------------------------------------------------------------------- quantize, digits


QUANTIZE_CASES = {
    "dynamic": {"mode": "dynamic"},
    "static-minmax": {"mode": "static", "calibration_method": "minmax"},
    "static-entropy": {"mode": "static", "calibration_method": "entropy"},
    "static-percentile": {"mode": "static", "calibration_method": "percentile"},
    "static-per-tensor-int8": {"mode": "static", "per_channel": False, "activation_type": "int8"},
}
CALIBRATION = {"format": "digits", "split": "train", "limit": 128}


@pytest.mark.parametrize("case", list(QUANTIZE_CASES))
def test_int8_quantize_is_smaller_and_keeps_accuracy(tmp_path, digits_onnx, digits_test, float_accuracy, case):
    config = dict(QUANTIZE_CASES[case])
    if config["mode"] == "static":
        config["calibration"] = CALIBRATION
    out = tmp_path / case
    manifest = run_step("quantize", digits_onnx, out, config)
    assert_outputs_match(out)
    assert manifest["model"]["precision"] == "int8"
    assert model_bytes(out) < 0.5 * model_bytes(digits_onnx)
    assert manifest["metrics"]["size_mb"] == pytest.approx(model_bytes(out) / 1e6)
    ops = onnx_ops(out / "model.onnx")
    if config["mode"] == "dynamic":
        assert ops.get("DynamicQuantizeLinear", 0) > 0 and ops.get("ConvInteger", 0) + ops.get("MatMulInteger", 0) > 0
    else:
        assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
        assert manifest["data"]["calibration"]["limit"] == 128
    assert manifest["details"]["quantized_nodes"], "no quantized nodes recorded"
    accuracy = accuracy_of(out, digits_test)
    assert accuracy >= float_accuracy - MAX_DIGITS_DROP, f"{case}: {accuracy:.2f} vs float {float_accuracy:.2f}"


def test_fp16_quantize(tmp_path, digits_onnx, digits_test, float_accuracy):
    """fp16 halves the weights; ONNX Runtime's CPU provider runs the model (fp32 in/out, casts at the edges)."""
    out = tmp_path / "fp16"
    manifest = run_step("quantize", digits_onnx, out, {"mode": "fp16"})
    assert manifest["model"]["precision"] == "fp16"
    model = onnx.load(str(out / "model.onnx"))
    weights = [init for init in model.graph.initializer if len(init.dims) > 1]
    assert weights and all(init.data_type == onnx.TensorProto.FLOAT16 for init in weights)
    # keep_io_types: callers still feed and receive fp32
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model_bytes(out) < 0.6 * model_bytes(digits_onnx)
    assert accuracy_of(out, digits_test) >= float_accuracy - 0.5


def test_int4_quantize_exported_digits_cnn(tmp_path, digits_onnx):
    out = tmp_path / "int4"
    run_step("quantize", digits_onnx, out, {"mode": "int4", "int4_min_weights": 1024})
    assert onnx_ops(out / "model.onnx").get("MatMulNBits", 0) > 0


def test_int4_quantize_minilm(tmp_path, minilm_onnx, sts_small):
    """Weight-only INT4 (MatMulNBits) on every large MatMul of the encoder; STS quality holds."""
    out = tmp_path / "int4"
    manifest = run_step("quantize", minilm_onnx, out, {"mode": "int4", "block_size": 32})
    assert manifest["model"]["precision"] == "int4"
    assert manifest["details"]["quantized_nodes"] == {"MatMulNBits": 36}  # 6 layers x (q, k, v, o, up, down)
    ops = onnx_ops(out / "model.onnx")
    assert ops.get("MatMulNBits") == 36
    assert model_bytes(out) < 0.7 * model_bytes(minilm_onnx)  # the embedding table stays float
    assert spearman_of(out, sts_small) >= spearman_of(minilm_onnx, sts_small) - 2.0


def test_int4_without_large_matmuls_is_bad_input(tmp_path, minilm_onnx):
    out = tmp_path / "int4"
    with pytest.raises(BadInput, match="int4_min_weights"):
        run_step("quantize", minilm_onnx, out, {"mode": "int4", "int4_min_weights": 10**9})
    assert not out.exists()


def test_dynamic_quantize_minilm_compiled(tmp_path, minilm_compiled, sts_small):
    """The fused graph quantizes too: Attention becomes QAttention."""
    out = tmp_path / "int8"
    manifest = run_step("quantize", minilm_compiled, out, {"mode": "dynamic"})
    assert manifest["details"]["quantized_nodes"].get("QAttention") == 6
    assert model_bytes(out) < 0.3 * model_bytes(minilm_compiled)
    assert spearman_of(out, sts_small) >= spearman_of(minilm_compiled, sts_small) - 2.0


# ----------------------------------------------------------------------------- accuracy-aware


def test_accuracy_aware_keeps_sensitive_nodes_float(tmp_path, digits_onnx, digits_test):
    """With a zero-drop target and misleading calibration the search must keep nodes float, and say which.

    The premise is built, not hoped for: calibration images at a fifth of their brightness give activation
    ranges that clip real inputs, so the fully quantized model loses accuracy on every CPU (with full-range
    weights on a VNNI CPU, honest calibration loses nothing on this model)."""
    from slimops.data import DataSpec, load_dataset

    train = load_dataset(DataSpec(format="digits", split="train", limit=8))
    np.savez(tmp_path / "dim.npz", x=train.inputs * 0.2, y=train.labels)
    out = tmp_path / "aaq"
    manifest = run_step("quantize", digits_onnx, out, {
        "mode": "static", "per_channel": False,
        "calibration": {"format": "npz", "path": str(tmp_path / "dim.npz")},
        "accuracy": {"data": {"format": "digits", "split": "test"}, "max_metric_drop": 0.0},
    })
    aaq = manifest["details"]["accuracy_aware"]
    source_nodes = {n.name: n for n in onnx.load(str(digits_onnx / "model.onnx")).graph.node}
    search = aaq["search"]
    assert search[0]["float_nodes"] == 0
    assert aaq["float_metric"] - search[0]["metric"] > 0, "fully quantized model lost nothing: nothing to search"
    assert aaq["float_nodes"], "a strict target that fails at 0 float nodes must keep some nodes float"
    assert set(aaq["float_nodes"]) <= set(source_nodes)
    assert [step["float_nodes"] for step in search] == sorted({step["float_nodes"] for step in search})
    assert search[-1]["float_nodes"] == len(aaq["float_nodes"])
    assert search[-1]["metric"] == aaq["quantized_metric"]
    assert aaq["target_met"] == (aaq["float_metric"] - aaq["quantized_metric"] <= 0.0)
    scores = [s["score"] for s in aaq["sensitivity"]]
    assert scores == sorted(scores, reverse=True)
    assert aaq["float_nodes"] == [s["node"] for s in aaq["sensitivity"][:len(aaq["float_nodes"])]]
    # The written model is the one the search ended on: same metric, and the kept nodes read float weights.
    assert accuracy_of(out, digits_test) == pytest.approx(aaq["quantized_metric"])
    written = onnx.load(str(out / "model.onnx")).graph
    float_inits = {i.name for i in written.initializer if i.data_type == onnx.TensorProto.FLOAT}
    for node in written.node:
        if node.name in aaq["float_nodes"]:
            assert node.input[1] in float_inits, f"{node.name} reads a quantized weight"


def test_accuracy_aware_met_at_once_keeps_nothing_float(tmp_path, digits_onnx):
    out = tmp_path / "aaq"
    manifest = run_step("quantize", digits_onnx, out, {
        "mode": "dynamic", "accuracy": {"data": {"format": "digits", "split": "test", "limit": 100},
                                        "max_metric_drop": 50.0}})
    aaq = manifest["details"]["accuracy_aware"]
    assert aaq["float_nodes"] == [] and aaq["target_met"] is True
    assert aaq["search"] == [{"float_nodes": 0, "metric": aaq["quantized_metric"]}]


def test_static_calibration_on_text(tmp_path, minilm_onnx, sts_small):
    """Static INT8 of a text model, calibrated on STS sentences read as plain text (MatMuls only)."""
    out = tmp_path / "static"
    manifest = run_step("quantize", minilm_onnx, out, {
        "mode": "static", "op_types": ["MatMul"], "calibration_samples": 32,
        "calibration": {"format": "text", "path": str(STSB_DEV), "limit": 32}})
    assert manifest["data"]["calibration"]["sha256"]
    assert manifest["model"]["precision"] == "int8"
    assert onnx_ops(out / "model.onnx").get("QuantizeLinear", 0) > 0
    assert spearman_of(out, sts_small) >= spearman_of(minilm_onnx, sts_small) - 2.0


def test_static_default_op_types_on_text_keeps_quality(tmp_path, minilm_onnx, sts_small):
    out = tmp_path / "static"
    run_step("quantize", minilm_onnx, out, {
        "mode": "static", "calibration_samples": 32,
        "calibration": {"format": "text", "path": str(STSB_DEV), "limit": 32}})
    assert spearman_of(out, sts_small) >= spearman_of(minilm_onnx, sts_small) - 5.0
