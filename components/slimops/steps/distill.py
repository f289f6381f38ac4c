"""distill: train a smaller student to reproduce a teacher, on the CPU (slimops.distillation).

- Hugging Face sentence encoder -> a student keeping some of its layers (weights copied);
- PyTorch tensor classifier -> a student from any factory, trained from scratch;
- ``student: {from_input: true}``: the input model itself is the student (the recovery fine-tune after
  structured pruning); the teacher comes in as ``--baseline`` (a recipe's ``baseline:``).

The best student on ``eval_data`` (the task metric, every ``eval_every`` steps) is written in the teacher's
format, safetensors only. Checkpoints live in ``.<OUT name>.ckpt/`` beside the output: a rerun with the same
config and teacher resumes from the last one; a successful run removes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimops.data import DataSpec, load_dataset
from slimops.errors import BadInput
from slimops.evaluate import check_inputs, metric_name
from slimops.steps import Step, StepConfig, StepResult


class StudentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layers: list[int] | None = Field(None, description="encoders: teacher layer indices to keep, e.g. [0, 2, 4]")
    intermediate_size: int | None = Field(None, gt=0, description="encoders: narrower FFN (largest-norm neurons)")
    factory: str | None = Field(None, description="classifiers: 'package.module:callable' of the student")
    kwargs: dict = Field(default_factory=dict, description="classifiers: keyword arguments of the factory")
    from_input: bool = Field(False, description="the input model is the student (e.g. a pruned model to recover); "
                                                "the teacher is --baseline DIR (recipe: baseline: <step id>)")

    @model_validator(mode="after")
    def _one_kind(self):
        given = [name for name in ("layers", "factory") if getattr(self, name) is not None]
        given += ["from_input"] if self.from_input else []
        if len(given) != 1:
            raise ValueError("give one of 'layers' (encoder teacher), 'factory' (classifier teacher) or "
                             f"'from_input: true' (the input is the student), not {' + '.join(given) or 'none'}")
        if self.layers is None and self.intermediate_size is not None:
            raise ValueError("intermediate_size applies to encoder students (with 'layers') only")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError("factory must be 'package.module:callable'")
        return self


class DistillConfig(StepConfig):
    student: StudentSpec = Field(description="{layers: [...]} for an encoder, {factory, kwargs} for a classifier")
    data: DataSpec = Field(description="transfer data the student learns the teacher's outputs on")
    eval_data: DataSpec | None = Field(None, description="task data (STS / labelled) for the metric and best checkpoint")
    loss: Literal["cosine", "mse"] = Field("cosine", description="encoders: embedding loss (MSE summed over dims)")
    freeze_embeddings: bool = Field(True, description="encoders: keep the teacher's word embeddings fixed (faster)")
    temperature: float = Field(2.0, gt=0, description="classifiers: softmax temperature of the KL term")
    alpha: float = Field(0.5, ge=0, description="classifiers: weight of the cross-entropy term (when labelled)")
    max_steps: int = Field(500, ge=1, description="optimiser steps at most")
    batch_size: int = Field(32, ge=1, description="examples per step")
    lr: float | Literal["auto"] = Field("auto", description="AdamW learning rate; auto: 1e-4 encoders, 3e-3 classifiers")
    eval_every: int = Field(50, ge=1, description="evaluate and checkpoint every this many steps")
    patience: int | None = Field(None, ge=1, description="stop after this many evaluations without improvement")
    seed: int = Field(0, description="seed for initialisation and shuffling")
    threads: int | None = Field(None, ge=1, description="training threads (default: the step's --threads); 1 is "
                                                       "often faster on a busy shared CPU, where threads wait on each other")

    @model_validator(mode="after")
    def _lr(self):
        if isinstance(self.lr, (int, float)) and not 0 < self.lr <= 1:
            raise ValueError("lr must be in (0, 1]")
        return self


class Distill(Step):
    name = "distill"
    summary = "Distil an HF encoder (keep layers) or PyTorch classifier (new student) into a smaller student"
    Config = DistillConfig
    accepts = ("hf", "torch")
    optional_inputs = ("baseline",)

    @classmethod
    def required_inputs(cls, config) -> tuple[str, ...]:
        return ("baseline",) if config.student.from_input else ()

    def resolve(self, config: DistillConfig) -> DistillConfig:
        # from_input: encoder or classifier is known only from the model, so "auto" is settled in run()
        if config.lr == "auto" and not config.student.from_input:
            return config.model_copy(update={"lr": _auto_lr(encoder=config.student.layers is not None)})
        return config

    def run(self, ctx, config: DistillConfig) -> StepResult:
        from slimops.core import cache_key
        from slimops.distillation import checkpoint_dir, distill
        from slimops.handlers import describe

        if config.student.from_input:
            # Recovery fine-tune: the input (e.g. a pruned model) learns from the unpruned teacher.
            teacher_dir = ctx.inputs.get("baseline")
            if teacher_dir is None:
                raise BadInput("student.from_input trains the input model against a teacher: give the teacher as "
                               "--baseline DIR (in a recipe, baseline: <step id or source>)")
            info = describe(teacher_dir)
            _check_model(info, teacher_dir, "teacher (--baseline)")
            _check_model(ctx.model_info, ctx.model_dir, "student (--model)")
            if ctx.model_info.format != info.format or ctx.model_info.task != info.task:
                raise BadInput(f"the student {ctx.model_dir} is a {ctx.model_info.format} {ctx.model_info.task} model "
                               f"but the teacher {teacher_dir} a {info.format} {info.task} one; distill between "
                               "models of one kind")
        else:
            teacher_dir, info = ctx.model_dir, ctx.model_info
            _check_model(info, teacher_dir, "teacher")
        encoder = info.format == "hf"
        if encoder and config.student.factory is not None:
            raise BadInput("the teacher is a Hugging Face encoder: give student.layers (e.g. [0, 2, 4]), not a factory")
        if not encoder and config.student.layers is not None:
            raise BadInput("the teacher is a PyTorch classifier: give student.factory (e.g. "
                           "slimops.zoo.digits:DigitsMobileNet), not layers")

        data = load_dataset(config.data)
        check_inputs(info, data, "distill data")
        eval_data = None
        if config.eval_data is not None:
            eval_data = load_dataset(config.eval_data)
            check_inputs(info, eval_data, "distill eval_data")
            metric_name(info.task, eval_data)

        if config.lr == "auto":
            config = config.model_copy(update={"lr": _auto_lr(encoder)})
        if encoder:
            ctx.carry_files()  # the student is saved over the input's tokenizer and config files
        # A checkpoint is resumed only by a run with the same config, input and teacher.
        keyed = {"model": ctx.model_dir} if teacher_dir == ctx.model_dir else {"model": ctx.model_dir, "teacher": teacher_dir}
        given = config.student.from_input
        result = distill(config, info, data, eval_data, Path(teacher_dir), ctx.out_dir, checkpoint_dir(ctx.final_out),
                         cache_key("distill", config, keyed), student_dir=ctx.model_dir if given else None,
                         student_info=ctx.model_info if given else None, threads=config.threads or ctx.threads)
        return StepResult(model_info=result.model_info, metrics=result.metrics, details=result.details)


def _auto_lr(encoder: bool) -> float:
    return 1e-4 if encoder else 3e-3


def _check_model(info, model_dir, role: str) -> None:
    if info.format not in ("hf", "torch"):
        raise BadInput(f"{model_dir} is an {info.format} model; distill needs the {role} as a Hugging Face encoder "
                       "or PyTorch classifier directory, not an exported one")
    if info.format == "hf" and info.task != "sentence-embedding":
        raise BadInput(f"distill takes a Hugging Face sentence encoder as {role}, not a {info.task} model")
    if info.format == "torch" and info.task != "tensor-classification":
        raise BadInput(f"distill takes a PyTorch tensor classifier as {role}, not {info.task}")


STEP = Distill
