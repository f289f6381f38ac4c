"""SIGKILL ``slimops step`` and ``slimops run`` at seeded random moments: no partial output, ever.

Orchestrators kill pods (OOM, preemption, timeouts) and retry. Whatever a killed process leaves, an output
directory that exists must be complete (its manifest lists every file with its true sha256), and the retry must
finish with exit 0 and byte-identical models. Each test first runs the command once, uninterrupted, to get its
duration, when each output is being written, and the reference hashes; then it kills the command (its whole
process group) at seeded random times, half spread over that duration and half inside the writing windows, checks
what is on disk, and reruns the command to completion.

The kill log (attempt, kill time, what the kill left, what the rerun did) is printed as it goes: pytest shows it
when a test fails, and ``-s`` shows it always.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import assert_outputs_match, cli_env, run_cli, tmp_siblings

SEED = 20240607
STEP_KILLS = 12  # slimops step quantize
RUN_KILLS = 10  # slimops run, each from an empty run directory
REPLACE_KILLS = 6  # slimops run --no-cache over a complete run directory
RUN_STEPS = ("compile", "quantize", "pack")
TIMEOUT = 180  # seconds any one slimops command may take before the test gives up on it


# ----------------------------------------------------------------------------- processes


def slimops(*args) -> list[str]:
    return [sys.executable, "-m", "slimops", *map(str, args)]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    """In a session (process group) of its own, so one killpg reaches every process it started."""
    with open(log, "ab") as handle:
        return subprocess.Popen(argv, env=cli_env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@dataclass
class Timeline:
    seconds: float  # start to exit
    windows: list[float]  # per output: how long from its temporary sibling's appearance to the output in place


def measure(argv: list[str], outs: list[Path], log: Path) -> Timeline:
    """Run to completion, looking every 5 ms for each output's temporary sibling and for the output itself."""
    t0 = time.monotonic()
    proc = start(argv, log)
    seen: dict[str, float] = {}
    try:
        while proc.poll() is None:
            elapsed = time.monotonic() - t0
            assert elapsed < TIMEOUT, f"{argv} ran past {TIMEOUT} s"
            for out in outs:
                if f"tmp {out}" not in seen and tmp_siblings(out):
                    seen[f"tmp {out}"] = elapsed
                if f"out {out}" not in seen and out.is_dir():
                    seen[f"out {out}"] = elapsed
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, f"the uninterrupted run failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}"
    windows = [seen.get(f"out {out}", seconds) - seen.get(f"tmp {out}", 0.0) for out in outs]
    return Timeline(seconds=round(seconds, 3), windows=[round(max(w, 0.01), 3) for w in windows])


@dataclass
class Kill:
    """SIGKILL ``at`` seconds after the start, or, with ``during``, after that output's new temporary sibling
    appeared: a time measured from the start cannot aim at a 30 ms write on a machine whose load varies."""

    at: float
    during: Path | None = None

    def __str__(self) -> str:
        anchor = f"{self.during.name}'s temporary directory appeared" if self.during else "the start"
        return f"SIGKILL {self.at:.3f} s after {anchor}"


def kill_at(argv: list[str], kill: Kill, log: Path) -> str:
    """Start ``argv`` and SIGKILL its process group at ``kill``; say whether it was still running."""
    before = set(tmp_siblings(kill.during)) if kill.during else set()
    proc = start(argv, log)
    try:
        if kill.during:
            deadline = time.monotonic() + TIMEOUT
            while not set(tmp_siblings(kill.during)) - before and proc.poll() is None:
                assert time.monotonic() < deadline, f"{argv}: no temporary sibling of {kill.during} in {TIMEOUT} s"
                time.sleep(0.002)
        proc.wait(timeout=kill.at)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return "killed"
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 0, f"finished before the kill with exit {proc.returncode}:\n{log.read_text()[-3000:]}"
    return "finished before the kill"


