"""The GPU paths, checked on a machine with an NVIDIA GPU: slimops' FP16 MiniLM (export -> compile use_gpu ->
quantize fp16) on ONNX Runtime's CUDA execution provider, against the fp32 model's embeddings computed on the
CPU where the model was made.

Prepared here by ``benchmarks/gpu_prepare.sh`` (models + reference embeddings in .gpu/), run there with only
numpy, scipy, tokenizers and onnxruntime-gpu. Prints one JSON object; ``--write BENCHMARKS.md`` (run where the
repo is) turns a saved result into a section.

    python benchmarks/gpu_check.py --models .gpu --data examples/data/stsb/sts-dev.tsv > result.json
    python benchmarks/gpu_check.py --result result.json --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def read_sts(path: Path):
    pairs, scores = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 7:
            pairs.append((cols[5], cols[6]))
            scores.append(float(cols[4]))
    return pairs, scores


def embed(session, tokenizer, sentences, batch):
    import numpy as np

    names = {i.name for i in session.get_inputs()}
    out = []
    for start in range(0, len(sentences), batch):
        enc = tokenizer.encode_batch(sentences[start:start + batch])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = session.run(None, feed)[0].astype(np.float32)
        summed = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
        out.append(summed / np.linalg.norm(summed, axis=1, keepdims=True))
    return np.concatenate(out)


def check(models: Path, data: Path) -> dict:
    import numpy as np
    import onnxruntime as ort
    from scipy.stats import spearmanr
    from tokenizers import Tokenizer

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, where torch found them
    result = {"onnxruntime": ort.__version__, "available_providers": ort.get_available_providers()}
    tokenizer = Tokenizer.from_file(str(models / "tokenizer.json"))
    tokenizer.enable_truncation(128)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    pairs, scores = read_sts(data)
    sentences = [s for pair in pairs for s in pair]
    reference = np.load(models / "fp32_cpu_embeddings.npy")

    rows = []
    for label, file, providers in (
        ("fp16, CUDA EP", "fp16.onnx", ["CUDAExecutionProvider"]),
        ("int8 (CPU build), CPU EP", "int8.onnx", ["CPUExecutionProvider"]),
        ("fp16, TensorRT EP", "fp16.onnx", ["TensorrtExecutionProvider", "CUDAExecutionProvider"]),
    ):
        if not (models / file).is_file():
            continue
        row = {"variant": label}
        try:
            session = ort.InferenceSession(str(models / file), providers=providers)
        except Exception as err:  # report, do not hide: a provider that cannot start is a finding
            rows.append({**row, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
            continue
        row["providers_used"] = session.get_providers()
        if providers[0] not in row["providers_used"]:
            rows.append({**row, "error": f"{providers[0]} not used (fell back to {row['providers_used']})"})
            continue
        emb = embed(session, tokenizer, sentences, 32)
        cos = (emb[0::2] * emb[1::2]).sum(1)
        row["spearman_x100"] = round(100 * spearmanr(cos, scores).correlation, 2)
        row["mean_cos_vs_fp32_cpu"] = round(float((emb * reference).sum(1).mean()), 4)
        timed = sentences[:1024]
        embed(session, tokenizer, timed[:64], 32)  # warm-up (CUDA graphs, allocator)
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            embed(session, tokenizer, timed, 32)
            runs.append(len(timed) / (time.perf_counter() - t0))
        row["batch32_sentences_per_s"] = round(statistics.median(runs), 1)
        lat = []
        for sentence in timed[:200]:
            t0 = time.perf_counter()
            embed(session, tokenizer, [sentence], 1)
            lat.append((time.perf_counter() - t0) * 1000)
        lat.sort()
        row["batch1_p50_ms"] = round(lat[len(lat) // 2], 2)
        row["batch1_p95_ms"] = round(lat[int(len(lat) * 0.95)], 2)
        rows.append(row)
    result["rows"] = rows
    ref_cos = (reference[0::2] * reference[1::2]).sum(1)
    result["fp32_cpu_spearman_x100"] = round(100 * spearmanr(ref_cos, scores).correlation, 2)
    return result


def write(result: dict, target: Path, machine: str, when: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _markdown import write_section

    lines = [f"## FP16 on a GPU (ONNX Runtime CUDA execution provider)", "",
             f"Machine: {machine}. Date: {when}. Command: `bash benchmarks/gpu_prepare.sh` here, then "
             "`python benchmarks/gpu_check.py --models .gpu --data examples/data/stsb/sts-dev.tsv` on the GPU machine "
             f"(onnxruntime-gpu {result['onnxruntime']}). Models: slimops export -> compile (use_gpu) -> quantize fp16, "
             "and the CPU INT8 model of `examples/minilm-sts.yaml` for comparison on the GPU machine's CPU. "
             f"STS-B dev, all 1,500 pairs; the fp32 model on the CPU scores {result['fp32_cpu_spearman_x100']}.", "",
             "| variant | providers used | Spearman x100 | mean cos vs fp32 (CPU) | batch-32 sentences/s | batch-1 p50 ms | p95 ms |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['variant']} | not run: {row['error']} | | | | | |")
        else:
            lines.append(f"| {row['variant']} | {', '.join(row['providers_used'])} | {row['spearman_x100']} | "
                         f"{row['mean_cos_vs_fp32_cpu']} | {row['batch32_sentences_per_s']} | {row['batch1_p50_ms']} | "
                         f"{row['batch1_p95_ms']} |")
    write_section(target, "gpu-fp16", "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--result", type=Path, help="a saved result JSON to write into --write")
    parser.add_argument("--write", type=Path)
    parser.add_argument("--machine", default="one NVIDIA H200 (lent device machine)")
    parser.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    args = parser.parse_args()
    if args.result:
        write(json.loads(args.result.read_text()), args.write, args.machine, args.date)
        return 0
    print(json.dumps(check(args.models, args.data), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
