"""slimops steps as KFP components, in two kinds with the same artifacts:

- Python components (``python_component("quantize")``, or simply ``components.quantize``): the step's function
  from ``python_steps`` on the slimops image, ``install_kfp_package=False`` (the image already has kfp). The
  body calls the core in-process. Outputs: ``output_model`` (Model), ``metrics`` (Metrics); validate also takes
  ``baseline`` and outputs ``passed`` (bool).
- Container components (``container_component(call)``): the command is exactly ``StepCall.argv(...)``, the step
  contract ``slimops step NAME --model IN --out OUT --set k=<json> ...``, with KFP path placeholders. The
  step's options are fixed when the component is made (they are part of the command). Same outputs as the
  Python kind: ``metrics`` is the step's metrics as a JSON file (``--metrics-output``); only the Python kind
  also logs them as the artifact's metadata (KFP's scalar-metrics view), which a plain command cannot do.

The image comes from one setting: ``image=``, else ``$SLIMOPS_IMAGE``, else ``components/slimops/image.json``.
"""

# No `from __future__ import annotations`: KFP reads the component functions' annotations as types.
from functools import lru_cache

from kfp import dsl
from kfp.dsl import Input, Markdown, Metrics, Model, Output, OutputPath

from slimops.adapters.kfp import python_steps
from slimops.errors import BadInput
from slimops.plan import Plan, StepCall, image_reference


def python_component(step: str, image: str | None = None):
    """The Python component of a registered step (``slimops steps`` lists them)."""
    return _python_component(step, image_reference(image))


@lru_cache(maxsize=None)
def _python_component(step: str, image: str):
    from slimops.steps import get_step

    get_step(step)  # an unknown step: BadInput naming the known ones
    if step not in python_steps.STEP_FUNCTIONS:
        raise BadInput(f"step {step!r} has no KFP Python component yet; use container_component(...) for it")
    return dsl.component(python_steps.STEP_FUNCTIONS[step], base_image=image, install_kfp_package=False)


@lru_cache(maxsize=None)
def python_helper(name: str, image: str):
    """``source`` (the recipe's model) or ``gate_rejected`` (the failed-gate branch), as Python components."""
    return dsl.component(getattr(python_steps, name), base_image=image, install_kfp_package=False)


def container_component(call: StepCall, image: str | None = None, recipe_dir: str = ".",
                        threads: int | None = None, gate: bool | None = None):
    """``call`` as a container component running ``call.argv(...)``. ``gate`` (default: the call is a validate)
    adds the ``passed`` output: a failed gate then exits 0 and writes false there, for ``dsl.If`` to branch on;
    without it a failed gate exits 3 and fails the task, as ``slimops run`` stops the chain."""
    from slimops.steps import get_step

    image = image_reference(image)
    gate = call.gated if gate is None else gate and call.gated
    argv = call.argv
    if gate:
        def component(model: Input[Model], baseline: Input[Model], output_model: Output[Model],
                      metrics: Output[Metrics], passed: OutputPath(bool)):
            return dsl.ContainerSpec(image=image, command=argv(model.path, output_model.path, baseline.path,
                                                                recipe_dir, threads, gate_output=passed,
                                                                metrics_output=metrics.path))
    elif call.baseline is not None:
        def component(model: Input[Model], baseline: Input[Model], output_model: Output[Model],
                      metrics: Output[Metrics]):
            return dsl.ContainerSpec(image=image, command=argv(model.path, output_model.path, baseline.path,
                                                                recipe_dir, threads, metrics_output=metrics.path))
    else:
        def component(model: Input[Model], output_model: Output[Model], metrics: Output[Metrics]):
            return dsl.ContainerSpec(image=image, command=argv(model.path, output_model.path, None,
                                                                recipe_dir, threads, metrics_output=metrics.path))
    component.__name__ = call.step
    component.__doc__ = f"slimops {call.step}: {get_step(call.step).summary}"
    return dsl.container_component(component)


def container_source(plan: Plan, image: str | None = None):
    """``slimops source --out OUT --set ...``: the recipe's model section as a model directory."""
    image = image_reference(image)

    def source(output_model: Output[Model]):
        """slimops source: the recipe's model section (package, path or seeded factory) as a model directory."""
        return dsl.ContainerSpec(image=image, command=plan.source_argv(output_model.path))

    return dsl.container_component(source)


def container_rejection(image: str | None = None):
    image = image_reference(image)

    def gate_rejected(validated: Input[Model], report: Output[Markdown]):
        """The gate-failed branch: explain why the model was not promoted (reasons and every check)."""
        return dsl.ContainerSpec(image=image, command=["python3", "-m", "slimops.adapters.kfp.rejection",
                                                       "--validated", validated.path, "--report", report.path])

    return dsl.container_component(gate_rejected)


def __getattr__(name: str):
    """``components.quantize`` etc.: the step's Python component on the image from the one setting."""
    if name in python_steps.STEP_FUNCTIONS:
        return python_component(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