def kill_plan(timeline: Timeline, outs: list[Path], count: int, rng: random.Random) -> list[Kill]:
    """Half spread over the whole run, half inside the outputs' writes (taking the outputs in turn), interleaved."""
    spread = [Kill(round(rng.uniform(0.0, timeline.seconds), 3)) for _ in range(count - count // 2)]
    writing = [Kill(round(rng.uniform(0.0, timeline.windows[i % len(outs)]), 3), outs[i % len(outs)])
               for i in range(count // 2)]
    return [k for pair in zip(spread, writing) for k in pair] + spread[len(writing):]


# ----------------------------------------------------------------------------- what must be on disk


def listing(root: Path) -> str:
    if not root.exists():
        return f"{root}: absent"
    return "\n".join(f"  {p.relative_to(root)}{'/' if p.is_dir() else f' ({p.stat().st_size} B)'}"
                     for p in sorted(root.rglob("*")))


def complete_output(out: Path, reference: dict[str, str], when: str) -> None:
    """``out`` is a whole output: a manifest listing every file with its true sha256, the reference's files."""
    assert out.is_dir() and (out / "manifest.json").is_file(), f"{when}: partial {out}:\n{listing(out)}"
    manifest = assert_outputs_match(out)
    assert manifest["outputs"] == reference, f"{when}: {out} holds other files or bytes than the reference run"


def absent_or_complete(out: Path, reference: dict[str, str], when: str) -> str:
    if not os.path.lexists(out):
        return "absent"
    complete_output(out, reference, when)
    return "complete"


def left(out: Path) -> str:
    names = [p.name.replace(out.name, "OUT", 1) for p in tmp_siblings(out)]
    return f" + {', '.join(names)}" if names else ""


def model_hashes(out: Path) -> dict[str, str]:
    return assert_outputs_match(out)["outputs"]


# ----------------------------------------------------------------------------- slimops step


def test_kill_step_quantize_at_random_points(tmp_path, digits_onnx):
    """``slimops step quantize`` killed at 12 seeded random moments, alternately writing a new OUT and replacing a
    complete one: OUT is absent or a complete output each time, and the rerun exits 0 with the reference model
    bytes and no temporary sibling left."""
    rng = random.Random(SEED)
    log = tmp_path / "slimops.log"
    out = tmp_path / "quantized"
    argv = ["step", "quantize", "--model", digits_onnx, "--out", out, "--set", "mode=dynamic", "--threads", "1"]

    timeline = measure(slimops(*argv), [out], log)
    reference = model_hashes(out)
    assert "model.onnx" in reference and tmp_siblings(out) == []
    kills = kill_plan(timeline, [out], STEP_KILLS, rng)
    print(f"uninterrupted: {timeline.seconds} s, writing OUT took {timeline.windows[0]} s")
    print("kills: " + "; ".join(map(str, kills)))

    mid_write = 0
    for attempt, kill in enumerate(kills):
        replacing = attempt % 2 == 1  # OUT holds the previous rerun's complete output
        if not replacing:
            shutil.rmtree(out)
        when = f"attempt {attempt} ({'replacing OUT' if replacing else 'new OUT'}), {kill}"
        outcome = kill_at(slimops(*argv), kill, log)
        state = absent_or_complete(out, reference, when)
        leftovers = left(out)
        mid_write += bool(leftovers)
        print(f"{when}: {outcome}; OUT {state}{leftovers}")

        done = run_cli(*argv, timeout=TIMEOUT)
        assert done.returncode == 0, f"{when}: the rerun exited {done.returncode}:\n{done.stderr}"
        complete_output(out, reference, f"{when}, after the rerun")
        assert tmp_siblings(out) == [], f"{when}: the rerun left {tmp_siblings(out)}"
    print(f"{mid_write} of {len(kills)} kills left a temporary output")
    assert mid_write, "no kill landed while the step wrote its output"


# ----------------------------------------------------------------------------- slimops run


@pytest.fixture
def kill_recipe(tmp_path, digits_onnx) -> Path:
    """The trained digits CNN, already ONNX: compile -> dynamic INT8 -> pack, three outputs in about 3 s."""
    recipe = tmp_path / "recipe" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text(yaml.safe_dump({
        "name": "kill-digits", "model": {"path": str(digits_onnx)}, "threads": 1,
        "steps": [{"step": "compile"}, {"step": "quantize", "config": {"mode": "dynamic"}}, {"step": "pack"}],
    }, sort_keys=False))
    return recipe


def reference_run(tmp_path: Path, recipe: Path, log: Path) -> tuple[Timeline, dict[str, dict[str, str]]]:
    run_dir = tmp_path / "reference"
    timeline = measure(slimops("run", recipe, "--out", run_dir), [run_dir / "steps" / step for step in RUN_STEPS], log)
    reference = {step: model_hashes(run_dir / "steps" / step) for step in RUN_STEPS}
    print(f"uninterrupted run: {timeline.seconds} s; writing took {dict(zip(RUN_STEPS, timeline.windows))} s")
    return timeline, reference


def run_kill_plan(timeline: Timeline, run_dir: Path, count: int, rng: random.Random) -> list[Kill]:
    kills = kill_plan(timeline, [run_dir / "steps" / step for step in RUN_STEPS], count, rng)
    print("kills: " + "; ".join(map(str, kills)))
    return kills


def check_killed_run(run_dir: Path, reference: dict[str, dict[str, str]], when: str) -> str:
    """Every step directory is absent or complete; anything else under steps/ is a temporary sibling or a lock."""
    steps = run_dir / "steps"
    states = []
    if steps.is_dir():
        for entry in sorted(steps.iterdir()):
            known = entry.name in RUN_STEPS or any(
                entry.name.startswith(f".{step}.{kind}") for step in RUN_STEPS for kind in ("tmp-", "old-", "lock"))
            assert known, f"{when}: unexpected {entry} under steps/:\n{listing(steps)}"
    for step in RUN_STEPS:
        state = absent_or_complete(steps / step, reference[step], f"{when}, step {step}")
        states.append(f"{step} {state}{left(steps / step)}")
    if (run_dir / "run.json").exists():
        assert isinstance(json.loads((run_dir / "run.json").read_text()), dict), f"{when}: run.json is partial"
    return "; ".join(states)


def rerun(recipe: Path, run_dir: Path, reference: dict[str, dict[str, str]], when: str) -> dict[str, str]:
    """``slimops run`` to completion: exit 0, every step complete with the reference's bytes; each step's status."""
    done = run_cli("run", recipe, "--out", run_dir, timeout=TIMEOUT)
    assert done.returncode == 0, f"{when}: the rerun exited {done.returncode}:\n{done.stderr[-3000:]}"
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["exit_code"] == 0 and [s["id"] for s in summary["steps"]] == list(RUN_STEPS)
    for step in RUN_STEPS:
        complete_output(run_dir / "steps" / step, reference[step], f"{when}, after the rerun, step {step}")
    return {s["id"]: s["status"] for s in summary["steps"]}


def leftovers(run_dir: Path, steps) -> list[str]:
    return [str(p.relative_to(run_dir)) for step in steps for p in tmp_siblings(run_dir / "steps" / step)]


def check_rerun_cleaned(run_dir: Path, statuses: dict[str, str], when: str) -> str:
    """A step the rerun ran removed the killed run's temporary siblings of its output. (What a *cached* step
    leaves is test_cached_step_removes_a_killed_runs_leftovers' business: today nothing removes it.)"""
    ran = [step for step, status in statuses.items() if status == "ran"]
    assert leftovers(run_dir, ran) == [], f"{when}: the rerun ran {ran} but left {leftovers(run_dir, ran)}"
    kept = leftovers(run_dir, [step for step in statuses if step not in ran])
    return f"rerun: {', '.join(f'{k} {v}' for k, v in statuses.items())}" + (f"; still there: {kept}" if kept else "")


def test_kill_run_at_random_points(tmp_path, kill_recipe):
    """``slimops run`` from an empty run directory, killed at 10 seeded random moments: no step directory is
    partial; the next ``slimops run`` reuses the complete ones, exits 0, and every model matches the reference."""
    rng = random.Random(SEED + 1)
    log = tmp_path / "slimops.log"
    timeline, reference = reference_run(tmp_path, kill_recipe, log)
    run_dir = tmp_path / "run"
    kills = run_kill_plan(timeline, run_dir, RUN_KILLS, rng)
    mid_write = 0
    for attempt, kill in enumerate(kills):
        shutil.rmtree(run_dir, ignore_errors=True)
        when = f"attempt {attempt}, {kill}"
        outcome = kill_at(slimops("run", kill_recipe, "--out", run_dir), kill, log)
        states = check_killed_run(run_dir, reference, when)
        mid_write += "tmp-" in states
        statuses = rerun(kill_recipe, run_dir, reference, when)
        print(f"{when}: {outcome}; {states}; {check_rerun_cleaned(run_dir, statuses, when)}")
    print(f"{mid_write} of {len(kills)} kills left a temporary output")
    assert mid_write, "no kill landed while the run wrote a step's output"


def test_kill_run_replacing_outputs_at_random_points(tmp_path, kill_recipe):
    """``slimops run --no-cache`` over a complete run directory, killed at 6 seeded random moments: each step
    directory is the old or the new complete output, never a mix; the next ``slimops run`` exits 0 with the
    reference models (reusing the complete outputs) and removes what the killed run left beside the steps it
    runs again."""
    rng = random.Random(SEED + 2)
    log = tmp_path / "slimops.log"
    timeline, reference = reference_run(tmp_path, kill_recipe, log)
    run_dir = tmp_path / "run"
    kills = run_kill_plan(timeline, run_dir, REPLACE_KILLS, rng)
    rerun(kill_recipe, run_dir, reference, "first run")
    for attempt, kill in enumerate(kills):
        when = f"attempt {attempt} (--no-cache over a complete run), {kill}"
        outcome = kill_at(slimops("run", kill_recipe, "--out", run_dir, "--no-cache"), kill, log)
        states = check_killed_run(run_dir, reference, when)
        statuses = rerun(kill_recipe, run_dir, reference, when)
        print(f"{when}: {outcome}; {states}; {check_rerun_cleaned(run_dir, statuses, when)}")


def test_cached_step_removes_a_killed_runs_leftovers(tmp_path, kill_recipe):
    """A ``--no-cache`` run killed while it rewrites a complete step leaves that step complete plus its temporary
    siblings; the next ``slimops run`` takes the step from the cache, and must still remove the leftovers (a
    killed model-sized temporary directory is otherwise never reclaimed)."""
    run_dir = tmp_path / "run"
    first = run_cli("run", kill_recipe, "--out", run_dir, timeout=TIMEOUT)
    assert first.returncode == 0, first.stderr
    out = run_dir / "steps" / "compile"
    previous = model_hashes(out)
    proc = start(slimops("run", kill_recipe, "--out", run_dir, "--no-cache"), tmp_path / "slimops.log")
    try:
        deadline = time.monotonic() + TIMEOUT
        while not tmp_siblings(out):
            assert proc.poll() is None, f"the run finished (exit {proc.returncode}) before it rewrote {out}"
            assert time.monotonic() < deadline, f"no temporary sibling of {out} within {TIMEOUT} s"
            time.sleep(0.005)
        time.sleep(0.05)
    finally:
        kill_group(proc)
    assert tmp_siblings(out), "the run was not killed while it rewrote compile"
    complete_output(out, previous, "after the kill")

    statuses = rerun(kill_recipe, run_dir, {**{s: model_hashes(run_dir / "steps" / s) for s in RUN_STEPS}},
                     "after the kill")
    assert statuses["compile"] == "cached"
    assert leftovers(run_dir, RUN_STEPS) == [], "the next run kept the killed run's temporary directories"
