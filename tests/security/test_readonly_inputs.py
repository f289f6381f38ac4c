"""No step ever writes into its input. Orchestrators mount inputs read-only (KFP, SageMaker /opt/ml/processing,
podman ``-v model:/m:ro``); here every step runs on inputs copied onto a tmpfs remounted read-only, so a write
into the input fails for real (EROFS, even for root) instead of being noticed afterwards."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from slimops.core import run_step

DIGITS_TRAIN = {"format": "digits", "split": "train", "limit": 64}
DIGITS_TEST = {"format": "digits", "split": "test", "limit": 64}
FAST_VALIDATE = {"data": DIGITS_TEST, "rounds": 1, "latency_runs": 5, "throughput_samples": 16,
                 "measure_memory": False, "gate": {"max_metric_drop": 50.0, "min_speedup": None}}


class ReadOnly:
    """Copies of model directories on a tmpfs that is then remounted read-only."""

    def __init__(self, root: Path):
        self.root = root
        self.mounts: list[Path] = []

    def __call__(self, *dirs: Path) -> list[Path]:
        mount = self.root / f"ro{len(self.mounts)}"
        mount.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(mount)],
                          capture_output=True).returncode != 0:
            pytest.skip(reason="mount (tmpfs, remount read-only) is not permitted here; needs root and mount rights")
        self.mounts.append(mount)
        copies = [Path(shutil.copytree(d, mount / f"{i}-{Path(d).name}")) for i, d in enumerate(dirs)]
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        probe = copies[0] / ".probe"
        with pytest.raises(OSError):
            probe.write_text("x")  # the premise: nothing, not even root, can write there now
        return copies

    def close(self):
        for mount in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture
def readonly(tmp_path):
    ro = ReadOnly(tmp_path)
    yield ro
    ro.close()


def _digits_int8(artifacts, digits_onnx):
    out = artifacts / "readonly-int8"
    if not out.is_dir():
        run_step("quantize", digits_onnx, out, {"mode": "dynamic"})
    return out


STEPS = {
    "train": ("digits_trained", {"data": DIGITS_TRAIN, "epochs": 1}),
    "export-torch": ("digits_trained", {}),
    "compile": ("digits_onnx", {}),
    "quantize-dynamic": ("digits_onnx", {"mode": "dynamic"}),
    "quantize-static": ("digits_onnx", {"mode": "static", "calibration": DIGITS_TRAIN}),
    "quantize-int4": ("digits_onnx", {"mode": "int4", "int4_min_weights": 256}),
    "quantize-fp16": ("digits_onnx", {"mode": "fp16"}),
    "quantize-accuracy-aware": ("digits_onnx", {"mode": "dynamic", "accuracy": {"data": DIGITS_TEST}}),
    "prune": ("digits_trained", {"sparsity": 0.5}),
    "prune-channels": ("digits_trained", {"mode": "channels", "amount": 0.25}),
    "factorize": ("digits_onnx", {"energy": 0.9, "min_weights": 512}),
    "pack": ("digits_onnx", {}),
    "distill": ("digits_trained", {"student": {"factory": "slimops.zoo.digits:DigitsMobileNet",
                                               "kwargs": {"channels": 4}},
                                   "data": DIGITS_TRAIN, "eval_data": DIGITS_TEST, "max_steps": 4,
                                   "batch_size": 16, "eval_every": 2}),
}


@pytest.mark.parametrize("name", list(STEPS))
def test_step_on_a_read_only_input(name, readonly, request, tmp_path):
    base, config = STEPS[name]
    (model,) = readonly(request.getfixturevalue(base))
    manifest = run_step(name.split("-")[0], model, tmp_path / "out", config, threads=1)
    assert manifest["outputs"], "the step wrote nothing"
    assert not list(tmp_path.glob(".out.*")), "temporary folders left behind"


def test_export_of_a_hugging_face_model_on_a_read_only_input(readonly, minilm_path, tmp_path):
    (model,) = readonly(minilm_path)
    manifest = run_step("export", model, tmp_path / "out", {"opset": 17, "max_length": 128})
    assert (tmp_path / "out" / "model.onnx").is_file() and manifest["metrics"]


def test_validate_register_promote_deploy_on_read_only_inputs(readonly, artifacts, digits_onnx, tmp_path):
    candidate, baseline = readonly(_digits_int8(artifacts, digits_onnx), digits_onnx)
    validated = tmp_path / "validated"
    run_step("validate", candidate, validated, FAST_VALIDATE, {"baseline": baseline}, threads=1)

    (validated_ro,) = readonly(validated)
    registry = {"registry_dir": str(tmp_path / "registry")}
    run_step("register", validated_ro, tmp_path / "registered", {"name": "digits", **registry})
    (registered_ro,) = readonly(tmp_path / "registered")
    manifest = run_step("promote", registered_ro, tmp_path / "promoted", registry)
    assert manifest["details"]["champion"] == "1"
    deployed = run_step("deploy", validated_ro, tmp_path / "deployed",
                        {"name": "digits-endpoint", "target": {"type": "kserve", "storage_uri": "s3://models/digits"}})
    assert deployed["metrics"]["target"] == "kserve"
