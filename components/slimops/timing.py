"""Timing a baseline and a candidate against each other, honestly, on a machine others may share.

A speed verdict must not follow the machine's load. So validate:
- gives both models the same threads, pinned to the same cores (the least busy ones when timing starts);
- times them in many short rounds, alternating the order (A B, B A, ...) so drift hits both alike;
- keeps wall time and process CPU time per round;
- watches the machine while it times: tasks of other processes waiting to run, CPU pressure stalls (PSI),
  hypervisor steal and cgroup throttling (Linux; what a kernel does not expose is reported as None);
- gives the speedup with a bootstrap confidence interval over rounds.

The gate then says pass or fail only when the interval is clear of its threshold and the machine was quiet;
otherwise "inconclusive" (exit 4), which runners retry later.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# Contention bounds. A quiet 2-core machine measured 0.0-0.2 runnable tasks of other processes while timing;
# one busy background process gives ~1 (benchmarks/gate_stability.py). CPU pressure (PSI) is recorded but not
# judged: it counts this process's own threads waiting for each other (40-50% on a quiet machine while two
# runtimes' thread pools hand over), which says nothing about other load.
MAX_OTHER_RUNNABLE = 0.5  # mean runnable tasks of other processes beyond the cores left free
MAX_STEAL = 0.05  # share of CPU time the hypervisor gave to other guests
MAX_THROTTLED = 0.05  # share of the timing window the cgroup's CPU quota held this process back
SAMPLE_EVERY_S = 0.05
# A round lasts at least this long for the faster model (the batches are repeated): a round of a few
# milliseconds measures the timer and the scheduler, not the model (a tiny CNN's 1 ms rounds swung 0.2-2x).
MIN_ROUND_S = 0.1
MAX_REPEATS = 1000


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _proc_stat() -> tuple[list[int] | None, int | None]:
    """(aggregate cpu counters, procs_running) from /proc/stat."""
    text = _read("/proc/stat") or ""
    cpu, running = None, None
    for line in text.splitlines():
        if line.startswith("cpu "):
            cpu = [int(x) for x in line.split()[1:]]
        elif line.startswith("procs_running"):
            running = int(line.split()[1])
    return cpu, running


def _own_running() -> int:
    """Threads of this process in state R (they count in procs_running, but are not contention)."""
    count = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    for tid in tasks:
        stat = _read(f"/proc/self/task/{tid}/stat")
        if stat and stat[stat.rfind(")") + 2:].startswith("R"):
            count += 1
    return count


def _stall_us() -> int | None:
    """Microseconds in which some task waited for a CPU (PSI), this cgroup's when the kernel has it."""
    for path in ("/sys/fs/cgroup/cpu.pressure", "/proc/pressure/cpu"):
        text = _read(path)
        if text and text.startswith("some"):
            return int(text.split()[4].split("=")[1])
    return None


def _throttled_us() -> int | None:
    for path, key, scale in (("/sys/fs/cgroup/cpu.stat", "throttled_usec", 1),
                             ("/sys/fs/cgroup/cpu/cpu.stat", "throttled_time", 1e-3)):
        for line in (_read(path) or "").splitlines():
            if line.startswith(key + " "):
                return int(int(line.split()[1]) * scale)
    return None


def cpu_quota() -> float | None:
    """CPUs the cgroup's quota allows (cgroup v2 cpu.max or v1 cfs quota), None when unlimited or unknown."""
    text = _read("/sys/fs/cgroup/cpu.max")
    if text and not text.startswith("max"):
        quota, period = text.split()[:2]
        return int(quota) / int(period)
    quota, period = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    if quota and period and int(quota) > 0:
        return int(quota) / int(period)
    return None


