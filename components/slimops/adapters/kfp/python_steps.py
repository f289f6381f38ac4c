"""The bodies of the slimops Python components: one plain function per step, wrapped by ``components.py``.

Why one written-out function per step rather than a factory: KFP ships a Python component as the *source text*
of its function (``inspect.getsource``) and runs it in a fresh module inside the container. A function made in
a factory loop would lose its closure (the step name) on the way, so each step gets a two-line function of its
own whose body calls ``slimops.adapters.kfp.runtime`` (plain Python on the slimops image). A test keeps this
list equal to the step registry.

``config`` is the step's options as a JSON string (``json.dumps({...})``; see ``slimops steps NAME``);
``recipe_dir`` is where relative data paths in it are found inside the task; ``threads`` 0 means all cores.
"""

# No `from __future__ import annotations`: KFP reads the annotations as types to build each interface.
from typing import Optional

from kfp.dsl import HTML, Input, Markdown, Metrics, Model, Output, OutputPath


def source(output_model: Output[Model], spec: str, recipe_dir: str = "."):
    """slimops source: the recipe's model section (package, path or seeded factory) as a model directory."""
    from slimops.adapters.kfp.runtime import materialize
    materialize(spec, output_model, recipe_dir)


def train(model: Input[Model], output_model: Output[Model], metrics: Output[Metrics], config: str = "{}",
          recipe_dir: str = ".", threads: int = 0):
    """slimops train: fit a PyTorch classifier on labelled recipe data."""
    from slimops.adapters.kfp.runtime import run_step_task
    run_step_task("train", model, output_model, metrics, config, recipe_dir, threads)


def export(model: Input[Model], output_model: Output[Model], metrics: Output[Metrics], config: str = "{}",
           recipe_dir: str = ".", threads: int = 0):
    """slimops export: Hugging Face / PyTorch to ONNX, parity-checked."""
    from slimops.adapters.kfp.runtime import run_step_task
    run_step_task("export", model, output_model, metrics, config, recipe_dir, threads)


def compile(model: Input[Model], output_model: Output[Model], metrics: Output[Metrics], config: str = "{}",
            recipe_dir: str = ".", threads: int = 0):
    """slimops compile: ONNX Runtime graph optimisation with transformer fusions, or OpenVINO IR."""
    from slimops.adapters.kfp.runtime import run_step_task
    run_step_task("compile", model, output_model, metrics, config, recipe_dir, threads)


def quantize(model: Input[Model], output_model: Output[Model], metrics: Output[Metrics], config: str = "{}",
             recipe_dir: str = ".", threads: int = 0):
    """slimops quantize: ONNX Runtime dynamic/static INT8, INT4 weight-only or FP16."""
    from slimops.adapters.kfp.runtime import run_step_task
    run_step_task("quantize", model, output_model, metrics, config, recipe_dir, threads)


def prune(model: Input[Model], output_model: Output[Model], metrics: Output[Metrics], config: str = "{}",
          recipe_dir: str = ".", threads: int = 0):
    """slimops prune: unstructured magnitude or structured pruning."""
    from slimops.adapters.kfp.runtime import run_step_task
    run_step_task("prune", model, output_model, metrics, config, recipe_dir, threads)


def factorize(model: Input[Model], output_model: Output[Model], metrics: Output[Metrics], config: str = "{}",
              recipe_dir: str = ".", threads: int = 0):
    """slimops factorize: low-rank factorization of linear layers by truncated SVD."""
    from slimops.adapters.kfp.runtime import run_step_task
    run_step_task("factorize", model, output_model, metrics, config, recipe_dir, threads)


def pack(model: Input[Model], output_model: Output[Model], metrics: Output[Metrics], config: str = "{}",
         recipe_dir: str = ".", threads: int = 0):
    """slimops pack: ONNX to model.onnx.zst (zstd), still loadable for validate."""
    from slimops.adapters.kfp.runtime import run_step_task
    run_step_task("pack", model, output_model, metrics, config, recipe_dir, threads)


def distill(model: Input[Model], output_model: Output[Model], metrics: Output[Metrics], config: str = "{}",
            recipe_dir: str = ".", threads: int = 0, baseline: Optional[Input[Model]] = None):
    """slimops distill: train a smaller student on the input model (the teacher), or, with student.from_input,
    train the input model against the teacher given as baseline."""
    from slimops.adapters.kfp.runtime import run_step_task
    run_step_task("distill", model, output_model, metrics, config, recipe_dir, threads, baseline=baseline)


def validate(model: Input[Model], baseline: Input[Model], output_model: Output[Model], metrics: Output[Metrics],
             report: Output[HTML], passed: OutputPath(bool), config: str = "{}", recipe_dir: str = ".",
             threads: int = 0, on_gate_fail: str = "exit"):
    """slimops validate: measure baseline and candidate in one run and apply the gate (passed: the verdict;
    report: the gate's report.html).

    on_gate_fail: exit (a failed gate fails the task) or continue (the pipeline branches on passed).
    """
    from slimops.adapters.kfp.runtime import run_step_task
    run_step_task("validate", model, output_model, metrics, config, recipe_dir, threads, baseline=baseline,
                  passed_path=passed, on_gate_fail=on_gate_fail, report=report)


def register(model: Input[Model], output_model: Output[Model], metrics: Output[Metrics], config: str = "{}",
             recipe_dir: str = ".", threads: int = 0):
    """slimops register: register a validated model in the MLflow model registry (alias challenger)."""
    from slimops.adapters.kfp.runtime import run_step_task
    run_step_task("register", model, output_model, metrics, config, recipe_dir, threads)


def promote(model: Input[Model], output_model: Output[Model], metrics: Output[Metrics], config: str = "{}",
            recipe_dir: str = ".", threads: int = 0):
    """slimops promote: move the registry's champion alias to a registered model whose gate passed."""
    from slimops.adapters.kfp.runtime import run_step_task
    run_step_task("promote", model, output_model, metrics, config, recipe_dir, threads)


def deploy(model: Input[Model], output_model: Output[Model], metrics: Output[Metrics], config: str = "{}",
           recipe_dir: str = ".", threads: int = 0):
    """slimops deploy: put a validated model behind an endpoint (SageMaker, Azure ML, Vertex AI) or KServe."""
    from slimops.adapters.kfp.runtime import run_step_task
    run_step_task("deploy", model, output_model, metrics, config, recipe_dir, threads)


def gate_rejected(validated: Input[Model], report: Output[Markdown]):
    """The gate-failed branch: explain why the model was not promoted (reasons and every check)."""
    from slimops.adapters.kfp.rejection import write_rejection
    write_rejection(validated.path, report.path)


STEP_FUNCTIONS = {f.__name__: f for f in (train, export, compile, quantize, prune, factorize, pack, distill,
                                          validate, register, promote, deploy)}
