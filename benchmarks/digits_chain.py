"""The digits chain (examples/digits-full.yaml): trained fp32 CNN vs the pruned + INT8 + packed artifact,
measured side by side by the recipe's validate step. Prints a table; with --write, updates BENCHMARKS.md.

    python benchmarks/digits_chain.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import machine, stamp, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "digits-full.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", help="rewrite this Markdown file's digits section")
    args = parser.parse_args()
    from slimops.manifest import read_manifest
    from slimops.runner import run_recipe

    result = run_recipe(RECIPE, ROOT / "runs" / "bench-digits-full", use_cache=False)
    steps = {r["id"]: read_manifest(Path(r["out"])) for r in result.summary["steps"]}
    m = steps["validate"]["metrics"]
    prune, pack = steps["prune"]["metrics"], steps["pack"]["metrics"]
    speedup_rounds = m["speedup_rounds"]
    table = "\n".join([
        "| model | accuracy % | batch-32 throughput/s | speedup (min-max over rounds) | batch-1 p50 ms | size on disk | size ratio |",
        "|---|---|---|---|---|---|---|",
        f"| trained DigitsCNN, PyTorch fp32 | {m['baseline_metric']:.2f} | {m['baseline_throughput']:,.0f} | 1.00x | "
        f"{m['baseline_p50_ms']:.3f} | {m['baseline_size_mb'] * 1e3:,.1f} kB | 1.00 |",
        f"| pruned {prune['sparsity']:.0%} + static INT8 + zstd pack | {m['candidate_metric']:.2f} | "
        f"{m['candidate_throughput']:,.0f} | {m['speedup']:.2f}x ({min(speedup_rounds):.2f}-{max(speedup_rounds):.2f}) | "
        f"{m['candidate_p50_ms']:.3f} | {m['candidate_size_mb'] * 1e3:,.1f} kB | {m['size_ratio']:.3f} |",
    ])
    gate = result.summary["gate"]
    verdict = f"gate {'PASSED' if gate['passed'] else 'FAILED'}" + ("" if gate["passed"] else ": " + "; ".join(gate["reasons"]))
    print(table)
    print(verdict)
    if args.write:
        write_section(Path(args.write), "digits-chain", "\n".join([
            "## Digits chain: train → prune → INT8 → pack (examples/digits-full.yaml)",
            "",
            f"- Date: {stamp()}; machine: {machine()}; 2 threads",
            "- Command: `python benchmarks/digits_chain.py --write BENCHMARKS.md` (runs the recipe with --no-cache)",
            f"- Accuracy on the 450-image test split; throughput over the same 450 images at batch 32, "
            f"{len(speedup_rounds)} alternating rounds (median); packed size {pack['packed_size_bytes']:,} bytes "
            f"(plain INT8 ONNX {pack['plain_size_bytes']:,} bytes, zstd ratio {pack['ratio']:.2f}x); {verdict}.",
            "",
            table,
        ]))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