class LoadMonitor:
    """Samples, in a background thread, how contended the machine is while the models are timed."""

    def __init__(self):
        self._runnable: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="slimops-load-monitor", daemon=True)

    def _sample(self):
        while not self._stop.wait(SAMPLE_EVERY_S):
            _, running = _proc_stat()
            if running is not None:
                # this sampler is running too, and counted in _own_running
                self._runnable.append(max(0, running - _own_running()))

    def __enter__(self):
        self._start = (time.monotonic(), _proc_stat()[0], _stall_us(), _throttled_us())
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._end = (time.monotonic(), _proc_stat()[0], _stall_us(), _throttled_us())

    def summary(self) -> dict:
        (t0, cpu0, stall0, thr0), (t1, cpu1, stall1, thr1) = self._start, self._end
        window_us = max(1.0, (t1 - t0) * 1e6)
        steal = None
        if cpu0 and cpu1 and len(cpu0) > 7:
            total = sum(cpu1) - sum(cpu0)
            steal = (cpu1[7] - cpu0[7]) / total if total > 0 else 0.0
        return {
            "other_runnable": float(np.mean(self._runnable)) if self._runnable else None,
            "stall": None if stall0 is None or stall1 is None else (stall1 - stall0) / window_us,
            "steal": steal,
            "throttled": None if thr0 is None or thr1 is None else (thr1 - thr0) / window_us,
            "samples": len(self._runnable),
        }


def contention_reasons(load: dict, cores: int, threads: int) -> list[str]:
    """Why the timing window was not quiet enough to judge speed; empty when it was."""
    reasons = []
    free = max(0, cores - threads)
    if load.get("other_runnable") is not None and load["other_runnable"] > free + MAX_OTHER_RUNNABLE:
        reasons.append(f"{load['other_runnable']:.2f} tasks of other processes were waiting to run on average, "
                       f"with {free} of {cores} cores free beside the {threads} timing threads")
    if load.get("steal") is not None and load["steal"] > MAX_STEAL:
        reasons.append(f"the hypervisor stole {100 * load['steal']:.0f}% of CPU time")
    if load.get("throttled") is not None and load["throttled"] > MAX_THROTTLED:
        reasons.append(f"the cgroup CPU quota throttled this process {100 * load['throttled']:.0f}% of the time")
    return reasons


def timing_cores(threads: int) -> list[int]:
    """The ``threads`` least busy CPUs this process may run on (busy = non-idle time over 0.2 s)."""
    allowed = sorted(os.sched_getaffinity(0))
    if threads >= len(allowed):
        return allowed

    def per_cpu():
        rows = {}
        for line in (_read("/proc/stat") or "").splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *fields = line.split()
                values = [int(x) for x in fields]
                rows[int(name[3:])] = (sum(values), values[3] + (values[4] if len(values) > 4 else 0))
        return rows

    before = per_cpu()
    time.sleep(0.2)
    after = per_cpu()

    def busy(cpu):
        if cpu not in before or cpu not in after:
            return 0.0
        total = after[cpu][0] - before[cpu][0]
        idle = after[cpu][1] - before[cpu][1]
        return 1 - idle / total if total else 0.0
    return sorted(sorted(allowed, key=busy)[:threads])


def _set_every_thread(cores) -> None:
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that just ended
            pass


@contextmanager
def pinned(cores: list[int]):
    """Every thread of this process on ``cores`` (threads it starts meanwhile inherit the pin); then back.

    os.sched_setaffinity(0, ...) would pin only the calling thread, not the runtimes' worker pools."""
    original = os.sched_getaffinity(0)
    if not os.path.isdir("/proc/self/task"):
        yield
        return
    _set_every_thread(cores)
    try:
        yield
    finally:
        _set_every_thread(original)


def alternating_rounds(models: dict, batches: list, rounds: int, warmup: int = 1) -> dict[str, dict[str, list]]:
    """Wall and process CPU seconds of each model over ``batches``, per round, in alternating order."""
    for model in models.values():
        for batch in batches[:warmup]:
            model.predict(batch)
    names = list(models)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for index in range(rounds):
        for name in (names if index % 2 == 0 else names[::-1]):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for batch in batches:
                models[name].predict(batch)
            times[name]["wall"].append(time.perf_counter() - wall0)
            times[name]["cpu"].append(time.process_time() - cpu0)
    return times


