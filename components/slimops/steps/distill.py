"""distill: train a smaller student to reproduce a teacher, on the CPU.

- Hugging Face sentence encoder -> a student keeping some of its layers (weights copied), trained so its
  sentence embeddings (pooled and normalised as the handlers do) match the teacher's (cosine or MSE).
- PyTorch tensor classifier -> a student from any factory, trained from scratch on the teacher's
  temperature-softened outputs (KL x T^2) plus ``alpha`` x cross-entropy when the data has labels.
- ``student: {from_input: true}``: the input model itself is the student (the recovery fine-tune after
  structured pruning); the teacher comes in as ``--baseline`` (a recipe's ``baseline:``).

The best student on ``eval_data`` (the task metric, every ``eval_every`` steps) is written in the teacher's
format, safetensors only. Checkpoints live in ``.<OUT name>.ckpt/`` beside the output: a rerun with the same
config and teacher resumes from the last one; a successful run removes it.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimops import progress
from slimops.data import DataSpec, load_dataset
from slimops.errors import BadInput
from slimops.evaluate import check_inputs, metric_name, task_metrics
from slimops.checkpoint import checkpoint_dir, clone, load_checkpoint, save_checkpoint, unflatten_optimizer
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
        import torch

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
        threads = config.threads or ctx.threads
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(config.seed)
        task = (_EncoderTask if encoder else _ClassifierTask)(ctx, config, info, data, Path(teacher_dir))
        return _train(ctx, config, info, task, data, eval_data, Path(teacher_dir))


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


# ----------------------------------------------------------------------------- tasks


class _EncoderTask:
    def __init__(self, ctx, config, info, data, teacher_dir):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        from slimops.students import check_encoder_pair, encoder_student

        self.info = info
        self.teacher = AutoModel.from_pretrained(str(teacher_dir), use_safetensors=True, trust_remote_code=False).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir), trust_remote_code=False)
        if config.student.from_input:
            self.student = AutoModel.from_pretrained(str(ctx.model_dir), use_safetensors=True, trust_remote_code=False)
            check_encoder_pair(self.teacher, self.student, AutoTokenizer.from_pretrained(str(ctx.model_dir), trust_remote_code=False),
                               self.tokenizer)
        else:
            self.student = encoder_student(self.teacher, config.student.layers, config.student.intermediate_size)
        if config.freeze_embeddings:
            self.student.get_input_embeddings().weight.requires_grad_(False)
        self.loss_kind = config.loss
        self.inputs = list(data.inputs)
        self.targets = self._embed(self.teacher, self.inputs)  # teacher outputs, computed once

    def _encode(self, texts):
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.info.max_length,
                              return_tensors="pt")

    def _pool(self, hidden, mask):
        import torch

        if self.info.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask[..., None].to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1) if self.info.normalize else pooled

    def forward(self, model, texts):
        encoded = self._encode(texts)
        return self._pool(model(**encoded).last_hidden_state, encoded["attention_mask"])

    def _embed(self, model, texts, batch_size=64):
        import torch

        was_training = model.training
        model.eval()
        with torch.inference_mode():
            out = torch.cat([self.forward(model, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
        model.train(was_training)
        return out

    def loss(self, idx):
        import torch

        predicted = self.forward(self.student, [self.inputs[i] for i in idx])
        target = self.targets[idx]
        if self.loss_kind == "cosine":
            return (1 - torch.nn.functional.cosine_similarity(predicted, target, dim=1)).mean()
        return ((predicted - target) ** 2).sum(1).mean()

    def outputs(self, model, eval_data):
        return self._embed(model, list(eval_data.inputs)).numpy()

    def save(self, ctx, state):
        from slimops.handlers.info import describe

        ctx.carry_files()
        for name in ("config.json", "model.safetensors"):
            (ctx.out_dir / name).unlink(missing_ok=True)  # never write through a hard link to the teacher
        self.student.load_state_dict(state)
        self.student.save_pretrained(str(ctx.out_dir), safe_serialization=True)
        return describe(ctx.out_dir).model_copy(update={"max_length": self.info.max_length})


class _ClassifierTask:
    def __init__(self, ctx, config, info, data, teacher_dir):
        import torch

        from slimops.handlers.runtime import TorchModule
        from slimops.students import check_classifier_pair, factory_student

        self.info = info
        self.config = config
        self.teacher = TorchModule(teacher_dir, info, config.threads or ctx.threads).model.eval()
        num_labels = info.num_labels
        x = torch.from_numpy(np.asarray(data.inputs, dtype=np.float32))
        with torch.inference_mode():
            self.targets = torch.cat([self.teacher(x[i:i + 256]) for i in range(0, len(x), 256)])
        if num_labels is None:
            num_labels = self.targets.shape[1]
        self.num_labels = num_labels
        if config.student.from_input:
            student_info = ctx.model_info
            self.student = TorchModule(ctx.model_dir, student_info, config.threads or ctx.threads).model.train()
            check_classifier_pair(self.student, student_info.input_shape or info.input_shape, num_labels, ctx.model_dir)
            self.factory, self.kwargs = student_info.factory, student_info.kwargs
        else:
            self.student = factory_student(config.student.factory, config.student.kwargs, info.input_shape, num_labels)
            self.factory, self.kwargs = config.student.factory, config.student.kwargs
        self.x = x
        self.y = None if data.labels is None else torch.from_numpy(np.asarray(data.labels, dtype=np.int64))

    def loss(self, idx):
        import torch.nn.functional as F

        t = self.config.temperature
        logits = self.student(self.x[idx])
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(self.targets[idx] / t, dim=1),
                      log_target=True, reduction="batchmean") * t * t
        if self.y is not None and self.config.alpha > 0:
            return kl + self.config.alpha * F.cross_entropy(logits, self.y[idx])
        return kl

    def outputs(self, model, eval_data):
        import torch

        was_training = model.training
        model.eval()
        with torch.inference_mode():
            out = model(torch.from_numpy(np.asarray(eval_data.inputs, dtype=np.float32))).float().numpy()
        model.train(was_training)
        return out

    def save(self, ctx, state):
        from safetensors.torch import save_file

        from slimops.handlers.info import ModelInfo
        from slimops.handlers.runtime import dump_architecture

        out_info = ModelInfo(format="torch", task="tensor-classification", file="model.safetensors",
                             factory=self.factory, kwargs=self.kwargs,
                             input_shape=self.info.input_shape, num_labels=self.num_labels, normalize=False)
        save_file({k: v.contiguous() for k, v in state.items()}, str(ctx.out_dir / out_info.file))
        dump_architecture(ctx.out_dir / "architecture.json", out_info)
        return out_info


# ----------------------------------------------------------------------------- training loop


def _train(ctx, config, info, task, data, eval_data, teacher_dir) -> StepResult:
    import torch

    from slimops.core import cache_key
    from slimops.students import param_count

    student = task.student.train()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=float(config.lr))
    n = len(data)
    per_epoch = math.ceil(n / config.batch_size)
    metric = metric_name(info.task, eval_data) if eval_data is not None else None

    ckpt_dir = checkpoint_dir(ctx.final_out)
    keyed = {"model": ctx.model_dir} if teacher_dir == ctx.model_dir else {"model": ctx.model_dir, "teacher": teacher_dir}
    config_hash = cache_key("distill", config, keyed)
    step, best_metric, best_step, stale_evals, best_state = 0, None, None, 0, None
    history: list[dict] = []
    resumed_from = 0
    discarded = False
    saved = load_checkpoint(ckpt_dir, config_hash)
    if saved is None and ckpt_dir.exists():
        discarded = True  # another config or teacher: start over
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if saved is not None:
        meta, weights, best_weights, opt_tensors = saved
        student.load_state_dict(weights)
        optimizer.load_state_dict(unflatten_optimizer(opt_tensors, meta["optimizer"]))
        if "__torch_rng_state__" in opt_tensors:
            torch.set_rng_state(opt_tensors["__torch_rng_state__"])
        step = resumed_from = meta["step"]
        best_metric, best_step, stale_evals = meta["best_metric"], meta["best_step"], meta["stale_evals"]
        history = meta.get("history", [])
        best_state = best_weights

    teacher_metric = None
    if eval_data is not None:
        teacher_metric = task_metrics(task.outputs(task.teacher, eval_data), eval_data)[metric]

    eval_seconds = 0.0

    def evaluate() -> float:
        nonlocal eval_seconds
        began = time.perf_counter()
        value = task_metrics(task.outputs(student, eval_data), eval_data)[metric]
        eval_seconds += time.perf_counter() - began
        return value

    if eval_data is not None and best_metric is None:
        best_metric, best_step, best_state = evaluate(), 0, clone(student.state_dict())  # the untrained student
        history.append({"step": 0, metric: round(best_metric, 4)})

    tty = sys.stderr.isatty()
    losses: list[float] = []
    started, eval_seconds = time.perf_counter(), 0.0
    first_step = step
    stopped_early = False
    with progress.task(f"distilling {'encoder' if info.format == 'hf' else 'classifier'} for {config.max_steps} "
                       f"steps on {n} examples (loss, {metric or 'no eval'} every {config.eval_every})",
                       config.max_steps) as advance:
        if step:
            advance(step)
        while step < config.max_steps:
            epoch, batch = divmod(step, per_epoch)
            order = np.random.default_rng([config.seed, epoch]).permutation(n)
            idx = order[batch * config.batch_size:(batch + 1) * config.batch_size]
            optimizer.zero_grad()
            loss = task.loss(torch.from_numpy(idx))
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            advance()
            if step % config.eval_every == 0 or step == config.max_steps:
                record = {"step": step, "loss": round(float(np.mean(losses[-config.eval_every:])), 6)}
                if eval_data is not None:
                    value = evaluate()
                    record[metric] = round(value, 4)
                    if value > best_metric:
                        best_metric, best_step, best_state, stale_evals = value, step, clone(student.state_dict()), 0
                    else:
                        stale_evals += 1
                history.append(record)
                if tty:
                    progress.note(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in record.items()
                                                                              if k != "step"))
                if config.patience and stale_evals >= config.patience:
                    stopped_early = True
                if step < config.max_steps and not stopped_early:
                    save_checkpoint(ckpt_dir, config_hash, student, optimizer, best_state, {
                        "step": step, "best_metric": best_metric, "best_step": best_step,
                        "stale_evals": stale_evals, "history": history})
            if stopped_early:
                break
    seconds = time.perf_counter() - started - eval_seconds
    steps_here = step - first_step

    if best_state is None:  # no eval data: the last weights
        best_state, best_step = clone(student.state_dict()), step
    out_info = task.save(ctx, best_state)
    student.load_state_dict(best_state)
    student_metric = evaluate() if eval_data is not None else None

    teacher_params, student_params = param_count(task.teacher), param_count(student)
    metrics = {
        "steps": step, "best_step": best_step, "resumed_from_step": resumed_from, "transfer_examples": n,
        "teacher_params": teacher_params, "student_params": student_params,
        "student_trainable_params": sum(p.numel() for p in student.parameters() if p.requires_grad),
        "param_ratio": round(student_params / teacher_params, 4),
        "final_loss": round(float(np.mean(losses[-config.eval_every:])), 6) if losses else None,
        "seconds_per_step": round(seconds / steps_here, 4) if steps_here else None,  # training only
        "eval_seconds": round(eval_seconds, 2),
    }
    if eval_data is not None:
        metrics.update({"metric": metric, "teacher_metric": teacher_metric, "student_metric": student_metric,
                        "metric_drop": teacher_metric - student_metric})
    details = {
        "student": config.student.model_dump(exclude_none=True), "lr": float(config.lr),
        "resumed_from_step": resumed_from, "stopped_early": stopped_early,
        "stale_checkpoint_discarded": discarded,
        "checkpoint_dir": str(ckpt_dir), "history": history,
        "optimizer": "AdamW; state checkpointed as safetensors + JSON and restored on resume",
    }
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return StepResult(model_info=out_info, metrics=metrics, details=details)


STEP = Distill
