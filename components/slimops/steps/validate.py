"""validate: baseline and candidate measured in the same run, on the same data, then gated."""

from __future__ import annotations

import os

from pydantic import Field

from slimops import memprobe, progress
from slimops.champion import ChampionRef, resolve_baseline
from slimops.data import DataSpec, load_for_model
from slimops.evaluate import (LOWER_IS_BETTER, alternate_latency, batches, check_inputs, drop_interval, fidelity,
                              headline_fidelity, metric_drop, metric_name, predict_all, sample_size_warnings,
                              task_metrics)
from slimops.gate import SPEED_CONFIDENCE, GatePolicy, check, reasons, sign, verdict
from slimops.timing import measure_speed
from slimops.handlers import describe, load
from slimops.handlers.info import TASK_HELP, TaskName
from slimops.manifest import hash_tree, link_or_copy, write_json_atomic
from slimops.steps import Step, StepConfig, StepResult

MODEL_SUFFIXES = (".onnx", ".onnx.data", ".onnx_data", ".safetensors", ".xml", ".bin", ".zst")


class ValidateConfig(StepConfig):
    data: DataSpec = Field(description="evaluation data (both models see exactly this)")
    batch_size: int = Field(32, ge=1, description="batch size for the metric and the throughput measurement")
    throughput_samples: int = Field(128, ge=1, description="examples timed per round (the first N of the data)")
    rounds: int = Field(20, ge=1, le=500, description="short alternating timing rounds (AB, BA, ...; odd "
                        "counts get one more); the speedup and its bootstrap interval come from AB+BA pairs")
    latency_runs: int = Field(100, ge=5, description="batch-1 requests per model for p50/p95")
    measure_memory: bool = Field(True, description="peak RSS of each model, measured in a fresh process")
    gate: GatePolicy = Field(default_factory=GatePolicy, description="the pass/fail policy")
    champion: ChampionRef | None = Field(None, description="compare against the registry's current champion of "
                                         "this model (recipe: baseline: champion); with none yet, the baseline input")
    task: TaskName = Field(None, description=TASK_HELP)


def model_size_bytes(model_dir) -> int:
    return sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file() and p.name.endswith(MODEL_SUFFIXES))


