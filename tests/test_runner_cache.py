"""The local runner's cache: unchanged steps are skipped, a changed step and everything after it rerun."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_outputs_match, write_digits_recipe
from slimops.cli import main


def run(recipe: Path, run_dir: Path, *extra: str) -> tuple[dict, float]:
    started = time.perf_counter()
    code = main(["run", str(recipe), "--out", str(run_dir), *extra])
    elapsed = time.perf_counter() - started
    summary = json.loads((run_dir / "run.json").read_text())
    assert code == summary["exit_code"] == 0
    return summary, elapsed


def statuses(summary: dict) -> dict[str, str]:
    return {step["id"]: step["status"] for step in summary["steps"]}


@pytest.fixture(scope="module")
def test_npz(tmp_path_factory, digits_test) -> Path:
    path = tmp_path_factory.mktemp("data") / "test.npz"
    np.savez(path, x=digits_test.inputs[:120], y=digits_test.labels[:120])
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, test_npz):
    """One full run of the tiny recipe; tests copy its run directory before changing anything."""
    root = tmp_path_factory.mktemp("cache")
    recipe = write_digits_recipe(root / "recipe.yaml", data={"test": {"format": "npz", "path": str(test_npz)}})
    summary, elapsed = run(recipe, root / "run")
    return {"recipe": recipe, "run_dir": root / "run", "summary": summary, "seconds": elapsed}


@pytest.fixture
def copied_run(tmp_path, first_run) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(first_run["run_dir"], run_dir)
    return run_dir


def test_first_run_runs_every_step(first_run):
    assert statuses(first_run["summary"]) == {"train": "ran", "export": "ran", "quantize": "ran", "validate": "ran"}
    for step in first_run["summary"]["steps"]:
        assert_outputs_match(Path(step["out"]))


def test_second_run_is_cached(first_run, copied_run):
    """Same recipe, same inputs: every step is 'cached' and nothing is rewritten (how much time that saves is a
    benchmark's question, not a unit test's: this machine is shared).

    The run directory is a copy: the cache key depends on content, not on where the run lives.
    """
    before = {p: p.stat().st_mtime_ns for p in (copied_run / "steps").rglob("*") if p.is_file()}
    summary, _ = run(first_run["recipe"], copied_run)
    assert statuses(summary) == dict.fromkeys(("train", "export", "quantize", "validate"), "cached")
    assert {p: p.stat().st_mtime_ns for p in (copied_run / "steps").rglob("*") if p.is_file()} == before
    # cached steps still report their metrics, so the report is complete
    assert summary["steps"][-1]["metrics"] == first_run["summary"]["steps"][-1]["metrics"]
    assert (copied_run / "report.md").is_file()


def test_changed_config_reruns_that_step_and_later_ones(tmp_path, first_run, copied_run, test_npz):
    recipe = write_digits_recipe(tmp_path / "recipe.yaml", data={"test": {"format": "npz", "path": str(test_npz)}},
                                 quantize={"mode": "static", "calibration": "train", "calibration_samples": 32})
    summary, _ = run(recipe, copied_run)
    assert statuses(summary) == {"train": "cached", "export": "cached", "quantize": "ran", "validate": "ran"}
    manifest = assert_outputs_match(copied_run / "steps" / "quantize")
    assert manifest["config"]["mode"] == "static"
    validated = json.loads((copied_run / "steps" / "validate" / "gate_report.json").read_text())
    assert validated["candidate_files"]["model.onnx"] == manifest["outputs"]["model.onnx"]


def test_changed_validate_config_reruns_only_validate(tmp_path, copied_run, test_npz):
    recipe = write_digits_recipe(tmp_path / "recipe.yaml", data={"test": {"format": "npz", "path": str(test_npz)}},
                                 validate={"rounds": 3})
    summary, _ = run(recipe, copied_run)
    assert statuses(summary) == {"train": "cached", "export": "cached", "quantize": "cached", "validate": "ran"}
    assert summary["steps"][-1]["metrics"]["timing"]["rounds"] == 4  # 3 rounded up to whole AB+BA pairs


def test_changed_data_content_reruns_the_step_that_reads_it(tmp_path, first_run, copied_run, digits_test):
    """Same path, new content: the cache key holds the data's sha256, not its name."""
    data = tmp_path / "test.npz"
    np.savez(data, x=digits_test.inputs[120:200], y=digits_test.labels[120:200])
    recipe = write_digits_recipe(tmp_path / "recipe.yaml", data={"test": {"format": "npz", "path": str(data)}})
    first, _ = run(recipe, copied_run)
    assert statuses(first)["validate"] == "ran"  # different data than the first run
    np.savez(data, x=digits_test.inputs[200:260], y=digits_test.labels[200:260])
    summary, _ = run(recipe, copied_run)
    assert statuses(summary) == {"train": "cached", "export": "cached", "quantize": "cached", "validate": "ran"}
    assert summary["steps"][-1]["metrics"]["examples"] == 60


