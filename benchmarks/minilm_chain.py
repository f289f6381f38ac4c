"""The MiniLM distillation chain (examples/minilm-distill.yaml) against the teacher, side by side in one process.

Variants, each measured on the same data in alternating rounds: the PyTorch fp32 teacher (all-MiniLM-L6-v2),
the teacher after ORT fusions + dynamic INT8 (slimops's best ORT configuration), the distilled student in
PyTorch fp32, and the full chain (student + compile target auto: the candidate the search kept). Runs the recipe
first (its step cache makes a rerun cheap). Prints a table; with --write, updates BENCHMARKS.md.

    python benchmarks/minilm_chain.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import machine, stamp, write_section  # noqa: E402
from quantize_minilm import (LATENCY_RUNS, ROUNDS, SENTENCES, SLIMOPS_BEST, THREADS, _versions,  # noqa: E402
                             measure_side_by_side)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "minilm-distill.yaml"
COMMAND = "python benchmarks/minilm_chain.py --write BENCHMARKS.md"


def teacher_int8(source: Path, work: Path) -> Path:
    """The minilm-sts chain on the teacher (export, then quantize_minilm's best steps), reusing earlier outputs."""
    from slimops.core import run_step

    current = work / "export"
    if not (current / "manifest.json").is_file():
        run_step("export", source, current, {"opset": 17})
    for index, (step, config) in enumerate(SLIMOPS_BEST):
        out = work / f"best-{index}-{step}"
        if not (out / "manifest.json").is_file():
            run_step(step, current, out, config)
        current = out
    return current


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", help="rewrite this Markdown file's minilm-chain section")
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "minilm-distill"),
                        help="the recipe's run directory (reused through the step cache)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-minilm"),
                        help="where the INT8 teacher is built (shared with quantize_minilm.py)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from slimops.data import DataSpec, load_dataset
    from slimops.manifest import read_manifest
    from slimops.runner import run_recipe
    from slimops.steps.validate import model_size_bytes

    result = run_recipe(RECIPE, Path(args.run_dir))
    steps = {r["id"]: Path(r["out"]) for r in result.summary["steps"]}
    decisions = gate_decisions(result.summary["steps"])
    print("\n".join(decisions))
    if "compile" not in steps:
        print(f"the chain stopped before compile (gate at {result.summary['gate']['step']}); see "
              f"{result.run_dir / 'report.md'}", file=sys.stderr)
        return result.exit_code
    source = Path(result.summary["source"])
    variants = {
        "PyTorch fp32 teacher (6 layers)": source,
        "teacher, compile + dynamic INT8 (ORT)": teacher_int8(source, Path(args.work)),
        "distilled student, PyTorch fp32": steps["distill"],
        f"full chain: student + compile auto (kept {auto_kept(steps['compile'])})": steps["compile"],
    }
    distill = read_manifest(steps["distill"])
    layers = distill["config"]["student"]["layers"]
    models, spearman, cosine, timings, latency = measure_side_by_side(variants)

    teacher = next(iter(models))
    teacher_rounds = np.array(timings[teacher].seconds)
    rows = []
    for name in models:
        ratios = teacher_rounds / np.array(timings[name].seconds)  # per round: same round, same machine state
        rows.append({"variant": name, "speedup": float(np.median(ratios)), "lo": float(ratios.min()),
                     "hi": float(ratios.max()), "sent_per_s": SENTENCES / timings[name].median,
                     "p50": latency[name]["p50_ms"], "spearman": spearman[name],
                     "drop": spearman[teacher] - spearman[name],
                     "size": model_size_bytes(Path(variants[name])) / 1e6, "cos": cosine[name]})
    table = render(rows)
    gate = result.summary["gate"]
    verdict = f"recipe gate {'PASSED' if gate['passed'] else 'FAILED'} ({gate['step']})" + (
        "" if gate["passed"] else ": " + "; ".join(gate["reasons"]))
    m = distill["metrics"]
    ffn = distill["config"]["student"].get("intermediate_size")
    shape = f"teacher layers {layers}" + (f", FFN narrowed to {ffn} neurons" if ffn else "")
    training = (f"student: {shape} ({m['student_params'] / 1e6:.1f}M parameters, of which "
                f"{m['student_trainable_params'] / 1e6:.1f}M trained; teacher {m['teacher_params'] / 1e6:.1f}M), "
                f"{m['steps']} steps of batch {distill['config']['batch_size']} on "
                f"{len(load_dataset(DataSpec(**distill['config']['data']))):,} STS-B train sentences, "
                f"{distill['seconds'] / 60:.1f} min of training in the recipe run (best step {m['best_step']}, "
                f"picked on {distill['config']['eval_data']['limit']} labelled train pairs)")
    print(table)
    print(training)
    print(verdict)
    if args.write:
        write(Path(args.write), table, training, verdict, result, len(layers), decisions,
              search_table(steps["compile"]), rows)
    return 0


def auto_kept(compile_dir: Path) -> str:
    """The candidate compile target auto kept, with the precision that ran (from the step's manifest)."""
    from slimops.manifest import read_manifest

    details = read_manifest(compile_dir)["details"]
    return f"{details['auto']['chosen']}, {details.get('precision_ran')}"


