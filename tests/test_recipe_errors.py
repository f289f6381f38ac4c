"""Recipe mistakes are caught before anything runs, and the message points at ``file.yaml:LINE``."""

from __future__ import annotations

import re

import pytest

from conftest import run_cli
from slimops.cli import main

BASE = """\
name: tiny
model:
  factory: slimops.zoo.digits:DigitsCNN
  kwargs: {channels: 4, hidden: 32}
  input_shape: [1, 8, 8]
  num_labels: 10
threads: 1
data:
  train: {format: digits, split: train, limit: 100}
  test: {format: digits, split: test, limit: 50}
steps:
  - step: train
    config: {data: train, epochs: 1}
  - step: export
  - step: quantize
    config:
      mode: dynamic
  - step: validate
    baseline: train
    config:
      data: test
      gate: {max_metric_drop: 5}
"""

# (what to replace, replacement, the text on the line the message must point at, words in the message)
CASES = {
    "unknown_top_level_key": ("threads: 1\n", "threads: 1\nfrobnicate: 3\n", "frobnicate: 3",
                              ["frobnicate", "unknown key"]),
    "unknown_step_config_key": ("      mode: dynamic\n", "      mode: dynamic\n      colour: red\n", "colour: red",
                                ["steps[2].config.colour", "unknown key"]),
    "bad_value": ("      mode: dynamic\n", "      mode: int3\n", "mode: int3", ["steps[2].config.mode", "'int3'"]),
    "bad_nested_value": ("{max_metric_drop: 5}", "{max_metric_drop: 5, min_speedup: fast}", "min_speedup: fast",
                         ["steps[3].config.gate.min_speedup", "'fast'"]),
    "bad_data_spec": ("split: test, limit: 50", "split: test, limit: -3", "limit: -3", ["data.test.limit"]),
    "bad_model_source": ("  num_labels: 10\n", "  num_labels: 10\n  path: somewhere\n", "model:",
                         ["exactly one of path, package or factory"]),
    "package_not_a_module_name": ("  factory: slimops.zoo.digits:DigitsCNN\n", "  package: ../../etc/passwd\n",
                                  "package: ../../etc/passwd", ["model.package", "pattern"]),
    "unknown_dataset": ("      data: test\n", "      data: tset\n", "data: tset",
                        ["steps[3].config.data", "unknown dataset 'tset'", "train, test"]),
    "unknown_step": ("  - step: export\n", "  - step: exprot\n", "step: exprot", ["steps[1].step", "unknown step 'exprot'"]),
    "duplicate_step_id": ("  - step: export\n", "  - step: export\n    id: train\n", "step: export",
                          ["steps[1]", "'train' is used twice"]),
    "unknown_input_reference": ("    baseline: train\n", "    baseline: trian\n", "baseline: trian",
                                ["steps[3].baseline", "'trian' is not an earlier step"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_recipe_error_names_file_and_line(tmp_path, capsys, case):
    old, new, marker, words = CASES[case]
    assert old in BASE
    text = BASE.replace(old, new, 1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    expected_line = next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)
    out = tmp_path / "run"

    code = main(["run", str(recipe), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("slimops: error:"), err
    located = re.search(rf"{re.escape(str(recipe))}:(\d+)", err)
    assert located, f"no {recipe}:LINE in {err!r}"
    assert int(located.group(1)) == expected_line, err
    for word in words:
        assert word in err
    assert not out.exists(), "a recipe error must stop before anything is written"


def test_invalid_yaml_names_the_line(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(BASE.replace("  - step: export\n", "  - step: [export\n"))
    done = run_cli("run", recipe, "--out", tmp_path / "run")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"slimops: error: {recipe}:"), done.stderr
    assert "not valid YAML" in lines[0]


def test_missing_data_file_fails_the_step_cleanly(tmp_path, capsys):
    """Data paths are checked when a step reads them: exit 2, one line, no step output written."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BASE.replace("train: {format: digits, split: train, limit: 100}",
                                   "train: {format: npz, path: data/train.npz}"))
    out = tmp_path / "run"
    code = main(["run", str(recipe), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("slimops: error: data file not found") and str(tmp_path / "data" / "train.npz") in err
    assert not (out / "steps" / "train").exists()
    assert not (out / "steps").exists() or list((out / "steps").glob(".*")) == []


def test_missing_recipe_file(tmp_path):
    done = run_cli("run", tmp_path / "nope.yaml")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("slimops: error: recipe not found")


def test_example_recipes_load(tmp_path):
    """The shipped examples are valid recipes whose data files exist."""
    from pathlib import Path

    from conftest import EXAMPLES
    from slimops.recipe import load_recipe

    for name in ("digits-cnn.yaml", "minilm-sts.yaml", "minilm-distill.yaml", "pair-classifier.yaml"):
        recipe = load_recipe(EXAMPLES / name)
        assert recipe.steps[-1].step == "validate"
        for spec in recipe.data.values():
            assert spec.path is None or Path(spec.path).is_file(), spec.path