def _repeats_for(models: dict, batches: list) -> int:
    """How many times to go over ``batches`` per round so the faster model's round lasts MIN_ROUND_S (this
    pass doubles as the warm-up)."""
    fastest = float("inf")
    for model in models.values():
        for _ in range(2):  # the first pass warms up
            start = time.perf_counter()
            for batch in batches:
                model.predict(batch)
            seconds = time.perf_counter() - start
        fastest = min(fastest, seconds)
    return int(min(MAX_REPEATS, max(1, np.ceil(MIN_ROUND_S / max(fastest, 1e-6)))))


def ratio_interval(numerator: list[float], denominator: list[float], confidence: float,
                   resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of median(numerator) / median(denominator), rounds resampled in pairs."""
    a, b = np.asarray(numerator, float), np.asarray(denominator, float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(resamples, len(a)))
    ratios = np.median(a[picks], axis=1) / np.median(b[picks], axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def spread(values: list[float]) -> float:
    """Relative interquartile range: how much rounds disagree (0 = identical)."""
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float((q75 - q25) / q50) if q50 else float("inf")


def pair_sums(values: list[float]) -> list[float]:
    """Each AB round added to the BA round after it.

    In AB, BA, AB, ... the model that runs second in a round runs first in the next, back to back with itself,
    on warm caches: single rounds then swing with the order (on the digits model, identical models alternate
    0.7x / 1.3x). A pair holds each model once in each position, so the order effect cancels."""
    return [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]


def measure_speed(models: dict, batches: list, rounds: int, threads: int, confidence: float) -> dict:
    """Baseline-vs-candidate throughput with its evidence. ``models`` = {"baseline": ..., "candidate": ...}.

    ``rounds`` is rounded up to an even number so every round has its mirror (see pair_sums). Returns the
    speedup (median baseline pair time / median candidate pair time), its bootstrap interval over pairs, the
    pairs' spread, CPU use per model, the cores pinned, and the machine's load while timing.
    """
    rounds += rounds % 2
    cores_allowed = len(os.sched_getaffinity(0))
    quota = cpu_quota()
    cores_usable = min(cores_allowed, int(quota)) if quota else cores_allowed
    cores = timing_cores(threads)
    with pinned(cores):
        repeats = _repeats_for(models, batches)
        with LoadMonitor() as monitor:
            times = alternating_rounds(models, batches * repeats, rounds)
    load = monitor.summary()
    base, cand = times["baseline"], times["candidate"]
    base_pairs, cand_pairs = pair_sums(base["wall"]), pair_sums(cand["wall"])
    low, high = ratio_interval(base_pairs, cand_pairs, confidence)
    ratios = [b / c for b, c in zip(base_pairs, cand_pairs)]
    examples = sum(len(batch) for batch in batches) * repeats
    return {
        "speedup": float(np.median(base_pairs) / np.median(cand_pairs)),
        "speedup_ci": [low, high],
        "speedup_pairs": ratios,
        "timing_spread": spread(ratios),
        "baseline_throughput": examples / float(np.median(base["wall"])),
        "candidate_throughput": examples / float(np.median(cand["wall"])),
        # CPU seconds per wall second: about `threads` when the runtime had its cores, less when it waited
        "baseline_cpu_per_wall": float(np.sum(base["cpu"]) / np.sum(base["wall"])),
        "candidate_cpu_per_wall": float(np.sum(cand["cpu"]) / np.sum(cand["wall"])),
        "timing": {
            "rounds": rounds, "examples_per_round": examples, "repeats": repeats, "threads": threads, "pinned_cores": cores,
            "cores": cores_usable, "confidence": confidence, "order": "alternating (AB, BA, ...), judged per AB+BA pair",
            "load": load, "contention": contention_reasons(load, cores_usable, threads),
        },
    }