def search_table(compile_dir: Path) -> str:
    """The student's search: every candidate with its drop vs the fp32 student, speedup vs its export, batch-1 p50."""
    from slimops.manifest import read_manifest

    auto = read_manifest(compile_dir)["details"]["auto"]
    lines = ["| candidate | precision ran | Spearman x100 | drop vs student | speedup vs student ONNX | batch-1 p50 ms | "
             "size MB | result |", "|---|---|---|---|---|---|---|---|"]
    for r in auto["candidates"]:
        if r["status"] != "measured":
            lines.append(f"| {r['candidate']} | | | | | | | {r['status']}: {r.get('reason') or ''} |")
            continue
        result = "KEPT" if r["chosen"] else "passes" if r["accuracy_ok"] else "fails " + ", ".join(r["failed_rules"])
        lines.append(f"| {r['candidate']} | {r['precision_ran']} | {r['metric']:.2f} | {r['metric_drop']:+.2f} | "
                     f"{r['speedup']:.2f}x | {r['p50_ms']:.2f} | {r['size_mb']:.1f} | {result} |")
    return "\n".join(lines)


def render(rows: list[dict]) -> str:
    lines = ["| variant | throughput vs PyTorch fp32, batch 32 (min-max) | sentences/s | batch-1 p50 ms | "
             "Spearman x100 | drop | size MB | mean cos vs teacher |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['speedup']:.2f}x ({r['lo']:.2f}-{r['hi']:.2f}) | {r['sent_per_s']:.0f} | "
                     f"{r['p50']:.2f} | {r['spearman']:.2f} | {r['drop']:+.2f} | {r['size']:.1f} | {r['cos']:.4f} |")
    return "\n".join(lines)


def gate_decisions(records: list[dict]) -> list[str]:
    """Each validate step's dev decision, from its own gate_report.json: verdict, drop and speedup with intervals."""
    lines = []
    for record in records:
        report_path = Path(record["out"]) / "gate_report.json"
        if record["step"] != "validate" or not report_path.is_file():
            continue
        report = json.loads(report_path.read_text())
        m, policy = report["metrics"], report["policy"]
        level = f"{100 * (policy.get('confidence') or 0.95):g}%"
        drop_rule = (f"limit {policy['max_metric_drop']:g}, judged by the interval's upper end"
                     if policy.get("confidence") else f"limit {policy['max_metric_drop']:g}, judged by the point value")
        speed = (f"; speedup {m['speedup']:.2f}x, {level} interval [{m['speedup_ci'][0]:.2f}, {m['speedup_ci'][1]:.2f}] "
                 f"(limit {policy['min_speedup']:g})" if policy.get("min_speedup") else "")
        lines.append(f"gate `{record['id']}` on {m.get('examples', '?')} evaluation examples: **{report['verdict']}**; "
                     f"Spearman drop {m['metric_drop']:.2f} points, {level} paired-bootstrap interval "
                     f"[{m['metric_drop_ci'][0]:.2f}, {m['metric_drop_ci'][1]:.2f}] ({drop_rule}){speed}"
                     + (f"; reasons: {'; '.join(report['reasons'])}" if report["reasons"] else ""))
    return lines


def write(path: Path, table: str, training: str, verdict: str, result, num_layers: int,
          decisions: list[str], search: str, rows: list[dict]) -> None:
    chain = rows[-1]
    target = (f"Issue #13 target for the chain with target auto on a VNNI/AMX CPU (>= 8x PyTorch fp32 at a drop <= 1.5 "
              f"on dev): {'met' if chain['speedup'] >= 8 and chain['drop'] <= 1.5 else 'NOT met'}: "
              f"{chain['speedup']:.2f}x at a drop of {chain['drop']:.2f}")
    command = COMMAND if result.run_dir == ROOT / "runs" / "minilm-distill" else f"{COMMAND} --run-dir {result.run_dir}"
    write_section(path, "minilm-chain", "\n".join([
        f"## Distillation chain: all-MiniLM-L6-v2 → {num_layers}-layer student → compile auto (examples/minilm-distill.yaml)",
        "",
        f"- Date: {stamp()}",
        f"- Machine: {machine()}; {THREADS} threads for PyTorch and ONNX Runtime",
        f"- Command: `{command}` (runs the recipe; cached steps are reused)",
        f"- Protocol: as the quantization table: the same {SENTENCES} dev sentences at batch 32, tokenization "
        f"included, {ROUNDS} rounds alternating the variants, speedup = median of per-round ratios (min-max in "
        f"brackets); batch-1 p50 over {LATENCY_RUNS} single-sentence requests in 5 alternating blocks; Spearman "
        "x100 of cosine similarity on all 1,500 dev pairs (never used in training or checkpoint selection); "
        "size = model files on disk.",
        f"- {training[0].upper() + training[1:]}.",
        f"- {verdict}; report: `{result.run_dir / 'report.md'}`.",
        *(f"- Dev decision, {line}." for line in decisions),
        f"- Libraries: {_versions()}",
        "",
        table,
        "",
        f"- {target}.",
        "",
        "### The student's compile target: auto search (speedup vs the student's ONNX export, in the search's rounds)",
        "",
        search,
    ]))


if __name__ == "__main__":
    sys.exit(main())
