"""The component image: `slimops step ...` run inside the container on the example model, outputs checked on the host.

This is what the KFP container components, SageMaker ProcessingSteps and Azure ML command components run. The
image is built by infra/container/build.sh (podman + a debootstrap base + a host wheelhouse, no registry) and run
with no network, the model mounted read-only and the output on a bind mount.

Which image is tested:
- ``SLIMOPS_TEST_IMAGE=<ref>``: that image, as it is (no build).
- otherwise build.sh runs (the tree's current code) when its caches are warm (base image + prepared wheelhouse:
  about a minute here) or when ``SLIMOPS_BUILD_IMAGE=1`` (a cold build: 15-22 minutes here).
- caches cold and no ``SLIMOPS_BUILD_IMAGE=1``: a prebuilt ``localhost/slimops:<version>`` is tested if present,
  else the module skips and says how to build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, accuracy_of, assert_bad_input, assert_outputs_match, write_digits_recipe

BUILD_SH = REPO / "infra/container/build.sh"
BUILD_DIR = Path(os.environ.get("SLIMOPS_BUILD_DIR", REPO / "infra/container/.build"))
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = os.environ.get("SLIMOPS_IMAGE_NAME", f"localhost/slimops:{VERSION}")
BASE_IMAGE = os.environ.get("SLIMOPS_BASE_IMAGE", "localhost/slimops-base:bookworm")
EXAMPLES_IN_IMAGE = "/opt/slimops/examples"
# The container's user (uid 1000) writes the outputs: the mounted output directory is made writable for it, as a
# Kubernetes fsGroup would.
OUT_MODE = 0o777

pytestmark = pytest.mark.slow


def podman_cmd() -> list[str]:
    # Here containers run only with runc and explicit limits (ENVIRONMENT.md, "Containers").
    return ["podman", *(["--runtime", "runc"] if shutil.which("runc") else [])]


def podman(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*podman_cmd(), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref).returncode == 0


def build_caches_warm() -> bool:
    base = image_exists(BASE_IMAGE) or (BUILD_DIR / "base/bookworm-minbase.tar").is_file()
    return base and (BUILD_DIR / "requirements.lock").is_file() and any((BUILD_DIR / "wheelhouse").glob("torch-*.whl"))


@pytest.fixture(scope="module")
def image_build(tmp_path_factory) -> dict:
    """The image under test, and what build.sh recorded for it (None when a prebuilt image is tested)."""
    if shutil.which("podman") is None:
        pytest.skip(reason="podman is not installed: the component image is built and run with podman "
                           "(apt-get install podman runc)")
    if os.environ.get("SLIMOPS_TEST_IMAGE"):
        ref = os.environ["SLIMOPS_TEST_IMAGE"]
        if not image_exists(ref):
            pytest.fail(f"SLIMOPS_TEST_IMAGE={ref} is not in podman's image store")
        return {"image": ref, "lock": None, "build_output": ""}
    runnable = next((ref for ref in (IMAGE, BASE_IMAGE) if image_exists(ref)), None)
    if runnable is not None:
        probe = podman("run", "--rm", "--network=none", "--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024",
                       "--entrypoint", "true", runnable)
        if probe.returncode != 0:
            reason = (probe.stderr.strip().splitlines() or ["no message"])[-1]
            pytest.skip(reason=f"podman is installed but cannot run a container here ({reason})")
    asked = os.environ.get("SLIMOPS_BUILD_IMAGE") == "1"
    if not asked and not build_caches_warm():
        if image_exists(IMAGE):
            return {"image": IMAGE, "lock": None, "build_output": ""}
        pytest.skip(reason=f"no {IMAGE} image and no warm build cache in {BUILD_DIR} (base image + wheelhouse); "
                           "a cold build took 15-22 min here: run infra/container/build.sh, or set SLIMOPS_BUILD_IMAGE=1")
    has_base = image_exists(BASE_IMAGE) or (BUILD_DIR / "base/bookworm-minbase.tar").is_file()
    if not has_base and shutil.which("debootstrap") is None:
        pytest.skip(reason="debootstrap is not installed and there is no base image or rootfs tarball: "
                           "the base image is made with debootstrap (apt-get install debootstrap)")
    if not has_base and os.geteuid() != 0:
        pytest.skip(reason="the base image is made with debootstrap, which needs root: run "
                           "`sudo infra/container/build.sh prepare` once")
    # build.sh writes the image lock where plan.image_reference() reads it; the test keeps the tree's lock untouched.
    lock = tmp_path_factory.mktemp("image") / "image.json"
    done = subprocess.run([str(BUILD_SH)], env={**os.environ, "SLIMOPS_IMAGE_LOCK": str(lock)},
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"build.sh failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
    return {"image": IMAGE, "lock": lock, "build_output": done.stdout}


@pytest.fixture(scope="module")
def image(image_build) -> str:
    return image_build["image"]


def run_in_image(image: str, *args, mounts: dict[Path, str] = (), readonly: dict[Path, str] = (),
                 timeout: float = 600) -> subprocess.CompletedProcess:
    """``podman run IMAGE ARGS``: the entrypoint is ``slimops``; no network, as on an air-gapped cluster."""
    volumes = [f"--volume={host}:{inside}:ro" for host, inside in dict(readonly).items()]
    volumes += [f"--volume={host}:{inside}" for host, inside in dict(mounts).items()]
    return podman("run", "--rm", "--network=none", "--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024",
                  *volumes, image, *args, timeout=timeout)


def readable_copy(model_dir: Path, dst: Path) -> Path:
    """The model as the container's user (uid 1000) can read it. safetensors 0.8 writes its files 0600, so a model
    trained by another user (the session fixture, here root) is unreadable in the container as it is."""
    shutil.copytree(model_dir, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def writable_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(OUT_MODE)
    return path


@pytest.fixture(scope="module")
def compressed(image, digits_trained, tmp_path_factory) -> dict:
    """export + static INT8 quantize of the trained digits CNN, both inside the container."""
    out = writable_dir(tmp_path_factory.mktemp("container-out"))
    model = {readable_copy(digits_trained, tmp_path_factory.mktemp("model") / "trained"): "/models/trained"}
    export = run_in_image(image, "step", "export", "--model", "/models/trained", "--out", "/out/onnx",
                          readonly=model, mounts={out: "/out"})
    quantize = run_in_image(image, "step", "quantize", "--model", "/out/onnx", "--out", "/out/int8",
                            "--set", "mode=static", "--set", "calibration={format: digits, split: train}",
                            "--set", "calibration_samples=128", "--threads", "2", mounts={out: "/out"})
    return {"out": out, "model": model, "export": export, "quantize": quantize}


def test_build_records_the_image_by_digest(image_build, monkeypatch):
    if image_build["lock"] is None:
        pytest.skip(reason="a prebuilt image is under test; build.sh did not run")
    lock = json.loads(image_build["lock"].read_text())
    digest = podman("image", "inspect", "--format", "{{.Digest}}", IMAGE).stdout.strip()
    assert lock == {"image": IMAGE, "digest": digest} and digest.startswith("sha256:")
    assert f"digest: {digest}" in image_build["build_output"]
    # Compiled pipeline specs take the image from this one setting, by digest.
    from slimops import plan

    monkeypatch.delenv(plan.IMAGE_ENV, raising=False)
    monkeypatch.setattr(plan, "IMAGE_LOCK", image_build["lock"])
    assert plan.image_reference() == f"localhost/slimops@{digest}"


def test_image_is_cpu_only_non_root_with_examples(image):
    probe = podman("run", "--rm", "--network=none", "--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024",
                   "--entrypoint", "sh", image, "-c",
                   "id -u; python -c 'import torch; print(torch.__version__)'; pip list --format=freeze; "
                   f"ls {EXAMPLES_IN_IMAGE} {EXAMPLES_IN_IMAGE}/data/stsb; "
                   # The MiniLM recipe's data path, placed under the examples directory, loads in the image.
                   "python -c 'from slimops.data import DataSpec, load_dataset; "
                   f"print(\"sts pairs\", len(load_dataset(DataSpec(format=\"sts\", path=\"{EXAMPLES_IN_IMAGE}/data/stsb/sts-dev.tsv\")).pairs))'")
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[0] == "1000", "the image must run as its non-root user"
    assert lines[1] == "2.13.0+cpu"
    assert not [line for line in lines if line.lower().startswith(("nvidia-", "triton"))], "CUDA packages in the image"
    assert "slimops==" + VERSION in lines
    assert {"digits-cnn.yaml", "minilm-sts.yaml", "sts-dev.tsv"} <= set(lines)
    assert lines[-1] == "sts pairs 1500"


def test_export_and_quantize_in_the_container(compressed, digits_trained, digits_test):
    import onnxruntime as ort

    for name in ("export", "quantize"):
        done = compressed[name]
        assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stderr[-3000:]}"
    assert json.loads(compressed["quantize"].stdout)["out"] == "/out/int8"
    int8 = compressed["out"] / "int8"
    manifest = assert_outputs_match(int8)
    assert manifest["step"] == "quantize" and manifest["config"]["mode"] == "static"
    assert manifest["parent"]["step"] == "export"
    assert manifest["parent"]["parent"]["step"] == "train", "the lineage goes back to the mounted trained model"
    # The container's ONNX runs on the host, with the host's onnxruntime, and still classifies digits.
    session = ort.InferenceSession(str(int8 / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    inputs = np.asarray(digits_test.inputs, dtype=np.float32).reshape(len(digits_test.inputs), 1, 8, 8)
    predictions = session.run(None, {feed.name: inputs})[0].argmax(axis=1)
    int8_accuracy = 100 * float((predictions == np.asarray(digits_test.labels)).mean())
    assert int8_accuracy > accuracy_of(digits_trained, digits_test) - 3.0  # accuracy points


def test_bad_input_in_the_container_exits_2_with_one_line(image, compressed, tmp_path):
    out = writable_dir(tmp_path / "out")
    done = run_in_image(image, "step", "quantize", "--model", "/models/trained/no-such-model", "--out", "/out/int8",
                        readonly=compressed["model"], mounts={out: "/out"})
    line = assert_bad_input(done.returncode, done.stderr, out / "int8")
    assert "/models/trained/no-such-model" in line


@pytest.mark.parametrize(("gate", "verdict"), [({"min_speedup": 1000}, "false"), ({"max_metric_drop": 5.0}, "true")])
def test_gate_verdict_file_for_pipeline_branching(image, compressed, gate, verdict, tmp_path):
    """What the KFP container components do: exit 0 either way, and the branch reads the verdict file."""
    out = writable_dir(tmp_path / "out")
    sets = [f"gate.{key}={value}" for key, value in gate.items()]
    done = run_in_image(
        image, "step", "validate",
        "--model", "/in/int8", "--baseline", "/models/trained", "--out", "/out/validated",
        "--set", "data={format: digits, split: test}", "--set", "gate.min_speedup=null", "--set", "rounds=1",
        "--set", "latency_runs=5", "--set", "throughput_samples=64", "--set", "measure_memory=false",
        *[arg for s in sets for arg in ("--set", s)], "--threads", "2",
        "--on-gate-fail", "continue", "--gate-output", "/out/gate/passed",
        readonly={**compressed["model"], compressed["out"] / "int8": "/in/int8"}, mounts={out: "/out"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "gate/passed").read_text() == verdict
    report = json.loads((out / "validated/gate_report.json").read_text())
    assert report["passed"] is (verdict == "true")
    if verdict == "false":
        assert any("speedup" in reason for reason in report["reasons"]), report["reasons"]


def test_recipe_run_in_the_container_stops_at_a_failed_gate(image, tmp_path):
    """`slimops run` inside the image: the impossible gate exits 3, its report is written, and the step after the
    gate (the promotion side) never runs."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    write_digits_recipe(recipes / "tiny.yaml", gate={"min_speedup": 1000}, extra_steps=[{"step": "pack"}])
    (recipes / "tiny.yaml").chmod(0o644)
    out = writable_dir(tmp_path / "out")
    done = run_in_image(image, "run", "/recipes/tiny.yaml", "--out", "/out/run",
                        readonly={recipes: "/recipes"}, mounts={out: "/out"})
    assert done.returncode == 3, f"exit {done.returncode}:\n{done.stderr[-3000:]}"
    run = json.loads((out / "run/run.json").read_text())
    assert run["gate"]["passed"] is False and run["exit_code"] == 3
    assert [step["step"] for step in run["steps"]][-1] == "validate", "a step ran after the failed gate"
    assert (out / "run/report.md").is_file()
