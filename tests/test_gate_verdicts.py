"""The gate's three verdicts: pass and fail only when the evidence is clear, inconclusive (exit 4) when the
machine or the interval cannot decide; accuracy drops judged by a paired-bootstrap interval with ``confidence``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml

from conftest import run_cli, write_digits_recipe
from slimops.data import Dataset
from slimops.evaluate import drop_interval, sample_size_warnings
from slimops.gate import GatePolicy, check, reasons, verdict
from slimops.timing import LoadMonitor, contention_reasons, measure_speed, pinned

FAST = ["--set", "data.format=digits", "--set", "data.split=test", "--set", "measure_memory=false",
        "--set", "latency_runs=10", "--set", "rounds=5"]


def metrics(**overrides) -> dict:
    """What validate measures, for a candidate that is 2x faster (interval [1.8, 2.2]) and drops 0.5 points."""
    m = {"metric_drop": 0.5, "metric_drop_ci": [-0.2, 1.4], "relative_metric_drop": 0.005,
         "relative_metric_drop_ci": [-0.002, 0.014], "speedup": 2.0, "speedup_ci": [1.8, 2.2], "timing_spread": 0.05,
         "size_ratio": 0.3, "candidate_p95_ms": 4.0, "fidelity": 0.99, "timing": {"contention": []}}
    return {**m, **overrides}


def statuses(policy: dict, m: dict) -> dict:
    return {row["check"]: row["status"] for row in check(GatePolicy(**policy), m)}


# ----------------------------------------------------------------------------- the verdict rules


def test_speedup_passes_or_fails_only_when_its_interval_is_clear_of_the_limit():
    assert statuses({"min_speedup": 1.5}, metrics())["speedup"] == "pass"
    assert statuses({"min_speedup": 2.5}, metrics())["speedup"] == "fail"
    straddling = check(GatePolicy(min_speedup=2.0), metrics())
    assert [r["status"] for r in straddling if r["check"] == "speedup"] == ["inconclusive"]
    assert verdict(straddling) == "inconclusive"
    assert reasons(straddling) == ["speedup 2 [1.8, 2.2]: the interval straddles the limit 2"]


def test_contention_makes_speed_rules_inconclusive_but_never_rescues_a_sure_failure():
    busy = metrics(timing={"contention": ["1.04 tasks of other processes were waiting to run on average"]})
    rows = check(GatePolicy(min_speedup=1.5, max_p95_latency_ms=10), busy)
    assert {r["check"]: r["status"] for r in rows} == {"metric_drop": "pass", "speedup": "inconclusive",
                                                       "p95_latency_ms": "inconclusive"}
    assert verdict(rows) == "inconclusive"
    assert "cannot be judged: 1.04 tasks of other processes" in reasons(rows)[0]
    # an accuracy rule that surely fails is a failure, whatever the machine did while timing
    assert verdict(check(GatePolicy(min_speedup=1.5, max_metric_drop=0.1), busy)) == "fail"
    # a gate without speed rules does not care how busy the machine was
    assert verdict(check(GatePolicy(min_speedup=None), busy)) == "pass"


def test_rounds_that_disagree_are_inconclusive():
    rows = check(GatePolicy(min_speedup=1.5, max_timing_spread=0.25), metrics(timing_spread=0.6))
    assert verdict(rows) == "inconclusive"
    assert "AB+BA timing pairs disagree by 0.60" in reasons(rows)[0]


def test_confidence_judges_the_drop_by_its_upper_bound():
    """0.5 points lost is within a 1-point limit, but the interval reaches 1.4: with confidence it fails."""
    assert statuses({"max_metric_drop": 1.0, "min_speedup": None}, metrics())["metric_drop"] == "pass"
    rows = check(GatePolicy(max_metric_drop=1.0, min_speedup=None, confidence=0.95), metrics())
    assert verdict(rows) == "fail"
    assert reasons(rows) == ["metric_drop 0.5 [-0.2, 1.4]: the interval's upper end is not <= 1"]
    assert verdict(check(GatePolicy(max_metric_drop=1.5, min_speedup=None, confidence=0.95), metrics())) == "pass"


@pytest.mark.parametrize("bad", [{"confidence": 0.4}, {"confidence": 1.0}, {"max_timing_spread": -1}])
def test_bad_confidence_or_spread_is_refused(tmp_path, bad):
    with pytest.raises(ValueError):
        GatePolicy(**bad)


# ----------------------------------------------------------------------------- the paired bootstrap


def test_paired_bootstrap_interval_of_an_accuracy_drop():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    baseline = np.eye(3)[labels]  # always right
    candidate = baseline.copy()
    candidate[:20] = np.eye(3)[(labels[:20] + 1) % 3]  # wrong on 20 of 400: drops 5 points
    data = Dataset(inputs=np.zeros((400, 1)), labels=labels)
    same = drop_interval(baseline, baseline, data, 0.95)
    assert (same["low"], same["high"]) == (0.0, 0.0)  # paired: identical answers give no uncertainty at all
    interval = drop_interval(baseline, candidate, data, 0.95)
    assert interval["low"] < 5.0 < interval["high"] and interval["high"] - interval["low"] < 6
    assert interval["examples"] == 400
    wider = drop_interval(baseline, candidate, data, 0.99)
    assert wider["low"] <= interval["low"] and wider["high"] >= interval["high"]


def test_paired_bootstrap_of_a_spearman_drop():
    rng = np.random.default_rng(1)
    n = 300
    gold = rng.uniform(0, 5, n)
    emb = rng.normal(size=(2 * n, 16))
    pairs = [(2 * i, 2 * i + 1) for i in range(n)]
    # make cosine follow the gold score for the baseline, with noise added for the candidate
    for i, score in enumerate(gold):
        emb[2 * i + 1] = emb[2 * i] * score + rng.normal(size=16) * 2
    noisy = emb + rng.normal(size=emb.shape) * 1.5
    data = Dataset(inputs=[""] * (2 * n), pairs=pairs, scores=gold)
    interval = drop_interval(emb, noisy, data, 0.95)
    assert interval["low"] < interval["high"]
    assert interval["high"] > 0


def test_small_sets_are_warned_about():
    assert sample_size_warnings({"low": -0.1, "high": 0.1, "confidence": 0.95, "examples": 1000}, 1.0) == []
    few = sample_size_warnings({"low": -0.1, "high": 0.1, "confidence": 0.95, "examples": 40}, 1.0)
    assert few == ["only 40 evaluation examples: a 95% interval from so few is rough; use at least 100"]
    wide = sample_size_warnings({"low": -1.0, "high": 3.0, "confidence": 0.95, "examples": 200}, 1.5)
    assert wide and "is +/-2.00 points on 200 examples" in wide[0] and "about 1423 examples" in wide[0]


# ----------------------------------------------------------------------------- timing under load


def test_pinning_reaches_every_thread_and_is_undone():
    seen = {}
    started = threading.Event()
    release = threading.Event()

    def worker():
        started.set()
        release.wait(10)
        seen["after"] = os.sched_getaffinity(0)

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait(5)
    original = os.sched_getaffinity(0)
    one = [min(original)]
    with pinned(one):
        assert os.sched_getaffinity(thread.native_id) == set(one)  # a thread started before the pin
    assert os.sched_getaffinity(thread.native_id) == original
    release.set()
    thread.join()
    assert seen["after"] == original


def _busy_processes(count: int):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def test_busy_processes_are_detected_as_contention():
    """Two busy processes on this machine's cores, while two timing threads run: the monitor says so."""
    cores = len(os.sched_getaffinity(0))
    busy = _busy_processes(cores)
    try:
        time.sleep(0.3)
        with LoadMonitor() as monitor:  # 2 s: with every core busy the sampler itself waits its turn
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                sum(i * i for i in range(10000))
        load = monitor.summary()
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert load["samples"] > 5
    assert load["other_runnable"] >= cores - 0.5
    found = contention_reasons(load, cores, threads=cores)
    assert found and "tasks of other processes were waiting to run" in found[0]


