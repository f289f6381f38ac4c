"""Bad input at the CLI: exit 2, one ``slimops: error:`` line on stderr, nothing left at --out.

A pipeline branches on the exit code and shows the last stderr line to a person, so both are
part of the contract. Some cases go through a fresh ``python -m slimops`` process, the rest
through ``slimops.cli.main`` in-process (the same code the console script calls).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import STSB_DEV, assert_bad_input, run_cli, tmp_siblings
from slimops.cli import main

VALIDATE_FAST = ["--set", "measure_memory=false", "--set", "rounds=1", "--set", "latency_runs=5"]


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- model paths (subprocess)


def test_missing_model_path(tmp_path):
    out = tmp_path / "out"
    done = run_cli("step", "export", "--model", tmp_path / "no-such-model", "--out", out)
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "not found" in line and "no-such-model" in line


def test_model_path_is_a_file(tmp_path, digits_onnx):
    out = tmp_path / "out"
    done = run_cli("step", "quantize", "--model", digits_onnx / "model.onnx", "--out", out)
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "is a file" in line


def test_corrupted_onnx_file(tmp_path, rng):
    model = tmp_path / "garbage"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"\x08\xff" + rng.bytes(4096))
    out = tmp_path / "out"
    done = run_cli("step", "quantize", "--model", model, "--out", out)
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "not a readable ONNX model" in line


@pytest.mark.parametrize("step", ["quantize", "compile"])
def test_empty_onnx_file(tmp_path, capsys, step):
    """A truncated (0-byte) model.onnx, e.g. from an interrupted copy, is bad input."""
    model = tmp_path / "truncated"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"")
    out = tmp_path / "out"
    code, err = cli(capsys, "step", step, "--model", model, "--out", out)
    assert_bad_input(code, err, out)


def test_directory_that_is_not_a_model(tmp_path):
    model = tmp_path / "notes"
    model.mkdir()
    (model / "README.md").write_text("just notes\n")
    out = tmp_path / "out"
    done = run_cli("step", "export", "--model", model, "--out", out)
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "not a model directory" in line


def test_hf_dir_with_only_pickle_weights_is_refused(tmp_path):
    """pytorch_model.bin is a pickle: it must never be loaded, only refused with what to do."""
    model = tmp_path / "pickled-hf"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    # Bytes that would run code if unpickled: the test passes only if nothing loads them.
    (model / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'touch PWNED'\ntR.")
    out = tmp_path / "out"
    done = run_cli("step", "export", "--model", model, "--out", out, cwd=tmp_path)
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "pytorch_model.bin" in line and "safetensors" in line
    assert not (tmp_path / "PWNED").exists()


def test_unknown_step(tmp_path, digits_onnx):
    out = tmp_path / "out"
    done = run_cli("step", "shrink", "--model", digits_onnx, "--out", out)
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "unknown step 'shrink'" in line and "quantize" in line


# ----------------------------------------------------------------------------- config values (in-process)


@pytest.mark.parametrize("step,setting,expect", [
    ("quantize", "per_channel=maybe", "per_channel"),  # wrong type
    ("quantize", "mode=int3", "mode"),  # not one of the choices
    ("quantize", "calibration_samples=0", "calibration_samples"),  # out of range
    ("export", "opset=5", "opset"),  # out of range
    ("export", "tolerance=-1", "tolerance"),
    ("quantize", "colour=red", "unknown key"),  # unknown key
    ("quantize", "mode=static", "calibration"),  # static without calibration data
])
def test_bad_config_value(tmp_path, capsys, digits_trained, digits_onnx, step, setting, expect):
    model = digits_trained if step == "export" else digits_onnx
    out = tmp_path / "out"
    code, err = cli(capsys, "step", step, "--model", model, "--out", out, "--set", setting)
    line = assert_bad_input(code, err, out)
    assert expect in line
    assert f"slimops steps {step}" in line  # says where to look up the options


def test_set_without_equals(tmp_path, capsys, digits_onnx):
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "quantize", "--model", digits_onnx, "--out", out, "--set", "per_channel")
    assert "not key=value" in assert_bad_input(code, err, out)


def test_config_file_with_unknown_key(tmp_path, capsys, digits_onnx):
    config = tmp_path / "quantize.yaml"
    config.write_text("mode: dynamic\nper_chanel: false\n")
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "quantize", "--model", digits_onnx, "--out", out, "--config", config)
    assert "per_chanel: unknown key" in assert_bad_input(code, err, out)


def test_config_file_with_invalid_yaml(tmp_path, capsys, digits_onnx):
    config = tmp_path / "quantize.yaml"
    config.write_text("mode: [dynamic\n")
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "quantize", "--model", digits_onnx, "--out", out, "--config", config)
    assert_bad_input(code, err, out)


def test_negative_threads(tmp_path, capsys, digits_trained):
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "export", "--model", digits_trained, "--out", out, "--threads", "-1")
    assert_bad_input(code, err, out)


def test_validate_without_baseline(tmp_path, capsys, digits_onnx):
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "validate", "--model", digits_onnx, "--out", out, "--set", "data.format=digits")
    assert "--baseline" in assert_bad_input(code, err, out)


# ----------------------------------------------------------------------------- data files


@pytest.fixture
def onnx_pair(digits_onnx):
    """A candidate and a baseline for validate: the digits ONNX against itself is enough here."""
    return ["--model", digits_onnx, "--baseline", digits_onnx]


def test_empty_npz_file(tmp_path, onnx_pair):
    data = tmp_path / "empty.npz"
    data.write_bytes(b"")
    out = tmp_path / "out"
    done = run_cli("step", "validate", *onnx_pair, "--out", out, "--set", "data.format=npz",
                   "--set", f"data.path={data}", *VALIDATE_FAST)
    assert_bad_input(done.returncode, done.stderr, out)


def test_empty_sts_file(tmp_path, minilm_onnx):
    data = tmp_path / "empty.tsv"
    data.write_text("")
    out = tmp_path / "out"
    done = run_cli("step", "validate", "--model", minilm_onnx, "--baseline", minilm_onnx, "--out", out,
                   "--set", "data.format=sts", "--set", f"data.path={data}", *VALIDATE_FAST)
    assert "holds no examples" in assert_bad_input(done.returncode, done.stderr, out)


def test_empty_calibration_file(tmp_path, capsys, digits_onnx):
    data = tmp_path / "calibration.txt"
    data.write_text("\n\n")
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "quantize", "--model", digits_onnx, "--out", out, "--set", "mode=static",
                    "--set", "calibration.format=text", "--set", f"calibration.path={data}")
    assert "holds no examples" in assert_bad_input(code, err, out)


def test_missing_data_file(tmp_path, capsys, onnx_pair):
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "validate", *onnx_pair, "--out", out, "--set", "data.format=npz",
                    "--set", f"data.path={tmp_path / 'nope.npz'}", *VALIDATE_FAST)
    assert "not found" in assert_bad_input(code, err, out)


@pytest.mark.parametrize("row,expect", [
    ("main\tMSRvid\t2012\t0001\t4.5\tA man is singing.\n", ":1: expected STS-B columns"),  # 6 columns
    ("main\tMSRvid\t2012\t0001\tfive\tA man is singing.\tA man sings.\n", ":1: score column holds 'five'"),
])
def test_malformed_sts_file(tmp_path, capsys, minilm_onnx, row, expect):
    data = tmp_path / "sts.tsv"
    data.write_text(row)
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "validate", "--model", minilm_onnx, "--baseline", minilm_onnx, "--out", out,
                    "--set", "data.format=sts", "--set", f"data.path={data}", *VALIDATE_FAST)
    line = assert_bad_input(code, err, out)
    assert str(data) + expect in line  # file:line of the bad row


def test_non_utf8_data_file(tmp_path, capsys, minilm_onnx):
    data = tmp_path / "sts.tsv"
    data.write_bytes(b"\xff\xfe\x00binary")
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "validate", "--model", minilm_onnx, "--baseline", minilm_onnx, "--out", out,
                    "--set", "data.format=sts", "--set", f"data.path={data}", *VALIDATE_FAST)
    assert "not UTF-8" in assert_bad_input(code, err, out)


def test_pickled_npz_is_refused(tmp_path, capsys, onnx_pair):
    data = tmp_path / "objects.npz"
    np.savez(data, x=np.array([{"a": 1}], dtype=object))  # an object array needs pickle to load
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "validate", *onnx_pair, "--out", out, "--set", "data.format=npz",
                    "--set", f"data.path={data}", *VALIDATE_FAST)
    assert "allow_pickle" in assert_bad_input(code, err, out)


def test_validate_data_with_wrong_columns(tmp_path, capsys, onnx_pair):
    """Classification data needs a label column; a one-column file says which columns it wanted."""
    data = tmp_path / "labels.csv"
    data.write_text("just a sentence\nanother sentence\n")
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "validate", *onnx_pair, "--out", out, "--set", "data.format=text-classification",
                    "--set", f"data.path={data}", *VALIDATE_FAST)
    line = assert_bad_input(code, err, out)
    assert f"{data}:1" in line and "label column" in line


def test_validate_unlabelled_data(tmp_path, capsys, onnx_pair):
    data = tmp_path / "sentences.txt"
    data.write_text("one\ntwo\n")
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "validate", *onnx_pair, "--out", out, "--set", "data.format=text",
                    "--set", f"data.path={data}", *VALIDATE_FAST)
    assert "no labels or scores" in assert_bad_input(code, err, out)


def test_validate_sts_data_on_a_classifier(tmp_path, capsys, onnx_pair):
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "validate", *onnx_pair, "--out", out, "--set", "data.format=sts",
                    "--set", f"data.path={STSB_DEV}", "--set", "data.limit=20", *VALIDATE_FAST)
    assert "sentence-embedding" in assert_bad_input(code, err, out)


def test_validate_digits_on_an_encoder(tmp_path, capsys, minilm_onnx):
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "validate", "--model", minilm_onnx, "--baseline", minilm_onnx, "--out", out,
                    "--set", "data.format=digits", "--set", "data.limit=20", *VALIDATE_FAST)
    assert "needs a classifier" in assert_bad_input(code, err, out)


def test_validate_text_data_on_a_tensor_classifier(tmp_path, capsys, onnx_pair):
    data = tmp_path / "labels.csv"
    data.write_text("a fine sentence,1\na poor sentence,0\n")
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "validate", *onnx_pair, "--out", out, "--set", "data.format=text-classification",
                    "--set", f"data.path={data}", *VALIDATE_FAST)
    assert_bad_input(code, err, out)


def test_validate_npz_with_wrong_shape(tmp_path, capsys, onnx_pair):
    data = tmp_path / "flat.npz"
    np.savez(data, x=np.zeros((8, 64), dtype=np.float32), y=np.zeros(8, dtype=np.int64))  # 64, not 1x8x8
    out = tmp_path / "out"
    code, err = cli(capsys, "step", "validate", *onnx_pair, "--out", out, "--set", "data.format=npz",
                    "--set", f"data.path={data}", *VALIDATE_FAST)
    assert_bad_input(code, err, out)


def test_bad_input_keeps_an_existing_output(tmp_path, capsys, digits_onnx):
    """A failed rerun must not destroy the output a previous run wrote."""
    out = tmp_path / "out"
    assert main(["step", "quantize", "--model", str(digits_onnx), "--out", str(out)]) == 0
    before = (out / "manifest.json").read_text()
    capsys.readouterr()
    data = tmp_path / "empty.txt"
    data.write_text("")
    code = main(["step", "quantize", "--model", str(digits_onnx), "--out", str(out), "--set", "mode=static",
                 "--set", "calibration.format=text", "--set", f"calibration.path={data}"])
    assert code == 2
    assert (out / "manifest.json").read_text() == before
    assert tmp_siblings(out) == []


def test_report_on_a_directory_without_a_run(tmp_path, capsys):
    code, err = cli(capsys, "report", tmp_path)
    assert code == 2
    assert err.strip().startswith("slimops: error:") and "run.json" in err
