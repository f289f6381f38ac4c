"""Bring your own model: a Hugging Face ViTForImageClassification, unseen by slimops, scored with top-1 accuracy
on tensors (the digits test split: the model's pixel_values as slimops reads them).

The model is real and built here, seeded: a small ViT trained on the digits train split (slimops.zoo.vision_classifier;
fewer epochs than the example's build). The README's image-classification recipe runs as copied: export -> INT8 ->
validate, gated against the PyTorch original.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES, REPO, assert_bad_input, link_tree, run_cli

FAST = ["--set", "measure_memory=false", "--set", "rounds=1", "--set", "latency_runs=5"]


@pytest.fixture(scope="session")
def vision_classifier(artifacts) -> Path:
    from slimops.zoo.vision_classifier import build

    return build(artifacts / "vision-classifier", epochs=6, threads=1)


def readme_recipe() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
    section = section.split("\n### image-classification", 1)[1].split("\n### ", 1)[0]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory, vision_classifier):
    """The README recipe, as copied, beside the model it names; run once with `slimops run`."""
    home = tmp_path_factory.mktemp("vision-recipe")
    (home / "recipe.yaml").write_text(readme_recipe())
    link_tree(vision_classifier, home / "models" / "vision-classifier")
    done = run_cli("run", home / "recipe.yaml", "--out", home / "run", timeout=600)
    return home, done


def test_the_example_recipe_is_the_readme_recipe():
    assert (EXAMPLES / "vision-classifier.yaml").read_text() == readme_recipe()


def test_the_task_and_input_shape_come_from_config_json(vision_classifier):
    from slimops.handlers import describe, load

    config = json.loads((vision_classifier / "config.json").read_text())
    assert config["architectures"] == ["ViTForImageClassification"]
    assert config["id2label"] == {str(d): str(d) for d in range(10)}
    info = describe(vision_classifier)
    assert (info.format, info.task, info.input_shape, info.num_labels) == ("hf", "tensor-classification", [1, 8, 8], 10)
    images = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    logits = load(vision_classifier, info, threads=1).predict(images)
    assert logits.shape == (3, 10) and logits.dtype == np.float32


def test_readme_recipe_compresses_and_gates_the_vision_classifier(vision_run):
    home, done = vision_run
    report = json.loads((home / "run" / "steps" / "validate" / "gate_report.json").read_text())
    metrics, checks = report["metrics"], {row["check"]: row for row in report["checks"]}
    # The exit code is the verdict: 0 pass, 3 fail, 4 inconclusive (the speed rule on a busy machine).
    assert done.returncode == {"pass": 0, "fail": 3, "inconclusive": 4}[report["verdict"]], done.stderr[-2000:]
    assert metrics["metric"] == "accuracy" and metrics["examples"] == 450
    assert metrics["baseline_metric"] > 70, metrics  # ten classes: chance is 10%
    assert metrics["fidelity"] == metrics["top1_agreement"] >= 98
    for rule in ("metric_drop", "fidelity", "size_ratio"):
        assert checks[rule]["status"] == "pass", checks[rule]
    assert metrics["size_ratio"] < 0.4
    export = json.loads((home / "run" / "steps" / "export" / "manifest.json").read_text())
    assert export["config"]["task"] == "image-classification"
    assert export["metrics"]["parity_max_abs_diff"] < 1e-3


def test_a_bare_exported_vision_graph_is_a_tensor_classifier(vision_run):
    """An ONNX directory with no manifest: optimum leaves every pixel_values dimension dynamic, config.json beside
    it gives the image's shape."""
    import onnx

    from slimops.handlers import describe

    home, _ = vision_run
    bare = home / "bare-onnx"
    bare.mkdir()
    for path in (home / "run" / "steps" / "export").iterdir():
        if path.name != "manifest.json":
            shutil.copyfile(path, bare / path.name)
    graph = onnx.load(str(bare / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["pixel_values"]
    info = describe(bare)
    assert (info.format, info.task, info.input_shape, info.num_labels) == (
        "onnx", "tensor-classification", [1, 8, 8], 10)


def _validate(vision_run, vision_classifier, out: Path, *extra):
    home, _ = vision_run
    return run_cli("step", "validate", "--model", home / "run" / "steps" / "quantize", "--baseline", vision_classifier,
                   "--out", out, *FAST, *extra)


def test_text_data_for_a_vision_model_exits_2(tmp_path, vision_run, vision_classifier):
    path = tmp_path / "texts.tsv"
    path.write_text("sentence\tlabel\na seven\t7\n")
    out = tmp_path / "out"
    done = _validate(vision_run, vision_classifier, out, "--set", "data.format=tsv", "--set", f"data.path={path}")
    assert "is text but the model takes tensors [1, 8, 8]" in assert_bad_input(done.returncode, done.stderr, out)


def test_images_of_the_wrong_shape_exit_2(tmp_path, vision_run, vision_classifier):
    path = tmp_path / "small.npz"
    np.savez(path, x=np.zeros((4, 1, 4, 4), np.float32), y=np.arange(4))
    out = tmp_path / "out"
    done = _validate(vision_run, vision_classifier, out, "--set", "data.format=npz", "--set", f"data.path={path}")
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "examples have shape [1, 4, 4], the model takes [1, 8, 8]" in line


@pytest.mark.parametrize("change, expected", [
    ({"image_size": None}, "needs 'image_size' (pixels, 1 to 8192, or [height, width]), got nothing"),
    ({"image_size": "8"}, "needs 'image_size' (pixels, 1 to 8192, or [height, width]), got '8'"),
    ({"image_size": [8, 0]}, "needs 'image_size'"),
    ({"num_channels": None}, "needs 'num_channels' (1 to 64, e.g. 3 for RGB), got nothing"),
    ({"num_channels": 0}, "needs 'num_channels' (1 to 64, e.g. 3 for RGB), got 0"),
])
def test_a_vision_config_without_an_image_size_exits_2(tmp_path, vision_classifier, change, expected):
    model = link_tree(vision_classifier, tmp_path / "model")
    config = json.loads((vision_classifier / "config.json").read_text())
    config.update(change)
    (model / "config.json").unlink()  # a hard link to the session's model: replace it, never write through it
    (model / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    out = tmp_path / "out"
    done = run_cli("step", "export", "--model", model, "--out", out)
    assert expected in assert_bad_input(done.returncode, done.stderr, out)


def test_image_classification_on_a_text_model_exits_2(tmp_path, minilm_path):
    out = tmp_path / "out"
    done = run_cli("step", "export", "--model", minilm_path, "--out", out, "--set", "task=image-classification")
    assert "image-classification needs 'num_channels'" in assert_bad_input(done.returncode, done.stderr, out)