class Validate(Step):
    name = "validate"
    summary = "Measure baseline and candidate in one run (metric, fidelity, latency, throughput, size, memory); gate"
    Config = ValidateConfig
    role = "gate"
    extra_inputs = ("baseline",)

    def run(self, ctx, config: ValidateConfig) -> StepResult:
        baseline = resolve_baseline(ctx, config.champion)  # the champion's verified files, or --baseline
        baseline_dir = baseline.path
        dataset = load_for_model(config.data, ctx.model_dir, baseline_dir)  # labels: its ids; images: its processor
        baseline_info, candidate_info = describe(baseline_dir, config.task), ctx.model_info
        name = metric_name(candidate_info.task, dataset)
        metric_name(baseline_info.task, dataset)
        check_inputs(candidate_info, dataset, "validate data")
        check_inputs(baseline_info, dataset, "validate data")
        # Both models get the same threads (all usable cores unless the recipe says), pinned to the same cores.
        threads = ctx.threads or len(os.sched_getaffinity(0))
        models = {"baseline": load(baseline_dir, baseline_info, threads),
                  "candidate": load(ctx.model_dir, candidate_info, threads)}

        outputs, scores = {}, {}
        for role, model in models.items():
            with progress.task(f"evaluating {role} on {len(dataset)} examples", len(dataset)) as advance:
                outputs[role] = predict_all(model, dataset.inputs, config.batch_size, advance)
            scores[role] = task_metrics(outputs[role], dataset)

        timed = list(batches(dataset.inputs[: config.throughput_samples], config.batch_size))
        with progress.task(f"timing throughput ({config.rounds} alternating rounds)", config.rounds):
            speed = measure_speed(models, timed, config.rounds, threads,
                                  config.gate.confidence or SPEED_CONFIDENCE)
        for reason in speed["timing"]["contention"]:
            progress.note(f"validate: the machine is busy: {reason}", "yellow")
        latency = alternate_latency(models, dataset.inputs, config.latency_runs)
        sizes = {"baseline": model_size_bytes(baseline_dir), "candidate": model_size_bytes(ctx.model_dir)}
        memory = ({role: memprobe.measure(d, config.batch_size, threads)
                   for role, d in (("baseline", baseline_dir), ("candidate", ctx.model_dir))}
                  if config.measure_memory else {})

        base, cand = scores["baseline"][name], scores["candidate"][name]
        fid = fidelity(outputs["baseline"], outputs["candidate"], candidate_info.task, dataset)
        drop = drop_interval(outputs["baseline"], outputs["candidate"], dataset, config.gate.confidence or 0.95)
        warnings = sample_size_warnings(drop, config.gate.max_metric_drop)
        pairs = speed["timing"]["rounds"] // 2
        if pairs < 5 and config.gate.min_speedup is not None:
            warnings.append(f"only {pairs} AB+BA timing pair{'s' * (pairs != 1)}: the speedup's interval from so few "
                            "is rough (one pair gives none); use rounds of at least 10")
        metrics = {
            "metric": name,
            # metric_drop is how much worse the candidate is: for perplexity (lower is better) its increase
            "metric_direction": "lower_is_better" if name in LOWER_IS_BETTER else "higher_is_better",
            "baseline_metric": base,
            "candidate_metric": cand,
            "metric_drop": metric_drop(name, base, cand),
            "metric_drop_ci": [drop["low"], drop["high"]],
            "relative_metric_drop": metric_drop(name, base, cand) / abs(base) if base else 0.0,
            "relative_metric_drop_ci": ([drop["low"] / abs(base), drop["high"] / abs(base)] if base
                                        else [0.0, 0.0]),
            **{f"baseline_{k}": v for k, v in scores["baseline"].items() if k != name},
            **{f"candidate_{k}": v for k, v in scores["candidate"].items() if k != name},
            **fid,
            "fidelity": headline_fidelity(fid),
            **speed,
            "baseline_p50_ms": latency["baseline"]["p50_ms"],
            "baseline_p95_ms": latency["baseline"]["p95_ms"],
            "candidate_p50_ms": latency["candidate"]["p50_ms"],
            "candidate_p95_ms": latency["candidate"]["p95_ms"],
            "baseline_size_mb": sizes["baseline"] / 1e6,
            "candidate_size_mb": sizes["candidate"] / 1e6,
            "size_ratio": sizes["candidate"] / sizes["baseline"] if sizes["baseline"] else None,
            "baseline_peak_mb": memory.get("baseline"),
            "candidate_peak_mb": memory.get("candidate"),
            # The precision each model ran in, as its runtime reports it (OpenVINO's own property), not as asked.
            "baseline_precision": getattr(models["baseline"], "precision_ran", None) or baseline_info.precision,
            "candidate_precision": getattr(models["candidate"], "precision_ran", None) or candidate_info.precision,
            "batch_size": config.batch_size,
            "examples": len(dataset),
            "threads": threads,
        }
        rows = check(config.gate, metrics)
        decided = verdict(rows)
        passed = decided == "pass"
        for warning in warnings:
            progress.note(f"validate: {warning}", "yellow")

        # The validated artifact travels with its verdict: candidate files + gate_report.json.
        for path in ctx.model_dir.rglob("*"):
            if path.is_file() and path.name not in ("manifest.json", "gate_report.json"):
                target = ctx.out_dir / path.relative_to(ctx.model_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(path, target)

        report = {
            "passed": passed,
            "verdict": decided,
            "reasons": reasons(rows),
            "warnings": warnings,
            "checks": rows,
            "policy": config.gate.model_dump(),
            "metrics": metrics,
            "data": config.data.fingerprint(),
            "baseline": baseline.record,
            "candidate_files": hash_tree(ctx.out_dir),
        }
        write_json_atomic(ctx.out_dir / "gate_report.json", sign(report))
        return StepResult(model_info=candidate_info, metrics=metrics,
                          details={"checks": rows, "warnings": warnings, "baseline": baseline.record},
                          gate_passed=passed, gate_reasons=report["reasons"], gate_verdict=decided)


STEP = Validate
