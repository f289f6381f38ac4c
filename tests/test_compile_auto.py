"""compile target auto: candidates built for the serving CPU, each measured with validate's harness, the fastest
that passes the accuracy rules kept; the table, the hardware and the exclusions recorded. On the small digits CNN."""

from __future__ import annotations

import json

import pytest

from conftest import assert_bad_input, run_cli
from slimops.core import run_step
from slimops.handlers import load

SEARCH = {"data": {"format": "digits", "split": "test", "limit": 120},
          "calibration": {"format": "digits", "split": "train", "limit": 64},
          "max_metric_drop": 2.0, "rounds": 2, "latency_runs": 5, "throughput_samples": 64,
          "calibration_samples": 32}


def auto(digits_onnx, out, **extra):
    return run_step("compile", digits_onnx, out, {"target": "auto", "search": {**SEARCH, **extra.pop("search", {})},
                                                  **extra}, threads=2)


def test_auto_keeps_the_fastest_candidate_that_passes(digits_onnx, tmp_path):
    out = tmp_path / "auto"
    manifest = auto(digits_onnx, out)
    found = manifest["details"]["auto"]
    rows = found["candidates"]
    measured = [r for r in rows if r["status"] == "measured"]
    assert {"ort-fp32", "ort-int8-dynamic", "ort-int8-static"} <= {r["candidate"] for r in measured}
    for row in measured:
        assert {"metric", "metric_drop", "speedup", "p50_ms", "size_mb", "precision_ran", "pareto"} <= set(row)
    passing = [r for r in measured if r["accuracy_ok"]]
    kept = next(r for r in rows if r["chosen"])
    assert kept["accuracy_ok"] and kept["metric_drop"] <= 2.0
    assert kept["speedup"] == max(r["speedup"] for r in passing)
    assert kept["pareto"] or any(r["pareto"] for r in measured)
    # The kept artifact is in OUT, in its own format, and runs.
    assert manifest["model"]["format"] == kept["format"]
    assert (out / manifest["model"]["file"]).is_file()
    assert load(out).predict(__import__("numpy").zeros((2, 1, 8, 8), "float32")).shape == (2, 10)
    # The CPU the search was for is in the config (and so the cache key), and in the details.
    assert manifest["config"]["target_hardware"] == found["hardware"]["features"]
    assert found["hardware"]["source"] == "detected"
    assert manifest["config"]["measured_on"] == found["measured_on"]["features"]
    if __import__("importlib").util.find_spec("openvino"):
        assert "openvino-fp32" in {r["candidate"] for r in measured}
        ov32 = next(r for r in rows if r["candidate"] == "openvino-fp32")
        assert ov32["precision_ran"] == "fp32"
        int8_bf16 = next(r for r in rows if r["candidate"] == "openvino-int8-bf16")
        if {"avx512_bf16", "amx_bf16"} & set(found["hardware"]["features"]):
            # The NNCF model again, its float ops compiled bf16: the precision that ran is read back, not assumed.
            assert int8_bf16["status"] == "measured" and int8_bf16["precision_ran"] == "int8/bf16"
        else:
            assert int8_bf16["status"] == "excluded" and "bf16" in int8_bf16["reason"]


def test_serve_target_that_cannot_take_a_format_excludes_it(digits_onnx, tmp_path):
    manifest = auto(digits_onnx, tmp_path / "kserve", search={"serve_on": "kserve"})
    rows = manifest["details"]["auto"]["candidates"]
    for row in rows:
        if row["format"] == "openvino":
            assert row["status"] == "excluded" and "kserve takes onnx only" in row["reason"]
    assert manifest["model"]["format"] == "onnx"


def test_target_hardware_shapes_the_candidates(digits_onnx, tmp_path):
    """c6a is AMD Milan (AVX2 only): no bf16 candidate, and ORT INT8 uses 7-bit weights (no VNNI)."""
    manifest = auto(digits_onnx, tmp_path / "c6a", target_hardware="c6a", search={"formats": ["onnx", "openvino"]})
    found = manifest["details"]["auto"]
    assert found["hardware"] == {"name": "aws:c6a", "source": "family", "features": ["avx2"], "level": "avx2"}
    # The machine that measured is in the config, so in the cache key, too.
    assert manifest["config"]["measured_on"] == found["measured_on"]["features"]
    rows = {r["candidate"]: r for r in found["candidates"]}
    assert rows["openvino-bf16"]["status"] == "excluded" and "bf16" in rows["openvino-bf16"]["reason"]
    assert rows["openvino-int8-bf16"]["status"] == "excluded" and "bf16" in rows["openvino-int8-bf16"]["reason"]
    assert rows["ort-int8-dynamic"]["build"]["reduce_range"] is True


