"""pack: the Deep-Compression-style chain on digits (train -> prune -> export -> static INT8 -> zstd).

What is checked is what is written: the packed file decompresses to the quantized model's bytes, the
packed directory loads (in memory) and predicts exactly what the quantized model predicts, and its size
is measured against the trained fp32 weights.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import onnx
import pytest
import zstandard

from conftest import accuracy_of, assert_bad_input, assert_outputs_match, run_cli
from slimops.core import run_step
from slimops.handlers import describe, load
from slimops.steps.validate import model_size_bytes

CALIBRATION = {"format": "digits", "split": "train", "limit": 128}
# Measured on the session's DigitsCNN (channels=8, hidden=64, 6 epochs; 74,032-byte model.safetensors):
# 70% global pruning + static INT8 + zstd 19 gives a 9,978-byte model.onnx.zst, 7.42x smaller than the
# fp32 weights (0.5: 5.44x, 0.8: 9.64x). Of those bytes ~1.1 kB is the graph itself (33 QDQ nodes).
# Margin for other CPUs / torch builds, whose trained weights differ slightly: 0.4x.
MIN_RATIO_VS_FP32_AT_70 = 7.42 - 0.4


@pytest.fixture(scope="module")
def chain(tmp_path_factory, digits_trained):
    """prune 0.7 global -> export -> static INT8 -> pack, once for the module."""
    root = tmp_path_factory.mktemp("pack")
    run_step("prune", digits_trained, root / "pruned", {"sparsity": 0.7, "scope": "global"})
    run_step("export", root / "pruned", root / "onnx", {})
    run_step("quantize", root / "onnx", root / "quantized", {"mode": "static", "calibration": CALIBRATION})
    run_step("pack", root / "quantized", root / "packed", {})
    return root


def files_of(model_dir) -> set[str]:
    return {str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file() and p.name != "manifest.json"}


def test_pack_digits_chain(chain, digits_trained, digits_test):
    quantized, packed = chain / "quantized", chain / "packed"
    manifest = assert_outputs_match(packed)
    assert files_of(packed) == {"model.onnx.zst"}
    assert manifest["config"] == {"level": 19, "threads": 0}
    assert manifest["model"]["format"] == "onnx-packed" and manifest["model"]["file"] == "model.onnx.zst"
    # Everything else is the quantized model's description.
    assert describe(packed) == describe(quantized).model_copy(update={"format": "onnx-packed",
                                                                      "file": "model.onnx.zst"})
    assert manifest["parent"]["step"] == "quantize"

    # The packed file is the quantized protobuf, byte for byte, behind zstd.
    plain = (quantized / "model.onnx").read_bytes()
    data = (packed / "model.onnx.zst").read_bytes()
    assert zstandard.ZstdDecompressor().decompress(data) == plain
    assert zstandard.get_frame_parameters(data).content_size == len(plain)
    metrics, details = manifest["metrics"], manifest["details"]
    assert metrics["plain_size_bytes"] == len(plain)
    assert metrics["packed_size_bytes"] == len(data)
    assert metrics["ratio"] == pytest.approx(len(plain) / len(data))
    assert metrics["roundtrip_ok"] is True and metrics["parity_max_abs_diff"] == 0.0
    assert details["sha256"] == hashlib.sha256(plain).hexdigest()
    assert details["zstd_level"] == 19 and details["zstandard_version"] == zstandard.__version__
    assert details["plain_files"] == ["model.onnx"]
    # Why it compresses: 70% of the pruned weights are int8 zeros.
    assert 0.6 <= details["weight_zero_value_fraction"] <= 0.75
    assert 0.6 <= details["weight_zero_byte_fraction"] <= 0.75

    # The packed directory runs: same logits exactly, same accuracy.
    expected = load(quantized).predict(digits_test.inputs)
    got = load(packed).predict(digits_test.inputs)
    assert np.array_equal(expected, got)
    assert accuracy_of(packed, digits_test) == accuracy_of(quantized, digits_test)
    assert accuracy_of(packed, digits_test) >= 90.0

    # The comparison: the packed artifact against the trained fp32 weights.
    fp32 = (digits_trained / "model.safetensors").stat().st_size
    ratio = fp32 / len(data)
    print(f"packed {len(data)} B vs fp32 safetensors {fp32} B: {ratio:.2f}x; vs int8 ONNX {metrics['ratio']:.2f}x")
    assert ratio >= MIN_RATIO_VS_FP32_AT_70
    assert metrics["ratio"] >= 2.5  # int8 ONNX -> zstd; measured 2.96x


def test_packed_dir_without_manifest_is_recognised(chain, tmp_path, digits_test):
    """A model.onnx.zst copied out of slimops describes and loads on its own."""
    bare = tmp_path / "bare"
    bare.mkdir()
    os.link(chain / "packed" / "model.onnx.zst", bare / "model.onnx.zst")
    info = describe(bare)
    assert info.format == "onnx-packed" and info.file == "model.onnx.zst"
    assert info.task == "tensor-classification" and info.input_shape == [1, 8, 8]
    assert np.array_equal(load(bare).predict(digits_test.inputs[:16]),
                          load(chain / "quantized").predict(digits_test.inputs[:16]))


def test_corrupt_packed_file_is_bad_input(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.onnx.zst").write_bytes(b"not zstd at all")
    done = run_cli("step", "pack", "--model", bare, "--out", tmp_path / "out")
    line = assert_bad_input(done.returncode, done.stderr, tmp_path / "out")
    assert "model.onnx.zst" in line and "pack" in line


def test_validate_on_packed(chain, digits_trained, tmp_path):
    """validate loads the packed candidate and counts model.onnx.zst as its size on disk."""
    manifest = run_step("validate", chain / "packed", tmp_path / "checked",
                        {"data": {"format": "digits", "split": "test", "limit": 100}, "rounds": 1,
                         "latency_runs": 5, "throughput_samples": 64, "measure_memory": False,
                         "gate": {"max_metric_drop": 5.0, "min_speedup": None}},
                        inputs={"baseline": digits_trained})
    assert model_size_bytes(chain / "packed") == (chain / "packed" / "model.onnx.zst").stat().st_size
    assert manifest["metrics"]["candidate_size_mb"] == pytest.approx(model_size_bytes(chain / "packed") / 1e6)
    assert manifest["gate"]["passed"] is True


def test_external_data_is_folded_in(chain, tmp_path, digits_test):
    """An ONNX model with external data packs to one protobuf; the data file is not carried."""
    src = tmp_path / "external"
    src.mkdir()
    model = onnx.load(str(chain / "quantized" / "model.onnx"))
    onnx.save_model(model, str(src / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    assert (src / "model.onnx.data").is_file()
    out = tmp_path / "packed"
    manifest = run_step("pack", src, out, {"level": 3, "threads": 2})
    assert files_of(out) == {"model.onnx.zst"}
    assert manifest["details"]["plain_files"] == ["model.onnx", "model.onnx.data"]
    assert manifest["metrics"]["plain_size_bytes"] == sum(p.stat().st_size for p in src.iterdir())
    inner = onnx.ModelProto()
    inner.ParseFromString(zstandard.ZstdDecompressor().decompress((out / "model.onnx.zst").read_bytes()))
    assert all(t.data_location == onnx.TensorProto.DEFAULT and not t.external_data for t in inner.graph.initializer)
    assert hashlib.sha256(inner.SerializeToString()).hexdigest() == manifest["details"]["sha256"]
    assert np.array_equal(load(out).predict(digits_test.inputs[:32]),
                          load(chain / "quantized").predict(digits_test.inputs[:32]))


@pytest.mark.parametrize("setting", [None, "level=0", "level=23"])
def test_bad_input_exits_2(setting, chain, digits_trained, tmp_path):
    out = tmp_path / "out"
    if setting is None:  # a PyTorch directory: export first
        done = run_cli("step", "pack", "--model", digits_trained, "--out", out)
    else:
        done = run_cli("step", "pack", "--model", chain / "quantized", "--out", out, "--set", setting)
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert ("export" in line) if setting is None else ("level" in line)


def test_packed_is_not_repacked(chain, tmp_path):
    done = run_cli("step", "pack", "--model", chain / "packed", "--out", tmp_path / "again")
    line = assert_bad_input(done.returncode, done.stderr, tmp_path / "again")
    assert "onnx-packed" in line


def test_pack_text_model_carries_tokenizer(minilm_onnx, tmp_path):
    """A text model: tokenizer and config files come along, and the packed encoder embeds identically."""
    out = tmp_path / "packed"
    manifest = run_step("pack", minilm_onnx, out, {"level": 1})
    assert_outputs_match(out)
    carried = files_of(minilm_onnx) - {"model.onnx"} - {n for n in files_of(minilm_onnx) if n.endswith(".onnx.data")}
    assert files_of(out) == carried | {"model.onnx.zst"}
    assert describe(out) == describe(minilm_onnx).model_copy(update={"format": "onnx-packed", "file": "model.onnx.zst"})
    assert manifest["metrics"]["parity_max_abs_diff"] == 0.0
    sentences = ["A man is playing a guitar.", "Packing should not change what the model means."]
    assert np.array_equal(load(out).predict(sentences), load(minilm_onnx).predict(sentences))
