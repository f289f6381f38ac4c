"""``compile target: auto``: build the backends and precisions that make sense on the serving CPU, measure each
with validate's harness (``evaluate`` for the metric and fidelity, ``timing`` for the alternating throughput
rounds, batch-1 latency blocks), and keep the fastest one that passes the gate's accuracy rules (fastest at batch
throughput by default; ``objective: latency``: the lowest batch-1 p50).

Candidates (each only where it makes sense, and only in the formats the serving side takes):
- ``ort-fp32``: ONNX Runtime with the transformer fusions;
- ``ort-int8-dynamic``: dynamic INT8 on the fused graph (7-bit weights where the CPU lacks VNNI);
- ``ort-int8-static``: static INT8 with the int8 attention path: on the fused graph, the Attention ops become
  ``QAttention`` and the embeddings ``QEmbedLayerNormalization`` (ORT quantizes those fused ops only in its
  integer-op mode) and the other MatMuls static QDQ INT8, calibrated; a graph without fused attention gets static
  QDQ everywhere;
- ``openvino-fp32`` and ``openvino-bf16`` (bf16 only on a CPU with AVX512-BF16 or AMX);
- ``openvino-int8``: ``nncf.quantize`` (transformer preset for text encoders), and when it fails the accuracy
  rules, ``openvino-int8-accuracy``: ``nncf.quantize_with_accuracy_control`` against the same rules;
- ``openvino-int8-bf16``: the same NNCF model with its float ops in bf16 (a bf16 CPU only).

Speedups are against the step's input model (ONNX Runtime, as exported), measured in the same alternating rounds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from slimops.compilation import bert_shape, nncf_int8, openvino_ir, ort_optimize, ran_precision_of
from slimops.data import Dataset
from slimops.evaluate import batches, fidelity, headline_fidelity, metric_drop, metric_name, predict_all, task_metrics
from slimops.gate import GatePolicy, check
from slimops.hardware import Hardware
from slimops.handlers import load
from slimops.handlers.info import ModelInfo
from slimops.manifest import MANIFEST, link_or_copy, write_json_atomic

MODEL_FILES = (".onnx", ".onnx.data", ".onnx_data", ".xml", ".bin")


@dataclass
class Settings:
    data: Dataset
    calibration: Dataset | None
    policy: GatePolicy  # the accuracy and size rules are judged here (speed is the search's own objective)
    formats: tuple[str, ...]  # model formats the serving side takes
    excluded_why: str  # why a format is left out (the deploy target's word)
    hardware: Hardware
    threads: int
    batch_size: int = 32
    throughput_samples: int = 128
    rounds: int = 6
    latency_runs: int = 30
    calibration_samples: int = 300
    objective: str = "throughput"  # or "latency": the lowest batch-1 p50 wins
    notes: list[str] = field(default_factory=list)


CANDIDATES = (
    ("ort-fp32", "onnx", "fp32"),
    ("ort-int8-dynamic", "onnx", "int8"),
    ("ort-int8-static", "onnx", "int8"),
    ("openvino-fp32", "openvino", "fp32"),
    ("openvino-bf16", "openvino", "bf16"),
    ("openvino-int8", "openvino", "int8"),
    ("openvino-int8-bf16", "openvino", "int8-bf16"),
)


def plan(settings: Settings, has_openvino: bool, has_nncf: bool) -> list[dict]:
    """Every candidate with what will happen to it: build, or why it is left out."""
    rows = []
    for name, fmt, precision in CANDIDATES:
        row = {"candidate": name, "format": fmt, "precision": precision}
        why = None
        if fmt not in settings.formats:
            why = settings.excluded_why or f"format {fmt} not taken by the serving target"
        elif fmt == "openvino" and not has_openvino:
            why = "OpenVINO is not installed (pip install 'slimops[openvino]')"
        elif name in ("openvino-bf16", "openvino-int8-bf16") and not settings.hardware.bf16:
            why = "the serving CPU has no bf16 arithmetic (AVX512-BF16 / AMX)"
        elif name in ("ort-int8-static", "openvino-int8", "openvino-int8-bf16") and settings.calibration is None:
            why = "no calibration data (search.calibration)"
        elif name.startswith("openvino-int8") and not has_nncf:
            why = "NNCF is not installed (pip install 'slimops[openvino]')"
        rows.append({**row, "status": "excluded", "reason": why} if why else {**row, "status": "planned"})
    return rows


def run_search(model_dir: Path, info: ModelInfo, work: Path, settings: Settings, progress=None) -> dict:
    """Build, measure and choose. Returns {"rows": [...], "chosen": name or None, "dirs": {name: dir}}."""
    has_ov, has_nncf = _available("openvino"), _available("nncf")
    rows = plan(settings, has_ov, has_nncf)
    data, task = settings.data, info.task
    name = metric_name(task, data)
    baseline = load(model_dir, info, settings.threads)
    base_out = predict_all(baseline, data.inputs, settings.batch_size)
    base_metric = task_metrics(base_out, data)[name]
    timed = list(batches(data.inputs[: settings.throughput_samples], settings.batch_size))
    shape = bert_shape(model_dir, task)
    dirs: dict[str, Path] = {}

    def measured(row, cand_dir, cand_info):
        from slimops.evaluate import alternate_latency
        from slimops.timing import measure_speed

        model = load(cand_dir, cand_info, settings.threads)
        out = predict_all(model, data.inputs, settings.batch_size)
        metric = task_metrics(out, data)[name]
        fid = fidelity(base_out, out, task, data)
        speed = measure_speed({"baseline": baseline, "candidate": model}, timed, settings.rounds, settings.threads,
                              settings.policy.confidence or 0.95)
        latency = alternate_latency({"baseline": baseline, "candidate": model}, data.inputs, settings.latency_runs)
        size = _size(cand_dir)
        drop = metric_drop(name, base_metric, metric)  # perplexity: its increase
        judged = {"metric_drop": drop,
                  "relative_metric_drop": drop / abs(base_metric) if base_metric else 0.0,
                  "speedup": speed["speedup"], "size_ratio": size / _size(model_dir),
                  "candidate_p95_ms": latency["candidate"]["p95_ms"],
                  "fidelity": headline_fidelity(fid)}
        rules = check(settings.policy.model_copy(update={"min_speedup": None, "max_p95_latency_ms": None}), judged)
        row.update(status="measured", precision_ran=getattr(model, "precision_ran", None) or cand_info.precision,
                   metric=metric, metric_drop=judged["metric_drop"],
                   relative_metric_drop=judged["relative_metric_drop"], fidelity=judged["fidelity"],
                   speedup=speed["speedup"], speedup_ci=speed["speedup_ci"],
                   throughput=speed["candidate_throughput"], p50_ms=latency["candidate"]["p50_ms"],
                   p95_ms=latency["candidate"]["p95_ms"], size_mb=size / 1e6,
                   accuracy_ok=all(r["passed"] for r in rules),
                   failed_rules=[r["check"] for r in rules if not r["passed"]],
                   contention=speed["timing"]["contention"])
        return row

    fused = work / "ort-fp32"
    for row in rows:
        if row["status"] != "planned":
            continue
        cand = work / row["candidate"]
        if progress:
            progress(f"compile auto: building and measuring {row['candidate']}")
        try:
            cand_info = _build(row, model_dir, info, cand, fused, shape, settings)
            if cand_info is None:
                continue
            dirs[row["candidate"]] = cand
            measured(row, cand, cand_info)
            if row["candidate"] == "openvino-int8" and not row["accuracy_ok"] and settings.policy.max_metric_drop is not None:
                retry = {"candidate": "openvino-int8-accuracy", "format": "openvino", "precision": "int8"}
                rows.insert(rows.index(row) + 1, retry)
                retry_dir = work / retry["candidate"]
                control = _accuracy_control(baseline, info, data, name, settings)
                retry_info = _build(retry, model_dir, info, retry_dir, fused, shape, settings, control)
                dirs[retry["candidate"]] = retry_dir
                measured(retry, retry_dir, retry_info)
        except Exception as err:  # one candidate's tool failing must not lose the others: recorded, not kept
            row.update(status="failed", reason=f"{type(err).__name__}: {' '.join(str(err).split())[:200]}")
    ok = [r for r in rows if r["status"] == "measured" and r["accuracy_ok"]]
    if settings.objective == "latency":
        chosen = min(ok, key=lambda r: r["p50_ms"])["candidate"] if ok else None
    else:
        chosen = max(ok, key=lambda r: r["speedup"])["candidate"] if ok else None
    for row in rows:
        row["chosen"] = row["candidate"] == chosen
    _mark_pareto(rows)
    return {"rows": rows, "chosen": chosen, "dirs": dirs, "baseline_metric": base_metric, "metric": name}


def _build(row, model_dir, info, cand, fused, shape, settings, control=None) -> ModelInfo | None:
    """Write the candidate's directory (model file + the input's tokenizer/config files + a manifest)."""
    cand.mkdir(parents=True, exist_ok=True)
    _carry(model_dir, cand)
    name = row["candidate"]
    source = model_dir / info.file
    details = {}
    if name == "ort-fp32":
        details = ort_optimize(source, cand / "model.onnx", shape)
        new = info.model_copy(update={"file": "model.onnx", "precision": "fp32"})
    elif name.startswith("ort-int8"):
        details = _ort_int8(name == "ort-int8-static", source, fused / "model.onnx", cand / "model.onnx",
                            model_dir, settings)
        new = info.model_copy(update={"file": "model.onnx", "precision": "int8"})
    elif name in ("openvino-fp32", "openvino-bf16"):
        precision = "bf16" if name.endswith("bf16") else "fp32"
        details = {"openvino": openvino_ir(source, cand / "model.xml")}
        new = info.model_copy(update={"format": "openvino", "file": "model.xml", "precision": precision})
    elif name == "openvino-int8-bf16" and _int8_ir(fused.parent):
        # The NNCF model measured above, compiled with bf16 float ops: quantized once, timed twice.
        int8 = _int8_ir(fused.parent)
        for path in int8.glob("model.*"):
            link_or_copy(path, cand / path.name)
        details = {"int8_model": f"{int8.name}'s, float ops compiled bf16"}
        new = info.model_copy(update={"format": "openvino", "file": "model.xml", "precision": "int8-bf16"})
    else:  # openvino-int8, openvino-int8-accuracy (and openvino-int8-bf16 when openvino-int8 was not built)
        ir = cand / "fp32.xml"
        openvino_ir(source, ir)
        feeds = _calibration_feeds(source, model_dir, settings.calibration.inputs[: settings.calibration_samples])
        details = nncf_int8(ir, cand / "model.xml", feeds, transformer=shape is not None, accuracy=control)
        for leftover in (ir, ir.with_suffix(".bin")):
            leftover.unlink()
        new = info.model_copy(update={"format": "openvino", "file": "model.xml", "precision": row["precision"]})
    if new.format == "openvino":
        ran = ran_precision_of(cand / new.file, new.precision)
        row["precision_ran"] = f"int8/{ran}" if new.precision.startswith("int8") else ran
    row["build"] = details
    write_json_atomic(cand / MANIFEST, {"step": "candidate", "model": new.model_dump()})
    return new


def _int8_ir(work: Path) -> Path | None:
    """The NNCF INT8 candidate already built: the accuracy-controlled one when the plain one failed the rules."""
    for name in ("openvino-int8-accuracy", "openvino-int8"):
        if (work / name / "model.xml").is_file():
            return work / name
    return None


def _ort_int8(static: bool, source: Path, fused: Path, target: Path, model_dir: Path, settings: Settings) -> dict:
    """ORT INT8 on the fused graph when there is one (ORT's own order: fuse, then quantize).

    dynamic: every MatMul and Attention (QAttention) with runtime activation scales. static: ORT quantizes the
    fused Attention op only in its integer-op (dynamic) mode, so the int8 attention path is two passes: the
    Attention ops to QAttention, then the remaining MatMuls static QDQ INT8 with calibrated activation ranges."""
    from slimops.quantization import quantize_model

    reduce_range = not settings.hardware.vnni  # 7-bit weights where u8 x s8 products would saturate
    src = fused if fused.is_file() else source

    def config(mode, op_types, const_b_only=True):
        return SimpleNamespace(mode=mode, per_channel=True, reduce_range=reduce_range, op_types=op_types,
                               matmul_const_b_only=const_b_only, calibration_method="minmax",
                               calibration_samples=settings.calibration_samples, activation_type="uint8")

    if not static:
        quantize_model(src, target, config("dynamic", None), [], model_dir)
        return {"reduce_range": reduce_range, "graph": "fused" if src == fused else "as exported"}
    import onnx

    if src == fused and any(n.op_type == "Attention" for n in onnx.load(str(src), load_external_data=False).graph.node):
        staged = target.with_name("qattention.onnx")
        # The embeddings go int8 in the same pass (QEmbedLayerNormalization), as in the dynamic candidate.
        quantize_model(src, staged, config("dynamic", ["Attention", "EmbedLayerNormalization"]), [], model_dir)
        quantize_model(staged, target, config("static", ["MatMul"]), [], model_dir, settings.calibration)
        staged.unlink()
        return {"reduce_range": reduce_range, "graph": "fused", "attention": "QAttention (int8)",
                "embeddings": "QEmbedLayerNormalization (int8)", "matmuls": "static QDQ int8"}
    # No fused attention to quantize: static QDQ everywhere, activation x activation MatMuls included.
    quantize_model(source, target, config("static", ["Conv", "Gemm", "MatMul"], const_b_only=False), [], model_dir,
                   settings.calibration)
    return {"reduce_range": reduce_range, "graph": "as exported", "matmuls": "static QDQ int8"}


def _accuracy_control(baseline, info, data: Dataset, name: str, settings: Settings) -> dict:
    """NNCF's validation set and function: the search's own data and metric, in its units (points x100)."""
    policy = settings.policy
    items = list(batches(data.inputs, settings.batch_size))

    def validate(compiled, validation):
        outputs = []
        for batch in validation:
            if info.task == "tensor-classification":
                outputs.append(np.asarray(compiled([np.asarray(batch, dtype=np.float32)])[0], dtype=np.float32))
                continue
            encoded = baseline.tokenize(batch)
            feeds = {port.get_any_name(): encoded[port.get_any_name()].astype(np.int64) for port in compiled.inputs}
            result = compiled(feeds)
            outputs.append(baseline.finish_outputs([np.asarray(result[port], dtype=np.float32) for port in compiled.outputs],
                                                   [port.get_any_name() for port in compiled.outputs], encoded))
        return task_metrics(np.concatenate(outputs), data)[name], None

    if policy.max_metric_drop is not None:
        max_drop, kind = policy.max_metric_drop, "absolute"
    else:
        max_drop, kind = policy.max_relative_metric_drop or 0.01, "relative"
    return {"validation": items, "validation_fn": validate, "max_drop": max_drop, "drop_type": kind}


def _calibration_feeds(source: Path, model_dir: Path, examples) -> list[dict]:
    from slimops.quantization import CalibrationFeeds

    return CalibrationFeeds(source, model_dir, examples).feeds


def _mark_pareto(rows: list[dict]) -> None:
    """A measured candidate is on the front when no other is at least as fast with at most its drop (one strictly)."""
    measured = [r for r in rows if r["status"] == "measured"]
    for row in rows:
        row["pareto"] = row in measured and not any(
            o is not row and o["speedup"] >= row["speedup"] and o["metric_drop"] <= row["metric_drop"]
            and (o["speedup"] > row["speedup"] or o["metric_drop"] < row["metric_drop"]) for o in measured)


def _carry(src: Path, dst: Path) -> None:
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if not path.is_file() or path.name in (MANIFEST, "gate_report.json") or path.name.endswith(MODEL_FILES):
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            link_or_copy(path, target)


def _size(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*") if p.is_file() and p.name.endswith(MODEL_FILES))


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def copy_model(cand: Path, out: Path) -> None:
    """The chosen candidate's model files into the step's output (its tokenizer files are already there)."""
    for path in cand.iterdir():
        if path.is_file() and path.name.endswith(MODEL_FILES):
            link_or_copy(path, out / path.name)


def default_threads(threads: int | None) -> int:
    return threads or len(os.sched_getaffinity(0))
