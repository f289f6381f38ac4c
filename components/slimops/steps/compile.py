"""compile: ONNX Runtime graph optimisation (with the BERT transformer fusions), OpenVINO IR, or ``auto``: the
fastest backend and precision for the CPU the model will serve on, measured (slimops.compilation.search)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from slimops.data import DataSpec
from slimops.errors import BadInput
from slimops.steps import Step, StepConfig, StepResult

class AutoSearch(StepConfig):
    data: DataSpec = Field(description="evaluation data every candidate is measured on (validate's, or a subset)")
    calibration: DataSpec | None = Field(None, description="inputs for the static INT8 candidates (ORT static, NNCF); "
                                         "without it those candidates are left out")
    max_metric_drop: float | None = Field(1.0, ge=0, description="the gate's accuracy rule: points of task metric a "
                                          "candidate may lose against the step's input")
    max_relative_metric_drop: float | None = Field(None, ge=0, le=1, description="the same, as a fraction")
    min_fidelity: float | None = Field(None, description="min mean cosine / top-1 agreement % to the input's outputs")
    max_size_ratio: float | None = Field(None, gt=0, description="the gate's size rule: a candidate's model files at "
                                         "most this fraction of the input's (so a fast fp32/bf16 candidate is not "
                                         "kept for a gate that asks for a smaller model)")
    serve_on: Literal["local", "sagemaker", "azureml", "vertex", "kserve"] = Field(
        "local", description="where the kept model will be served: formats that target cannot run are left out")
    formats: list[Literal["onnx", "openvino"]] | None = Field(None, description="only these formats (default: all "
                                                              "that serve_on takes)")
    objective: Literal["throughput", "latency"] = Field(
        "throughput", description="what 'fastest' means: batch throughput vs the input (the gate's speed rule), or "
        "batch-1 p50 latency (an endpoint answering one request at a time)")
    batch_size: int = Field(32, ge=1, description="batch size of the metric and throughput runs")
    throughput_samples: int = Field(128, ge=1, description="examples timed per round")
    rounds: int = Field(6, ge=2, le=200, description="alternating timing rounds per candidate (vs the input model)")
    latency_runs: int = Field(30, ge=5, description="batch-1 requests per candidate for p50/p95")
    calibration_samples: int = Field(300, ge=1, description="calibration examples for the INT8 candidates")


class CompileConfig(StepConfig):
    target: Literal["onnxruntime", "openvino", "auto"] = Field(
        "onnxruntime", description="optimised ONNX for ORT, OpenVINO IR (extra 'openvino'), or auto: build the "
        "candidates for the serving CPU, measure each, keep the fastest that passes the accuracy rules")
    fusions: Literal["auto", "bert", "none"] = Field("auto", description="transformer fusions: auto = bert for BERT-like text models")
    opt_level: Literal[0, 1, 2, 99] = Field(1, description="ORT level baked into the saved graph; 1 keeps it portable across providers")
    use_gpu: bool = Field(False, description="fuse for the CUDA provider (fp16 targets)")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="openvino: the float precision the IR runs in "
                                               "(set explicitly: OpenVINO's default is bf16 on AVX512-BF16/AMX CPUs)")
    target_hardware: str | list[str] | None = Field(
        None, description="auto: the serving CPU when it is not this one: an instance family (c7i, aws:c6a, "
        "azure:dv5, gcp:c3, ml.c6i.xlarge) or a feature list [avx2, avx512_vnni, avx512_bf16, amx_int8, ...]; "
        "default: this machine's CPU, detected")
    search: AutoSearch | None = Field(None, description="auto: the data, accuracy rules and timing of the search")
    measured_on: list[str] | None = Field(None, description="auto: filled in by slimops with the CPU features of the "
                                          "machine that measures (so a cached search is not reused on another CPU)")

    @field_validator("target_hardware")
    @classmethod
    def _known_hardware(cls, value):
        from slimops import hardware

        if value is not None:
            try:
                hardware.resolve(value)
            except BadInput as err:
                raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _check(self):
        if self.precision == "bf16" and self.target != "openvino":
            raise ValueError("precision bf16 is an OpenVINO mode: use target: openvino")
        if self.target == "auto" and self.search is None:
            raise ValueError("target auto needs search: {data: ...} (the data every candidate is measured on)")
        if self.target != "auto" and (self.search is not None or self.target_hardware is not None
                                      or self.measured_on is not None):
            raise ValueError("search and target_hardware are for target: auto")
        return self


class Compile(Step):
    name = "compile"
    summary = "ONNX Runtime graph optimisation with transformer fusions (recorded), OpenVINO IR, or auto (measured)"
    Config = CompileConfig
    accepts = ("onnx",)
    extra = "openvino (target: openvino; auto for its OpenVINO candidates)"

    @classmethod
    def writes(cls) -> str:
        return "onnx (openvino with target: openvino; either with auto)"

    @classmethod
    def output_format(cls, config, input_format):
        if config.target == "auto":
            return None  # known once the search has measured the candidates
        return "openvino" if config.target == "openvino" else "onnx"

    def resolve(self, config: CompileConfig) -> CompileConfig:
        """auto on this machine: the detected CPU features become the config, so the manifest and the cache key say
        which CPU the search was for (a cached search is not reused on a different CPU)."""
        if config.target == "auto":
            from slimops.hardware import detect

            here = sorted(detect().features)
            return config.model_copy(update={"target_hardware": config.target_hardware or here, "measured_on": here})
        return config

    def run(self, ctx, config: CompileConfig) -> StepResult:
        info = ctx.model_info
        ctx.require_onnx("compile")
        ctx.carry_files()
        if config.target == "auto":
            return self._auto(ctx, info, config)
        if config.target == "openvino":
            return self._openvino(ctx, info, config.precision)
        from slimops.compilation import bert_shape, ort_optimize

        details = ort_optimize(ctx.model_dir / info.file, ctx.out_dir / "model.onnx", bert_shape(ctx.model_dir, info.task),
                               config.fusions, config.opt_level, config.use_gpu)
        out_info = info.model_copy(update={"file": "model.onnx"})
        return StepResult(model_info=out_info, details=details, metrics={"fused_ops": sum(details["fusions"].values())})

    def _openvino(self, ctx, info, precision="fp32"):
        from slimops.compilation import openvino_ir, ran_precision_of

        version = openvino_ir(ctx.model_dir / info.file, ctx.out_dir / "model.xml")
        if info.precision not in ("fp32", "bf16"):
            precision = info.precision  # an int8 IR: its float ops run f32
        out_info = info.model_copy(update={"format": "openvino", "file": "model.xml", "precision": precision})
        ran = ran_precision_of(ctx.out_dir / "model.xml", precision)
        if precision == "bf16" and ran != "bf16":
            from slimops import progress

            progress.note(f"compile: this CPU has no bf16 arithmetic, OpenVINO runs the bf16 IR in {ran}", "yellow")
        return StepResult(model_info=out_info, details={"openvino": version, "precision": precision, "precision_ran": ran})

    def _auto(self, ctx, info, config: CompileConfig) -> StepResult:
        from slimops import hardware, progress
        from slimops.compilation.search import Settings, copy_model, default_threads, run_search
        from slimops.data import load_for_model
        from slimops.evaluate import check_inputs
        from slimops.gate import GatePolicy

        search = config.search
        here = hardware.detect()
        # resolve() wrote this machine's features into the config when none were given: that is the CPU detected.
        target = here if config.target_hardware == sorted(here.features) else hardware.resolve(config.target_hardware)
        data = load_for_model(search.data, ctx.model_dir)  # labels / tags: the model's ids; images: its processor
        check_inputs(info, data, "compile search data")
        calibration = load_for_model(search.calibration, ctx.model_dir) if search.calibration else None
        if calibration is not None:
            check_inputs(info, calibration, "compile search calibration")
        from slimops.deploy import SERVES, SERVES_WHY

        takes = SERVES[search.serve_on]
        formats = tuple(f for f in takes if search.formats is None or f in search.formats)
        why = (f"serve_on {search.serve_on} takes {', '.join(takes)} only"
               f"{' (' + SERVES_WHY[search.serve_on] + ')' if search.serve_on in SERVES_WHY else ''}"
               if len(takes) < 2 else "not in search.formats")
        policy = GatePolicy(max_metric_drop=search.max_metric_drop, max_relative_metric_drop=search.max_relative_metric_drop,
                            min_fidelity=search.min_fidelity, max_size_ratio=search.max_size_ratio, min_speedup=None)
        settings = Settings(data=data, calibration=calibration, policy=policy, formats=formats, excluded_why=why,
                            hardware=target, threads=default_threads(ctx.threads), batch_size=search.batch_size,
                            throughput_samples=search.throughput_samples, rounds=search.rounds,
                            latency_runs=search.latency_runs, calibration_samples=search.calibration_samples,
                            objective=search.objective)
        notes = []
        if target.features - here.features:
            notes.append(f"the serving CPU ({target.name}) has {', '.join(sorted(target.features - here.features))}, "
                         f"which this machine ({here.name}) lacks: candidates were built for it but measured here")
        for note in notes:
            progress.note(f"compile: {note}", "yellow")
        result = run_search(ctx.model_dir, info, ctx.work_dir or ctx.out_dir.parent, settings,
                            progress=lambda msg: progress.note(msg))
        rows, chosen = result["rows"], result["chosen"]
        if chosen is None:
            raise BadInput("compile auto: no candidate passed the accuracy and size rules (" +
                           "; ".join(f"{r['candidate']}: {r.get('reason') or ', '.join(r.get('failed_rules', []))}"
                                     for r in rows)[:400] + "); loosen search.max_metric_drop or compile explicitly")
        kept = next(r for r in rows if r["chosen"])
        copy_model(result["dirs"][chosen], ctx.out_dir)
        out_info = info.model_copy(update={
            "format": kept["format"], "file": "model.xml" if kept["format"] == "openvino" else "model.onnx",
            "precision": kept["precision"]})
        details = {"auto": {"chosen": chosen, "hardware": target.record(), "measured_on": here.record(),
                            "metric": result["metric"], "input_metric": result["baseline_metric"],
                            "objective": search.objective,
                            "speedup_vs": "the step's input model (ONNX Runtime, as exported)",
                            "candidates": rows, "notes": notes},
                   "precision_ran": kept.get("precision_ran"), **kept.get("build", {})}
        metrics = {"auto_speedup": kept["speedup"], "auto_metric_drop": kept["metric_drop"],
                   "candidates_measured": sum(r["status"] == "measured" for r in rows)}
        return StepResult(model_info=out_info, details=details, metrics=metrics)


STEP = Compile
