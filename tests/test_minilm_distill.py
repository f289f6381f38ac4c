"""Distillation chains as a user runs them: `slimops run` with a distill step, a middle gate that stops the
chain, the recovery fine-tune (student.from_input) fed its teacher by the recipe, and the MiniLM example
shrunk to a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import DIGITS_FACTORY, EXAMPLES, run_cli

MOBILENET = "slimops.zoo.digits:DigitsMobileNet"


def test_middle_gate_stops_a_distill_chain(tmp_path):
    """train -> distill (new student) -> distill (from_input, teacher = train) -> gate -> export: the gate fails."""
    recipe = {
        "name": "digits-distill-chain",
        "model": {"factory": DIGITS_FACTORY, "kwargs": {"channels": 4, "hidden": 32}, "input_shape": [1, 8, 8],
                  "num_labels": 10, "seed": 0},
        "threads": 1,
        "data": {"train": {"format": "digits", "split": "train", "limit": 400},
                 "test": {"format": "digits", "split": "test", "limit": 150}},
        "steps": [
            {"step": "train", "config": {"data": "train", "epochs": 3, "lr": 0.01}},
            {"step": "distill", "id": "student",
             "config": {"student": {"factory": MOBILENET, "kwargs": {"channels": 4}}, "data": "train",
                        "max_steps": 20, "batch_size": 32, "eval_every": 10}},
            {"step": "distill", "id": "recover", "baseline": "train",
             "config": {"student": {"from_input": True}, "data": "train", "eval_data": "test",
                        "max_steps": 20, "batch_size": 32, "eval_every": 10}},
            {"step": "validate", "id": "student-gate", "baseline": "train",
             "config": {"data": "test", "rounds": 2, "latency_runs": 5, "throughput_samples": 64,
                        "measure_memory": False, "gate": {"max_metric_drop": 100.0, "min_speedup": 1000.0}}},
            {"step": "export", "input": "recover"},
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_dir = tmp_path / "run"
    result = run_cli("run", path, "--out", run_dir)
    assert result.returncode == 3, result.stderr
    summary = json.loads((run_dir / "run.json").read_text())
    assert [s["id"] for s in summary["steps"]] == ["train", "student", "recover", "student-gate"]
    assert summary["gate"]["step"] == "student-gate" and summary["gate"]["passed"] is False
    assert any("speedup" in reason for reason in summary["gate"]["reasons"]), summary["gate"]
    assert not (run_dir / "steps" / "export").exists()  # a rejected model never reaches the next stage
    recover = json.loads((run_dir / "steps" / "recover" / "manifest.json").read_text())
    # the recipe's baseline is the teacher of the from_input student; the input is the previous student
    assert recover["inputs"]["baseline"]["path"] == str(run_dir / "steps" / "train")
    assert recover["inputs"]["model"]["path"] == str(run_dir / "steps" / "student")
    assert recover["parent"]["step"] == "distill"
    assert json.loads((run_dir / "steps" / "recover" / "architecture.json").read_text())["factory"] == MOBILENET
    assert "student-gate" in (run_dir / "report.md").read_text()


def test_minilm_distill_example_is_the_chain_the_benchmark_measures():
    from slimops.recipe import load_recipe

    recipe = load_recipe(EXAMPLES / "minilm-distill.yaml")
    chain = [(s.id, s.step, s.input) for s in recipe.steps]
    assert chain == [("distill", "distill", "source"), ("student-gate", "validate", "distill"),
                     ("export", "export", "distill"), ("compile", "compile", "export"),
                     ("validate", "validate", "compile")]
    assert recipe.steps[3].config["target"] == "auto"
    distill = recipe.steps[0].config
    assert distill["data"]["path"].endswith("sts-train.tsv") and distill["eval_data"]["path"].endswith("sts-train.tsv")
    for gate_step in (recipe.steps[1], recipe.steps[-1]):
        assert gate_step.baseline == "source" and gate_step.config["data"]["path"].endswith("sts-dev.tsv")
        assert gate_step.config["gate"]["max_metric_drop"] == 1.5


@pytest.mark.slow
def test_minilm_distill_recipe_runs_end_to_end_when_shrunk(tmp_path):
    """The example with a few training steps and small data: every stage runs and hands on its output."""
    recipe = yaml.safe_load((EXAMPLES / "minilm-distill.yaml").read_text())
    data_dir = EXAMPLES / "data" / "stsb"
    recipe["data"] = {"transfer": {"format": "text", "path": str(data_dir / "sts-train.tsv"), "limit": 128},
                      "heldout": {"format": "sts", "path": str(data_dir / "sts-train.tsv"), "limit": 50},
                      "dev": {"format": "sts", "path": str(data_dir / "sts-dev.tsv"), "limit": 150},
                      "calibration": {"format": "text", "path": str(data_dir / "sts-train.tsv"), "limit": 32}}
    # a few training steps give a student whose INT8 variants may differ by points: check the plumbing
    recipe["steps"][3]["config"]["search"].update({"max_metric_drop": 50.0, "rounds": 2, "latency_runs": 5,
                                                   "throughput_samples": 64, "calibration_samples": 32})
    recipe["steps"][0]["config"].update({"max_steps": 8, "eval_every": 4, "batch_size": 16})
    for step in recipe["steps"]:
        if step["step"] == "validate":  # a few training steps cannot keep the accuracy: check the plumbing
            step["config"].update({"throughput_samples": 64, "rounds": 2, "latency_runs": 5, "measure_memory": False,
                                   "gate": {"max_metric_drop": 50.0, "min_speedup": 1.0}})
    path = tmp_path / "minilm-distill.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_dir = tmp_path / "run"
    result = run_cli("run", path, "--out", run_dir)
    summary = json.loads((run_dir / "run.json").read_text())
    assert [s["id"] for s in summary["steps"]] == ["distill", "student-gate", "export", "compile",
                                                   "validate"], result.stderr
    assert result.returncode == 0, result.stderr
    final = json.loads((run_dir / "steps" / "validate" / "gate_report.json").read_text())
    assert final["passed"] is True
    # a 2-layer INT8 student is well over the 6-layer fp32 teacher's speed even on a busy machine
    assert final["metrics"]["speedup"] > 1.0
    assert json.loads((run_dir / "steps" / "distill" / "config.json").read_text())["num_hidden_layers"] == 2
    compiled = json.loads((run_dir / "steps" / "compile" / "manifest.json").read_text())
    assert compiled["parent"]["parent"]["step"] == "distill"
    kept = compiled["details"]["auto"]["chosen"]
    assert compiled["details"]["auto"]["candidates"] and kept
    # the kept model (ONNX or OpenVINO IR) is what the final gate measured
    assert Path(run_dir / "steps" / "validate" / compiled["model"]["file"]).is_file()
