"""The shipped examples, run as a user runs them, and the report they produce."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pytest

from conftest import EXAMPLES, REPO, assert_outputs_match, link_tree, run_cli
from slimops.cli import main
from slimops.runner import RUN_MARKER
from slimops.steps import get_step, step_names


def test_steps_lists_every_step_and_option(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one table row per option
    assert main(["steps"]) == 0
    listing = capsys.readouterr().out
    assert set(step_names()) == {"export", "compile", "quantize", "validate", "train", "prune", "factorize", "pack",
                                 "distill", "register", "promote", "deploy"}
    for name in step_names():
        assert re.search(rf"^{name}: ", listing, re.M), f"step {name} missing from `slimops steps`"
        for option in get_step(name).Config.model_fields:
            assert re.search(rf"│ {option} +│", listing), f"{name}.{option} missing from `slimops steps`"


def test_steps_for_one_step(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["steps", "quantize"]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("quantize: ") and "calibration_method" in listing and "opset" not in listing


def table(md: str, header_start: str) -> list[list[str]]:
    """The rows of the Markdown table whose header starts with ``header_start``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("x"))


def check_report(run_dir: Path, code: int, metric: str, candidate: str) -> dict:
    """report.md/.html exist, hold measured numbers for baseline and candidate, and a verdict matching the exit code."""
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["exit_code"] == code
    verdict = "PASSED" if summary["gate"]["passed"] else "FAILED"
    assert code == (0 if verdict == "PASSED" else 3)
    md = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    assert f"**Gate: {verdict}** (step `validate`)" in md
    assert f"Gate: {verdict}" in html and "<svg" in html and "<table>" in html

    rows = {row[0]: row for row in table(md, f"| model | {metric} |")}
    assert set(rows) == {"baseline", candidate}
    validate = json.loads((run_dir / "steps" / "validate" / "manifest.json").read_text())["metrics"]
    for role, name in (("baseline", "baseline"), ("candidate", candidate)):
        row = rows[name]
        assert number(row[1]) == pytest.approx(validate[f"{role}_metric"], abs=0.01)
        assert number(row[2]) == pytest.approx(validate[f"{role}_p50_ms"], abs=0.01) and number(row[2]) > 0
        assert number(row[4]) > 0 and number(row[6]) > 0  # throughput, size MB
        assert number(row[7]) > 0  # peak MB, measured in a fresh process
    assert number(rows[candidate][5]) == pytest.approx(validate["speedup"], abs=0.01)
    checks = table(md, "| check | measured |")
    assert {c[0] for c in checks} == {"metric_drop", "speedup", "size_ratio"}
    assert all(c[-1] in ("pass", "FAIL") for c in checks)
    speedup = next(c for c in checks if c[0] == "speedup")
    assert speedup[2].startswith("[")  # its interval, from the bootstrap over timing pairs
    lineage = table(md, "| step | file |")
    assert lineage[-1][0] == "source"
    return summary


def check_rerender(run_dir: Path) -> None:
    """`slimops report RUN_DIR` rebuilds both files from run.json and the manifests alone."""
    before = {name: (run_dir / name).read_text() for name in ("report.md", "report.html")}
    for name in before:
        (run_dir / name).unlink()
    done = run_cli("report", run_dir)
    assert done.returncode == 0, done.stderr
    assert str(run_dir / "report.html") in done.stdout
    for name, text in before.items():
        again = (run_dir / name).read_text()
        assert again == text, "\n".join(difflib.unified_diff(text.splitlines(), again.splitlines(), lineterm=""))


@pytest.mark.slow
def test_digits_example(tmp_path):
    """Train -> export -> static INT8 -> validate against the trained model (about a minute)."""
    run_dir = tmp_path / "digits-run"
    done = run_cli("run", EXAMPLES / "digits-cnn.yaml", "--out", run_dir)
    assert done.returncode in (0, 3), done.stderr
    summary = check_report(run_dir, done.returncode, "accuracy", "quantize")
    assert [(s["id"], s["status"]) for s in summary["steps"]] == [
        ("train", "ran"), ("export", "ran"), ("quantize", "ran"), ("validate", "ran")]
    for step in summary["steps"]:
        assert_outputs_match(Path(step["out"]))
    validate = summary["steps"][-1]["metrics"]
    assert validate["baseline_metric"] > 90  # the baseline really was trained
    assert validate["metric_drop"] <= 1.0  # static INT8 keeps the accuracy the example's gate asks for
    assert validate["size_ratio"] <= 0.5
    check_rerender(run_dir)


@pytest.mark.slow
def test_minilm_example(tmp_path, minilm_onnx):
    """all-MiniLM-L6-v2 -> ONNX -> compile target auto -> gate on STS-B dev against PyTorch (several minutes).

    The export step is seeded from the session's artifact, made with the example's exact config: the runner must
    recognise it by content (status 'cached'). The search and the gate run for real on the full STS-B dev set.
    """
    run_dir = tmp_path / "minilm-run"
    link_tree(minilm_onnx, run_dir / "steps" / "export")
    (run_dir / RUN_MARKER).write_text("minilm-sts\n")  # as an earlier run of the recipe left it
    code = main(["run", str(EXAMPLES / "minilm-sts.yaml"), "--out", str(run_dir)])
    assert code in (0, 3)
    summary = check_report(run_dir, code, "spearman", "compile")
    assert [(s["id"], s["status"]) for s in summary["steps"]] == [
        ("export", "cached"), ("compile", "ran"), ("validate", "ran")]
    compiled = json.loads((run_dir / "steps" / "compile" / "manifest.json").read_text())
    rows = {r["candidate"]: r for r in compiled["details"]["auto"]["candidates"]}
    kept = next(r for r in rows.values() if r["chosen"])
    # The kept candidate is the fastest of those within the search's rules (0.3 points, 0.35 of the size).
    within = [r for r in rows.values() if r["status"] == "measured" and r["metric_drop"] <= 0.3
              and r["size_mb"] <= 0.35 * rows["ort-fp32"]["size_mb"] * 1.01]
    assert kept["speedup"] == max(r["speedup"] for r in within)
    assert compiled["model"]["format"] == kept["format"]
    # Static INT8 keeps ORT's int8 attention: the fused Attention ops become QAttention, the MatMuls static QDQ.
    static = rows["ort-int8-static"]
    assert static["status"] == "measured" and static["build"]["attention"] == "QAttention (int8)"
    validate = summary["steps"][-1]["metrics"]
    assert validate["examples"] > 2500  # every sentence of STS-B dev
    assert validate["baseline_metric"] > 80  # MiniLM's real STS-B quality
    assert validate["metric_drop"] <= 0.5 and validate["mean_cosine"] > 0.98
    assert validate["size_ratio"] <= 0.35
    md = (run_dir / "report.md").read_text()
    assert f"| {kept['candidate']} |" in md and "KEPT" in md  # the search's whole table is in the report
    check_rerender(run_dir)


def test_the_readme_recipe_is_the_demo_example():
    """The README's Recipes block is examples/minilm-sts.yaml as shipped (test_minilm_example runs that file)."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("```yaml\n", readme.index("## Recipes")) + len("```yaml\n")
    assert readme[start:readme.index("```", start)] == (EXAMPLES / "minilm-sts.yaml").read_text()
