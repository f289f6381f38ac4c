"""Where the time goes: ONNX Runtime's per-operator kernel time for the variants built by
quantize_minilm.py (run that first), on 31 batches of 32 STS-B dev sentences, 2 threads.

    python benchmarks/profile_ops.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import machine, stamp, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench-minilm"
VARIANTS = {"ORT fp32 (export)": WORK / "export", "slimops ORT dynamic int8": WORK / "best-1-quantize",
            "Optimum default int8": WORK / "optimum"}


def profile(model_dir: Path, batches: list[list[str]]) -> collections.Counter:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    onnx_file = next(p for p in sorted(model_dir.glob("*.onnx")))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    names = [i.name for i in session.get_inputs()]
    for batch in batches:
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=128, return_tensors="np")
        session.run(None, {n: encoded[n].astype(np.int64) for n in names})
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", help="rewrite this Markdown file's profile section")
    args = parser.parse_args()
    from slimops.data import DataSpec, load_dataset

    sentences = load_dataset(DataSpec(format="sts", path=str(ROOT / "examples/data/stsb/sts-dev.tsv"))).inputs
    batches = [sentences[i:i + 32] for i in range(0, 992, 32)]
    lines = ["| variant | kernel time ms | top operators (share of kernel time) |", "|---|---|---|"]
    for name, path in VARIANTS.items():
        if not path.is_dir():
            print(f"missing {path}: run benchmarks/quantize_minilm.py first", file=sys.stderr)
            return 2
        totals = profile(path, batches)
        total = sum(totals.values())
        top = ", ".join(f"{op} {100 * t / total:.0f}%" for op, t in totals.most_common(4))
        lines.append(f"| {name} | {total / 1000:.0f} | {top} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section(Path(args.write), "minilm-profile", "\n".join([
            "## Where the time goes (ONNX Runtime kernel time, 992 dev sentences at batch 32)",
            "",
            f"- Date: {stamp()}; machine: {machine()}; 2 intra-op threads",
            "- Command: `python benchmarks/profile_ops.py --write BENCHMARKS.md` (after quantize_minilm.py)",
            "",
            table,
        ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