class _Sleeper:
    def __init__(self, seconds):
        self.seconds = seconds

    def predict(self, batch):
        time.sleep(self.seconds)


def test_measure_speed_reports_the_interval_and_how_it_measured():
    models = {"baseline": _Sleeper(0.004), "candidate": _Sleeper(0.002)}
    speed = measure_speed(models, [[0] * 8, [0] * 8], rounds=9, threads=1, confidence=0.95)
    low, high = speed["speedup_ci"]
    assert low <= speed["speedup"] <= high
    assert 1.3 < speed["speedup"] < 2.5
    assert len(speed["speedup_pairs"]) == 5  # 9 rounds run as 10: five AB+BA pairs
    timing = speed["timing"]
    assert timing["rounds"] == 10 and timing["examples_per_round"] == 16 * timing["repeats"] and timing["threads"] == 1
    assert len(timing["pinned_cores"]) == 1 and timing["confidence"] == 0.95
    assert set(timing["load"]) == {"other_runnable", "stall", "steal", "throttled", "samples"}
    assert speed["baseline_cpu_per_wall"] < 0.5  # sleeping uses no CPU: the CPU time is measured, not assumed


# ----------------------------------------------------------------------------- exit 4, end to end


def test_inconclusive_gate_exits_4_with_its_evidence_and_is_never_promoted(tmp_path, digits_onnx):
    """max_timing_spread 0: no two timing rounds are ever identical, so the speed rule cannot be judged."""
    out = tmp_path / "validated"
    args = ["step", "validate", "--model", digits_onnx, "--baseline", digits_onnx, "--out", out, *FAST,
            "--set", "gate.min_speedup=0.5", "--set", "gate.max_timing_spread=0"]
    done = run_cli(*args, "--on-gate-fail", "continue", "--gate-output", tmp_path / "passed")
    assert done.returncode == 4, done.stderr  # not a verdict: never "continue"
    lines = done.stderr.strip().splitlines()
    assert lines[-2].startswith("slimops: gate inconclusive: speedup ") and "max_timing_spread 0" in lines[-2]
    assert lines[-1] == f"slimops: gate report: {out / 'gate_report.json'}"
    report = json.loads((out / "gate_report.json").read_text())
    assert report["verdict"] == "inconclusive" and report["passed"] is False
    timing = report["metrics"]["timing"]
    assert timing["rounds"] == 6 and timing["pinned_cores"] and "load" in timing
    assert report["metrics"]["speedup_ci"][0] <= report["metrics"]["speedup"] <= report["metrics"]["speedup_ci"][1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["gate"]["verdict"] == "inconclusive"

    registry = tmp_path / "registry"
    done = run_cli("step", "register", "--model", out, "--out", tmp_path / "registered",
                   "--set", "name=digits", "--set", f"registry_dir={registry}")
    assert done.returncode == 3
    assert "the gate was inconclusive" in done.stderr and "never promoted" in done.stderr
    assert not (tmp_path / "registered").exists()


def test_runner_retries_an_inconclusive_gate_then_exits_4_without_promoting(tmp_path):
    """`slimops run` through the shared retry loop: the recipe's retry_inconclusive, then exit 4; register and
    promote never run."""
    recipe_path = write_digits_recipe(
        tmp_path / "recipe.yaml", gate={"max_metric_drop": 10.0, "min_speedup": 0.5, "max_timing_spread": 0},
        validate={"rounds": 4},  # two AB+BA pairs: one pair alone has no spread
        extra_steps=[{"step": "register", "config": {"name": "tiny"}}, {"step": "promote"}])
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["retry_inconclusive"] = {"retries": 1, "backoff_s": 0}
    recipe_path.write_text(yaml.safe_dump(recipe))
    done = run_cli("run", recipe_path, "--out", tmp_path / "run")
    assert done.returncode == 4, done.stderr
    assert "gate INCONCLUSIVE (validate)" in done.stderr
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    steps = {s["id"]: s for s in summary["steps"]}
    assert steps["validate"]["attempts"] == 2
    assert [s["step"] for s in summary["steps"]] == ["train", "export", "quantize", "validate"]
    assert not (tmp_path / "run" / "steps" / "register").exists()
    assert summary["gate"]["verdict"] == "inconclusive" and summary["exit_code"] == 4
    assert "Gate: INCONCLUSIVE" in (tmp_path / "run" / "report.md").read_text()


def test_confidence_end_to_end_records_the_interval(tmp_path, digits_onnx):
    out = tmp_path / "validated"
    done = run_cli("step", "validate", "--model", digits_onnx, "--baseline", digits_onnx, "--out", out, *FAST,
                   "--set", "gate.min_speedup=null", "--set", "gate.max_metric_drop=0.5",
                   "--set", "gate.confidence=0.9")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "gate_report.json").read_text())
    assert report["verdict"] == "pass"
    assert report["metrics"]["metric_drop_ci"] == [0.0, 0.0]
    assert report["checks"][0]["interval"] == [0.0, 0.0]
    assert report["warnings"] == []  # 450 test digits, identical answers
