"""Bring your own model: the sentence-pair classifier of examples/pair-classifier.yaml against its PyTorch original.

Builds the model if examples/models/pair-classifier is missing (slimops.zoo.pair_classifier: the packaged
all-MiniLM-L6-v2 fine-tuned 150 seeded steps on STS-B train pairs), runs the recipe once (export -> compile ->
dynamic INT8 -> validate), and reports what its validate step measured in that one run: accuracy and F1 of both
models on the same 500 dev pairs, the batch-32 speedup with its interval, batch-1 latency, size on disk, top-1
agreement, and the gate's verdict. Prints a table; with --write, updates BENCHMARKS.md.

    python benchmarks/pair_classifier.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import machine, stamp, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "pair-classifier.yaml"
MODEL = ROOT / "examples" / "models" / "pair-classifier"
COMMAND = "python benchmarks/pair_classifier.py --write BENCHMARKS.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", help="rewrite this Markdown file's pair-classifier section")
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "pair-classifier"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from slimops.manifest import library_versions
    from slimops.runner import run_recipe

    built = "reused"
    if not (MODEL / "model.safetensors").is_file():
        from slimops.zoo.pair_classifier import build

        record = build(MODEL, ROOT / "examples" / "data" / "stsb" / "sts-train.tsv", steps=150, seed=0)
        built = f"built now ({record['steps']} steps, loss {record['first_loss']:.3f} -> {record['last_loss']:.3f})"
    result = run_recipe(RECIPE, Path(args.run_dir), use_cache=False)
    report_path = Path(args.run_dir) / "steps" / "validate" / "gate_report.json"
    if not report_path.is_file():
        print(f"the run stopped before validate (exit {result.exit_code}); see {result.run_dir / 'report.md'}",
              file=sys.stderr)
        return result.exit_code or 1
    report = json.loads(report_path.read_text())
    m = report["metrics"]
    rows = [
        ("PyTorch fp32 (HF BertForSequenceClassification)", m["baseline_metric"], m["baseline_f1"],
         m["baseline_f1_macro"], "1.00x", m["baseline_throughput"], m["baseline_p50_ms"], m["baseline_size_mb"],
         "100.0"),
        ("slimops: export + compile (BERT fusions) + dynamic INT8", m["candidate_metric"], m["candidate_f1"],
         m["candidate_f1_macro"], f"{m['speedup']:.2f}x ({m['speedup_ci'][0]:.2f}-{m['speedup_ci'][1]:.2f})",
         m["candidate_throughput"], m["candidate_p50_ms"], m["candidate_size_mb"], f"{m['top1_agreement']:.1f}"),
    ]
    table = ["| model | accuracy | F1 (paraphrase) | macro-F1 | throughput vs PyTorch, batch 32 (95% CI) | pairs/s "
             "| batch-1 p50 ms | size MB | top-1 agreement % |", "|---|---|---|---|---|---|---|---|---|"]
    for name, acc, f1, f1m, speed, tput, p50, size, agree in rows:
        table.append(f"| {name} | {acc:.2f} | {f1:.2f} | {f1m:.2f} | {speed} | {tput:.0f} | {p50:.2f} | {size:.1f} "
                     f"| {agree} |")
    body = "\n".join([
        "## Bring your own model: a sentence-pair classifier (examples/pair-classifier.yaml)",
        "",
        f"- Date: {stamp()}",
        f"- Machine: {machine()}; {m['threads']} threads for PyTorch and ONNX Runtime",
        f"- Command: `{COMMAND}` (model {built})",
        "- Model: the packaged all-MiniLM-L6-v2 fine-tuned as a `BertForSequenceClassification` (150 seeded steps of 16 "
        "STS-B train pairs, label paraphrase when score >= 3), given to slimops as a plain Hugging Face directory.",
        f"- Data: the first {m['examples']} STS-B dev pairs as a header-row TSV with string labels, read by column name "
        "(`columns: {text: sentence1, text_pair: sentence2, label: label}`), labels through config.json's label2id.",
        f"- Protocol: one `slimops run` of the recipe; its validate step measured both models in the same process on the "
        f"same data: {m['timing']['rounds']} alternating timing rounds of {m['timing']['examples_per_round']} pairs "
        "at batch 32 (tokenization included), speedup = median of AB+BA pairs with a bootstrap interval; batch-1 p50 "
        "over single-pair requests; size = model files on disk.",
        f"- Gate: {report['verdict']} ({', '.join(report['reasons']) or 'every check passed'}); accuracy drop "
        f"{m['metric_drop']:.2f} points, 95% paired-bootstrap interval [{m['metric_drop_ci'][0]:.2f}, "
        f"{m['metric_drop_ci'][1]:.2f}]",
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in library_versions().items()),
        "",
        *table,
    ])
    print(body)
    if args.write:
        write_section(Path(args.write), "pair-classifier", body)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