def test_recipe_without_a_gate(tmp_path, copied_run, test_npz):
    """A recipe with no validate step exits 0 and its report says there was no gate."""
    import yaml

    recipe = write_digits_recipe(tmp_path / "recipe.yaml", data={"test": {"format": "npz", "path": str(test_npz)}})
    spec = yaml.safe_load(recipe.read_text())
    spec["steps"] = spec["steps"][:2]  # train, export
    recipe.write_text(yaml.safe_dump(spec, sort_keys=False))
    summary, _ = run(recipe, copied_run)
    assert statuses(summary) == {"train": "cached", "export": "cached"} and summary["gate"] is None
    md = (copied_run / "report.md").read_text()
    assert "**Gate: NO GATE**" in md and "the recipe has no validate step" in md


def test_no_cache_reruns_everything(first_run, copied_run):
    summary, _ = run(first_run["recipe"], copied_run, "--no-cache")
    assert set(statuses(summary).values()) == {"ran"}


def test_incomplete_step_output_is_rerun(first_run, copied_run):
    """A step directory missing one of its manifest's files is not trusted as a cache hit."""
    (copied_run / "steps" / "export" / "model.onnx").unlink()
    summary, _ = run(first_run["recipe"], copied_run)
    assert statuses(summary)["export"] == "ran"
    assert_outputs_match(copied_run / "steps" / "export")


def test_changed_model_kwargs_rebuild_the_source(tmp_path, copied_run, test_npz):
    recipe = write_digits_recipe(tmp_path / "recipe.yaml", data={"test": {"format": "npz", "path": str(test_npz)}},
                                 kwargs={"channels": 4, "hidden": 48})
    summary, _ = run(recipe, copied_run)
    architecture = json.loads((copied_run / "steps" / "train" / "architecture.json").read_text())
    assert architecture["kwargs"] == {"channels": 4, "hidden": 48}
    assert statuses(summary)["train"] == "ran"


def test_changed_accuracy_target_data_reruns_quantize(tmp_path, copied_run, test_npz, digits_test):
    target = tmp_path / "target.npz"
    np.savez(target, x=digits_test.inputs[:50], y=digits_test.labels[:50])
    recipe = write_digits_recipe(tmp_path / "recipe.yaml", data={"test": {"format": "npz", "path": str(test_npz)}},
                                 quantize={"mode": "dynamic",
                                           "accuracy": {"data": {"format": "npz", "path": str(target)},
                                                        "max_metric_drop": 5.0}})
    first, _ = run(recipe, copied_run)
    assert statuses(first)["quantize"] == "ran"
    np.savez(target, x=digits_test.inputs[50:80], y=digits_test.labels[50:80])
    summary, _ = run(recipe, copied_run)
    assert statuses(summary)["quantize"] == "ran"
