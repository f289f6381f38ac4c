"""The training loop: AdamW on the task's loss, evaluated every ``eval_every`` steps, the best student kept.

Progress is checkpointed to ``ckpt_dir`` (safetensors + JSON, optimizer and RNG state included): a rerun with
the same ``resume_key`` continues from the last checkpoint; another key discards it. A finished run removes it.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimops import progress
from slimops.distillation.checkpoint import check_ours, clone, load_checkpoint, save_checkpoint, unflatten_optimizer
from slimops.distillation.students import param_count
from slimops.distillation.tasks import ClassifierTask, EncoderTask
from slimops.evaluate import metric_name, task_metrics
from slimops.handlers.info import ModelInfo


@dataclass
class Distilled:
    model_info: ModelInfo  # the student as written
    metrics: dict
    details: dict


def distill(config, info, data, eval_data, teacher_dir: Path, out_dir: Path, ckpt_dir: Path, resume_key: str,
            student_dir: Path | None = None, student_info=None, threads: int | None = None) -> Distilled:
    """Train a student of the teacher in ``teacher_dir`` (described by ``info``) and write the best one to ``out_dir``.

    ``config`` has the distill step's fields (student, loss, lr, max_steps, ...), with ``lr`` a number.
    ``student_dir`` / ``student_info``: the model to fine-tune as the student; otherwise it is built from
    ``config.student``. An encoder student is saved into ``out_dir`` over the input's tokenizer and config files.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    if info.format == "hf":
        task = EncoderTask(config, info, data, teacher_dir, student_dir)
    else:
        task = ClassifierTask(config, info, data, teacher_dir, student_dir, student_info, threads)
    return _train(config, info, task, data, eval_data, out_dir, ckpt_dir, resume_key)


def _train(config, info, task, data, eval_data, out_dir: Path, ckpt_dir: Path, resume_key: str) -> Distilled:
    import torch

    student = task.student.train()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=float(config.lr))
    n = len(data)
    per_epoch = math.ceil(n / config.batch_size)
    metric = metric_name(info.task, eval_data) if eval_data is not None else None

    step, best_metric, best_step, stale_evals, best_state = 0, None, None, 0, None
    history: list[dict] = []
    resumed_from = 0
    discarded = False
    check_ours(ckpt_dir)
    saved = load_checkpoint(ckpt_dir, resume_key)
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
                    save_checkpoint(ckpt_dir, resume_key, student, optimizer, best_state, {
                        "step": step, "best_metric": best_metric, "best_step": best_step,
                        "stale_evals": stale_evals, "history": history})
            if stopped_early:
                break
    seconds = time.perf_counter() - started - eval_seconds
    steps_here = step - first_step

    if best_state is None:  # no eval data: the last weights
        best_state, best_step = clone(student.state_dict()), step
    out_info = task.save(out_dir, best_state)
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
    return Distilled(model_info=out_info, metrics=metrics, details=details)