def test_bad_target_hardware_exits_2(digits_onnx, tmp_path):
    out = tmp_path / "x"
    search = json.dumps(SEARCH)
    done = run_cli("step", "compile", "--model", digits_onnx, "--out", out, "--set", "target=auto",
                   "--set", f"search={search}", "--set", "target_hardware=c99z")
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "c99z" in line and "instance family" in line
    done = run_cli("step", "compile", "--model", digits_onnx, "--out", out, "--set", "target=auto",
                   "--set", f"search={search}", "--set", "target_hardware=c7g")
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "ARM" in line


def test_auto_needs_search_data(digits_onnx, tmp_path):
    from slimops.errors import BadInput

    with pytest.raises(BadInput, match="target auto needs search"):
        run_step("compile", digits_onnx, tmp_path / "x", {"target": "auto"})


def test_recipe_run_reports_the_table_and_pareto_plot_and_is_cached(digits_onnx, tmp_path):
    import yaml

    recipe = {
        "name": "digits-auto", "model": {"path": str(digits_onnx)}, "threads": 2,
        "data": {"test": {"format": "digits", "split": "test", "limit": 120},
                 "train": {"format": "digits", "split": "train", "limit": 64}},
        "steps": [
            {"step": "compile", "config": {"target": "auto", "search": {
                **SEARCH, "data": "test", "calibration": "train", "formats": ["onnx"]}}},
            {"step": "validate", "config": {"data": "test", "rounds": 2, "latency_runs": 5, "throughput_samples": 64,
                                            "measure_memory": False,
                                            "gate": {"max_metric_drop": 2.0, "min_speedup": None}}},
        ],
    }
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    done = run_cli("run", path, "--out", run_dir)
    assert done.returncode == 0, done.stderr
    page = (run_dir / "report.html").read_text()
    assert "compile auto (compile): candidates for" in page and page.count("<svg") == 2
    assert "ort-int8-static" in page and "KEPT" in page and "precision ran" in page
    md = (run_dir / "report.md").read_text()
    assert "| ort-fp32 | onnx | fp32 |" in md
    again = run_cli("run", path, "--out", run_dir)
    assert again.returncode == 0, again.stderr
    summary = json.loads((run_dir / "run.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["cached", "cached"]


def test_nncf_accuracy_control_runs_when_plain_int8_fails_the_rules(digits_onnx, tmp_path):
    """The premise is built: calibration images at a twentieth of their brightness give activation ranges that
    clip real inputs, so NNCF's plain INT8 loses accuracy on every CPU; accuracy control must then run."""
    pytest.importorskip("nncf")
    import numpy as np

    from slimops.data import DataSpec, load_dataset

    train = load_dataset(DataSpec(format="digits", split="train", limit=64))
    np.savez(tmp_path / "dim.npz", x=train.inputs * 0.05, y=train.labels)
    manifest = auto(digits_onnx, tmp_path / "aac", search={
        "formats": ["openvino"], "max_metric_drop": 0.5,
        "calibration": {"format": "npz", "path": str(tmp_path / "dim.npz")}})
    rows = {r["candidate"]: r for r in manifest["details"]["auto"]["candidates"]}
    plain = rows["openvino-int8"]
    assert plain["status"] == "measured" and not plain["accuracy_ok"], "plain INT8 lost nothing: nothing to control"
    control = rows["openvino-int8-accuracy"]
    assert control["build"]["mode"] == "quantize_with_accuracy_control"
    assert control["status"] == "measured" and control["metric_drop"] < plain["metric_drop"]
    assert all(r["format"] == "openvino" for r in rows.values() if r["status"] == "measured")


def test_the_readme_auto_example_runs_as_copied(tmp_path):
    """The README's `compile target: auto` steps under the digits pipeline example's model and data."""
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    start = readme.index("```yaml\n", readme.index("#### compile target: auto")) + len("```yaml\n")
    steps = yaml.safe_load(readme[start:readme.index("```", start)])["steps"]
    recipe = yaml.safe_load((repo / "examples" / "digits-pipeline.yaml").read_text())
    recipe["steps"] = steps
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    done = run_cli("run", tmp_path / "recipe.yaml", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = json.loads((tmp_path / "run" / "steps" / "compile" / "manifest.json").read_text())
    found = compiled["details"]["auto"]
    assert found["chosen"] and sum(r["status"] == "measured" for r in found["candidates"]) >= 3
    assert "compile auto (compile)" in (tmp_path / "run" / "report.html").read_text()


def test_latency_objective_keeps_the_lowest_batch1_p50(digits_onnx, tmp_path):
    """objective: latency (an endpoint answering one request at a time) keeps the passing candidate with the
    lowest batch-1 p50, whatever its batch throughput."""
    manifest = auto(digits_onnx, tmp_path / "latency", search={"objective": "latency"})
    found = manifest["details"]["auto"]
    assert found["objective"] == "latency"
    passing = [r for r in found["candidates"] if r["status"] == "measured" and r["accuracy_ok"]]
    kept = next(r for r in found["candidates"] if r["chosen"])
    assert kept["p50_ms"] == min(r["p50_ms"] for r in passing)
