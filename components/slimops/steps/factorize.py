"""factorize: low-rank factorization of linear layers by truncated SVD (slimops.factorization)."""

from __future__ import annotations

from pydantic import Field

from slimops.factorization import check_output, count_params, factorize_model, output_difference, save_model
from slimops.steps import Step, StepConfig, StepResult


class FactorizeConfig(StepConfig):
    energy: float = Field(0.95, gt=0, le=1, description="keep the smallest rank whose squared singular values "
                                                         "sum to at least this fraction of the total (0 < energy <= 1)")
    min_weights: int = Field(65536, ge=1, description="only MatMul/Gemm layers whose constant 2-D weight has at "
                                                      "least this many elements")
    max_rank_ratio: float = Field(0.8, gt=0, le=1, description="factorize a k x n layer only when "
                                                               "rank*(k+n) <= max_rank_ratio*k*n (it saves "
                                                               "weights and MACs); otherwise leave it")
    exclude_nodes: list[str] = Field(default_factory=list, description="names of MatMul/Gemm nodes (as in the "
                                                                       "input graph) to leave alone")


class Factorize(Step):
    name = "factorize"
    summary = "low-rank factorization of MatMul/Gemm weights by truncated SVD (rank chosen by the energy kept)"
    Config = FactorizeConfig
    accepts = ("onnx",)
    produces = "onnx"

    def run(self, ctx, config: FactorizeConfig) -> StepResult:
        import onnx

        info = ctx.model_info
        ctx.require_onnx("factorize")
        ctx.carry_files()
        model = onnx.load(str(ctx.model_dir / info.file))
        params_before = count_params(model)
        details = factorize_model(model, config.energy, config.min_weights, config.max_rank_ratio,
                                  config.exclude_nodes)
        target = ctx.out_dir / "model.onnx"
        save_model(model, target)
        problem = check_output(target, ctx.model_dir / info.file)
        if problem:
            details["checker"] = problem
        out_info = info.model_copy(update={"file": "model.onnx"})
        metrics = {"params_before": params_before, "params_after": count_params(model),
                   "factorized_layers": len(details["factorized"]),
                   "parity_max_abs_diff": output_difference(ctx.model_dir, info, ctx.out_dir, out_info, ctx.threads)}
        return StepResult(model_info=out_info, metrics=metrics, details=details)


STEP = Factorize
