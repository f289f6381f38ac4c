"""prune, structured modes: conv channels of a PyTorch module (DigitsCNN, DigitsMobileNet) and attention
heads / FFN neurons / layers of the real all-MiniLM-L6-v2.

What is checked is what is written: tensor shapes in the output file, the config that describes them, that
the output loads through the handlers (no pickle) and runs, that export/quantize take it, that parameters
and MACs went down and latency before/after was measured, and that a trained model keeps its accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import STSB_DEV, accuracy_of, assert_bad_input, assert_outputs_match, run_cli, spearman_of
from slimops.core import run_step
from slimops.handlers import load

FAST_TIMING = {"timing_samples": 32, "timing_rounds": 1, "latency_runs": 5}
# Measured on the session's DigitsCNN (channels=8, hidden=64, 6 epochs): 96.7% before; 30% of the channels
# removed by L2 magnitude (global) -> see MAX_DIGITS_DROP. No fine-tune, so a margin of a few points.
MAX_DIGITS_DROP = 3.0


def assert_costs_and_timing(metrics: dict) -> None:
    """Every structured prune reports fewer params/MACs and a measured latency, before and after."""
    assert 0 < metrics["params_after"] < metrics["params_before"]
    assert 0 < metrics["macs_after"] < metrics["macs_before"]
    assert metrics["macs_ratio"] == pytest.approx(metrics["macs_after"] / metrics["macs_before"])
    for key in ("p50_ms_before", "p50_ms_after", "throughput_b32_before", "throughput_b32_after", "speedup"):
        assert metrics[key] > 0, key
    assert len(metrics["speedup_rounds"]) == metrics["timing_rounds"]
    assert metrics["reload_max_abs_diff"] <= 1e-4


def calibration_sts(limit: int) -> dict:
    if not STSB_DEV.is_file():
        pytest.skip(reason=f"STS-B dev data missing at {STSB_DEV}")
    return {"format": "sts", "path": str(STSB_DEV), "limit": limit}


# ----------------------------------------------------------------------------- PyTorch channels


@pytest.fixture(scope="module")
def digits_channels(tmp_path_factory, digits_trained):
    out = tmp_path_factory.mktemp("structured") / "digits-channels"
    manifest = run_step("prune", digits_trained, out, {"mode": "channels", "amount": 0.3, **FAST_TIMING})
    return out, manifest


def test_channel_prune_trained_cnn(digits_trained, digits_channels, digits_test):
    out, manifest = digits_channels
    assert_outputs_match(out)
    assert_costs_and_timing(manifest["metrics"])
    # Same files, same factory description: the narrower shapes live in the weights file only.
    assert (out / "architecture.json").read_text() == (digits_trained / "architecture.json").read_text()
    before, after = load_file(str(digits_trained / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(before) == set(after)
    hidden = ("features.0.weight", "features.2.weight", "classifier.1.weight")
    assert any(after[n].shape[0] < before[n].shape[0] for n in hidden)  # global ranking: not every layer loses
    # Coupled shapes: conv1 out == conv2 in; conv2 out * 16 == linear in; the classifier output stays 10.
    assert after["features.2.weight"].shape[1] == after["features.0.weight"].shape[0]
    assert after["classifier.1.weight"].shape[1] == after["features.2.weight"].shape[0] * 16
    assert after["classifier.3.weight"].shape[0] == 10  # the output layer keeps every class
    assert sum(t.numel() for t in after.values()) == manifest["metrics"]["params_after"]
    layers = {layer["name"]: layer for layer in manifest["details"]["layers"]}
    assert manifest["details"]["output_layers"] == ["classifier.3"]
    assert layers["classifier.3"]["channels_after"] == 10

    model = load(out)
    assert model.model.features[2].out_channels == after["features.2.weight"].shape[0]
    drop = accuracy_of(digits_trained, digits_test) - accuracy_of(out, digits_test)
    assert drop <= MAX_DIGITS_DROP, f"accuracy dropped {drop:.2f} points"


def test_pruned_cnn_exports_and_quantizes(tmp_path, digits_channels, digits_test):
    out, _ = digits_channels
    exported = tmp_path / "onnx"
    manifest = run_step("export", out, exported, {})
    assert manifest["metrics"]["parity_max_abs_diff"] < 1e-3
    quantized = tmp_path / "int8"
    run_step("quantize", exported, quantized, {"mode": "dynamic"})
    pruned_logits = load(out).predict(digits_test.inputs[:64])
    int8_logits = load(quantized).predict(digits_test.inputs[:64])
    assert (pruned_logits.argmax(1) == int8_logits.argmax(1)).mean() >= 0.9


def test_pruned_cnn_survives_retraining(tmp_path, digits_channels):
    """train re-saves the module from its factory description; the pruned shapes must still load."""
    out, _ = digits_channels
    retrained = tmp_path / "retrained"
    run_step("train", out, retrained, {"data": {"format": "digits", "split": "train", "limit": 200}, "epochs": 1})
    assert load_file(str(retrained / "model.safetensors"))["features.0.weight"].shape == \
        load_file(str(out / "model.safetensors"))["features.0.weight"].shape
    assert load(retrained).predict(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)


def test_taylor_per_layer_with_exclude(tmp_path, digits_trained):
    out = tmp_path / "taylor"
    manifest = run_step("prune", digits_trained, out, {
        "mode": "channels", "amount": 0.5, "scope": "layer", "importance": "taylor", "exclude": ["features.0"],
        "calibration": {"format": "digits", "split": "train", "limit": 128}, **FAST_TIMING})
    assert_costs_and_timing(manifest["metrics"])
    layers = {layer["name"]: (layer["channels_before"], layer["channels_after"]) for layer in manifest["details"]["layers"]}
    assert layers["features.0"] == (8, 8)  # excluded
    assert layers["features.2"] == (16, 8) and layers["classifier.1"] == (64, 32)  # half of each layer
    assert layers["classifier.3"] == (10, 10)
    assert load(out).predict(np.zeros((1, 1, 8, 8), np.float32)).shape == (1, 10)


def test_depthwise_mobilenet(tmp_path):
    from slimops.recipe import ModelSource
    from slimops.runner import init_factory_model

    source = init_factory_model(ModelSource(factory="slimops.zoo.digits:DigitsMobileNet", kwargs={"channels": 8},
                                            input_shape=[1, 8, 8], num_labels=10, seed=0), tmp_path / "mobilenet")
    out = tmp_path / "pruned"
    manifest = run_step("prune", source, out, {"mode": "channels", "amount": 0.5, **FAST_TIMING})
    assert_costs_and_timing(manifest["metrics"])
    model = load(out).model
    depthwise = model.features[3]
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels < 8
    run_step("export", out, tmp_path / "onnx", {})


# ----------------------------------------------------------------------------- MiniLM heads / ffn / layers


def test_heads_taylor_then_export(tmp_path, minilm_path, sts_small):
    out = tmp_path / "heads"
    manifest = run_step("prune", minilm_path, out, {
        "mode": "heads", "amount": 0.25, "scope": "layer", "importance": "taylor",
        "calibration": calibration_sts(8), **FAST_TIMING})
    assert_outputs_match(out)
    assert_costs_and_timing(manifest["metrics"])
    config = json.loads((out / "config.json").read_text())
    assert config["num_attention_heads"] == 12  # the original count; pruned_heads says what is gone
    assert sorted(config["pruned_heads"]) == [str(i) for i in range(6)]
    assert all(len(heads) == 3 for heads in config["pruned_heads"].values())
    weights = load_file(str(out / "model.safetensors"))
    assert weights["encoder.layer.0.attention.self.query.weight"].shape == (9 * 32, 384)
    assert weights["encoder.layer.0.attention.output.dense.weight"].shape == (384, 9 * 32)
    assert manifest["details"]["heads_per_layer"] == [9] * 6
    assert "sts cosine regression" in manifest["details"]["objective"]

    exported = tmp_path / "onnx"
    export_manifest = run_step("export", out, exported, {})
    assert export_manifest["metrics"]["parity_max_abs_diff"] < 1e-3
    before, after = spearman_of(minilm_path, sts_small), spearman_of(exported, sts_small)
    assert after > before - 10, f"Spearman {before:.2f} -> {after:.2f}"  # no fine-tune: sane, not lossless


def test_ffn_uniform_width(tmp_path, minilm_path):
    out = tmp_path / "ffn"
    manifest = run_step("prune", minilm_path, out, {"mode": "ffn", "amount": 0.5, **FAST_TIMING})
    assert_costs_and_timing(manifest["metrics"])
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == 768
    weights = load_file(str(out / "model.safetensors"))
    for i in range(6):
        assert weights[f"encoder.layer.{i}.intermediate.dense.weight"].shape == (768, 384)
        assert weights[f"encoder.layer.{i}.output.dense.weight"].shape == (384, 768)
    embeddings = load(out).predict(["A man is playing a guitar.", "Short."])
    assert embeddings.shape == (2, 384) and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-4)


def test_keep_layers(tmp_path, minilm_path):
    out = tmp_path / "layers"
    manifest = run_step("prune", minilm_path, out, {"mode": "layers", "keep_layers": [0, 2, 4], **FAST_TIMING})
    assert_costs_and_timing(manifest["metrics"])
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    before, after = load_file(str(minilm_path / "model.safetensors")), load_file(str(out / "model.safetensors"))
    # Kept layers are renumbered: new layer 1 is old layer 2.
    assert (after["encoder.layer.1.output.dense.weight"] == before["encoder.layer.2.output.dense.weight"]).all()
    assert not any(k.startswith("encoder.layer.3.") for k in after)
    assert manifest["metrics"]["macs_ratio"] == pytest.approx(0.5, abs=0.05)  # half the layers, embeddings are lookups


# ----------------------------------------------------------------------------- bad input (CLI)


def _prune(model, out, *settings):
    return run_cli("step", "prune", "--model", model, "--out", out, *[a for s in settings for a in ("--set", s)])


@pytest.mark.parametrize("value", ["0", "1", "1.5"])
def test_amount_out_of_range(tmp_path, digits_trained, value):
    out = tmp_path / "out"
    done = _prune(digits_trained, out, "mode=channels", f"amount={value}")
    assert "amount" in assert_bad_input(done.returncode, done.stderr, out)


def test_heads_on_a_cnn(tmp_path, digits_trained):
    out = tmp_path / "out"
    line = assert_bad_input(*_run(_prune(digits_trained, out, "mode=heads", "amount=0.5")), out)
    assert "Hugging Face" in line and "mode channels" in line


def test_channels_on_onnx(tmp_path, digits_onnx):
    out = tmp_path / "out"
    line = assert_bad_input(*_run(_prune(digits_onnx, out, "mode=channels", "amount=0.5")), out)
    assert "prune runs before export" in line


def test_channels_on_an_encoder(tmp_path, minilm_path):
    out = tmp_path / "out"
    line = assert_bad_input(*_run(_prune(minilm_path, out, "mode=channels", "amount=0.5")), out)
    assert "heads, ffn or layers" in line


def test_all_channels_of_a_layer(tmp_path, digits_trained):
    out = tmp_path / "out"
    line = assert_bad_input(*_run(_prune(digits_trained, out, "mode=channels", "amount=0.95", "scope=layer")), out)
    assert "all 8 channels of layer features.0" in line


def test_all_heads_of_a_layer_cli(tmp_path, minilm_path):
    out = tmp_path / "out"
    line = assert_bad_input(*_run(_prune(minilm_path, out, "mode=heads", "amount=0.99", "scope=layer")), out)
    assert "all 12 attention heads" in line


@pytest.mark.parametrize("config, expected", [
    ({"mode": "ffn", "amount": 0.9999}, "all 1536 FFN neurons"),
    ({"mode": "layers", "keep_layers": [0, 6]}, "layer index 6 out of range for a 6-layer encoder"),
    ({"mode": "layers", "drop_layers": [0, 1, 2, 3, 4, 5]}, "drop_layers lists all 6 layers"),
    ({"mode": "heads", "amount": 0.5, "importance": "taylor"}, "needs 'calibration'"),
    ({"mode": "heads", "amount": 0.5, "exclude": ["encoder.layer.9"]}, "names no encoder layer"),
])
def test_encoder_bad_input(tmp_path, minilm_path, config, expected):
    """In-process (the CLI's one-line exit 2 is checked above): the same BadInput, nothing written."""
    from conftest import tmp_siblings
    from slimops.errors import BadInput

    out = tmp_path / "out"
    with pytest.raises(BadInput, match=expected.replace("(", r"\(").replace(")", r"\)")):
        run_step("prune", minilm_path, out, config)
    assert not out.exists() and tmp_siblings(out) == []


def _run(done):
    return done.returncode, done.stderr
