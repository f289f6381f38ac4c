"""The manifest contract: any model slimops writes can be traced back to its source and data.

export -> quantize -> validate through ``slimops step`` (separate processes, as a pipeline runs
them); every manifest records the step, its resolved config, the sha256 of what it wrote,
metrics, library versions and its parent, down to a ``source`` record of the original model.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_outputs_match, run_cli
from slimops.core import parse_config
from slimops.manifest import hash_tree, sha256_file


@pytest.fixture(scope="module")
def chain(tmp_path_factory, digits_trained, digits_test):
    """Run export, quantize (static) and validate as three CLI processes; return their directories."""
    root = tmp_path_factory.mktemp("chain")
    test_npz = root / "digits-test.npz"
    np.savez(test_npz, x=digits_test.inputs[:200], y=digits_test.labels[:200])
    dirs = {name: root / name for name in ("export", "quantize", "validate")}
    configs = {
        "export": {"opset": 17},
        "quantize": {"mode": "static", "calibration": {"format": "digits", "split": "train", "limit": 64},
                     "calibration_method": "minmax"},
        "validate": {"data": {"format": "npz", "path": str(test_npz)}, "rounds": 2, "latency_runs": 5,
                     "throughput_samples": 64, "measure_memory": False,
                     "gate": {"max_metric_drop": 10.0, "min_speedup": None}},
    }
    for name in configs:
        (root / f"{name}.json").write_text(json.dumps(configs[name]))
    steps = [("export", digits_trained, []), ("quantize", dirs["export"], []),
             ("validate", dirs["quantize"], ["--baseline", digits_trained])]
    for name, model, extra in steps:
        done = run_cli("step", name, "--model", model, "--out", dirs[name], "--config", root / f"{name}.json", *extra)
        assert done.returncode == 0, f"{name} failed:\n{done.stderr}"
        printed = json.loads(done.stdout)
        assert printed["step"] == name and printed["out"] == str(dirs[name].absolute())
    return {"dirs": dirs, "configs": configs, "test_npz": test_npz, "trained": digits_trained}


def manifest_of(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


@pytest.mark.parametrize("name", ["export", "quantize", "validate"])
def test_manifest_records_step_config_outputs_metrics_versions(chain, name):
    out = chain["dirs"][name]
    manifest = assert_outputs_match(out)  # sha256 of every file written, and nothing else
    assert manifest["step"] == name
    # The resolved config: what was given plus every default, so a rerun can reproduce it.
    assert manifest["config"] == parse_config(name, chain["configs"][name]).model_dump(mode="json")
    assert manifest["metrics"], "no metrics recorded"
    assert manifest["model"]["file"] in manifest["outputs"]
    assert manifest["versions"]["slimops"]
    for library in ("torch", "onnx", "onnxruntime", "numpy"):
        assert manifest["versions"][library] == metadata.version(library)
    assert manifest["cache_key"] and manifest["created"]


def test_each_manifest_names_its_parent(chain):
    dirs = chain["dirs"]
    assert manifest_of(dirs["validate"])["parent"] == manifest_of(dirs["quantize"])
    assert manifest_of(dirs["quantize"])["parent"] == manifest_of(dirs["export"])
    assert manifest_of(dirs["export"])["parent"] == manifest_of(chain["trained"])
    # inputs: where the model came from and the hashes of the files it was made from
    quantize = manifest_of(dirs["quantize"])
    assert quantize["inputs"]["model"] == {"path": str(dirs["export"].absolute()),
                                           "files": manifest_of(dirs["export"])["outputs"]}
    validate = manifest_of(dirs["validate"])
    assert validate["inputs"]["baseline"]["path"] == str(chain["trained"].absolute())
    assert validate["inputs"]["baseline"]["files"] == manifest_of(chain["trained"])["outputs"]


def test_lineage_ends_at_a_source_record_with_the_original_path(chain, digits_source):
    node, steps = manifest_of(chain["dirs"]["validate"]), []
    while node.get("parent"):
        steps.append(node["step"])
        node = node["parent"]
    assert steps == ["validate", "quantize", "export", "train"]
    assert node["step"] == "source"
    assert node["path"] == str(digits_source.absolute())
    assert node["outputs"] == hash_tree(digits_source)  # the original weights, by content
    assert node["model"]["factory"] == "slimops.zoo.digits:DigitsCNN"


def test_manifest_records_the_data_it_read(chain):
    validate = manifest_of(chain["dirs"]["validate"])
    assert validate["data"]["data"]["sha256"] == sha256_file(chain["test_npz"])
    quantize = manifest_of(chain["dirs"]["quantize"])
    assert quantize["data"]["calibration"] == {"format": "digits", "split": "train", "limit": 64,
                                               "text_column": 0, "label_column": 1}


def test_metrics_are_the_measured_ones(chain):
    export = manifest_of(chain["dirs"]["export"])
    assert 0 <= export["metrics"]["parity_max_abs_diff"] < export["config"]["tolerance"]
    quantize = manifest_of(chain["dirs"]["quantize"])
    size = (chain["dirs"]["quantize"] / "model.onnx").stat().st_size / 1e6
    assert quantize["metrics"]["size_mb"] == pytest.approx(size)
    assert quantize["metrics"]["size_mb"] < quantize["metrics"]["source_size_mb"]
    assert quantize["details"]["quantized_nodes"]
    validate = manifest_of(chain["dirs"]["validate"])["metrics"]
    assert validate["metric"] == "accuracy" and validate["examples"] == 200
    assert validate["metric_drop"] == pytest.approx(validate["baseline_metric"] - validate["candidate_metric"])
    assert validate["speedup"] > 0 and validate["candidate_p95_ms"] >= validate["candidate_p50_ms"] > 0


def test_gate_report_travels_with_the_candidate(chain):
    out = chain["dirs"]["validate"]
    report = json.loads((out / "gate_report.json").read_text())
    manifest = manifest_of(out)
    assert report["passed"] is True and manifest["gate"] == {"passed": True, "reasons": [], "verdict": "pass"}
    assert report["checks"] == manifest["details"]["checks"]
    assert report["metrics"] == manifest["metrics"]
    # candidate_files: every candidate file next to the verdict, with hashes matching the directory
    assert report["candidate_files"] == hash_tree(out, skip=("manifest.json", "gate_report.json"))
    # ... and the validated model is byte-for-byte the quantize step's output
    assert report["candidate_files"]["model.onnx"] == manifest_of(chain["dirs"]["quantize"])["outputs"]["model.onnx"]
    assert report["data"]["sha256"] == sha256_file(chain["test_npz"])
    assert report["baseline"] == {"kind": "input", "path": str(chain["trained"])}
