"""slimops steps as KFP components, in two kinds with the same artifacts:

- Python components (``python_component("quantize")``, or simply ``components.quantize``): the step's function
  from ``python_steps`` on the slimops image, ``install_kfp_package=False`` (the image already has kfp). The
  body calls the core in-process. Outputs: ``output_model`` (Model), ``metrics`` (Metrics, each numeric metric
  logged with ``log_metric``); validate also takes ``baseline`` and outputs ``passed`` (bool) and ``report``
  (HTML: the gate's report.html).
- Container components (``container_component(call)``): the command is exactly ``StepCall.argv(...)``, the step
  contract ``slimops step NAME --model IN --out OUT --set k=<json> ...``, with KFP path placeholders. The
  step's options are fixed when the component is made (they are part of the command). Same outputs as the
  Python kind: ``metrics`` is the step's metrics as a JSON file (``--metrics-output``); only the Python kind
  also logs them as the artifact's metadata (KFP's scalar-metrics view), which a plain command cannot do. The
  gate's report.html comes from a ``gate-report`` task (``container_gate_report``) after validate.

The image comes from one setting: ``image=``, else ``$SLIMOPS_IMAGE``, else ``components/slimops/image.json``,
and is referenced by digest whenever the digest is known (``kfp_image``).

Steps with side effects (register, promote, deploy) make tasks with caching off: a cached register would make a
re-run skip the registration silently. Transforms and the gate keep KFP's caching.
"""

# No `from __future__ import annotations`: KFP reads the component functions' annotations as types.
import json
import re
from functools import lru_cache

from kfp import dsl
from kfp.dsl import HTML, Input, Markdown, Metrics, Model, Output, OutputPath
from kfp.dsl.python_component import PythonComponent

import slimops.plan
from slimops.adapters.kfp import python_steps
from slimops.errors import BadInput
from slimops.plan import Plan, StepCall, image_reference

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def kfp_image(image: str | None = None) -> str:
    """The component image (``image=``, else ``$SLIMOPS_IMAGE``, else image.json), by digest when it is known.

    A tag can be moved to other bits after the pipeline is compiled; a digest cannot. When the reference is the
    image ``infra/container/build.sh`` recorded in ``components/slimops/image.json`` (same name and tag), its
    recorded digest replaces the tag. Any other tag stays as given: its digest is not known here.
    """
    reference = image_reference(image)
    if _DIGEST.search(reference):
        return reference
    lock_file = slimops.plan.IMAGE_LOCK
    if lock_file.is_file():
        lock = json.loads(lock_file.read_text())
        if lock.get("image") == reference and lock.get("digest"):
            name = reference.rsplit(":", 1)[0] if ":" in reference.rsplit("/", 1)[-1] else reference
            return f"{name}@{lock['digest']}"
    return reference


class SideEffectComponent(PythonComponent):
    """A step with side effects (register, promote, deploy): every task it makes has caching off, so a re-run
    registers, promotes or deploys again instead of reusing the first run's outputs without running."""

    def __call__(self, *args, **kwargs):
        return super().__call__(*args, **kwargs).set_caching_options(False)


def python_component(step: str, image: str | None = None):
    """The Python component of a registered step (``slimops steps`` lists them)."""
    return _python_component(step, kfp_image(image))


@lru_cache(maxsize=None)
def _python_component(step: str, image: str):
    from slimops.steps import get_step

    declared = get_step(step)  # an unknown step: BadInput naming the known ones
    if step not in python_steps.STEP_FUNCTIONS:
        raise BadInput(f"step {step!r} has no KFP Python component yet; use container_component(...) for it")
    component = dsl.component(python_steps.STEP_FUNCTIONS[step], base_image=image, install_kfp_package=False)
    if declared.side_effects:
        return SideEffectComponent(component.component_spec, component.python_func)
    return component


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

    image = kfp_image(image)
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
    image = kfp_image(image)

    def source(output_model: Output[Model]):
        """slimops source: the recipe's model section (package, path or seeded factory) as a model directory."""
        return dsl.ContainerSpec(image=image, command=plan.source_argv(output_model.path))

    return dsl.container_component(source)


def container_gate_report(image: str | None = None):
    """The container kind's gate report: ``report.html`` of the validate output as an HTML artifact (the Python
    kind's validate writes it itself; a plain ``slimops step`` command cannot write a second output)."""
    image = kfp_image(image)

    def gate_report(validated: Input[Model], report: Output[HTML]):
        """The gate's report.html (verdict, checks, timing, steps, lineage) as an HTML artifact."""
        return dsl.ContainerSpec(image=image, command=["python3", "-m", "slimops.adapters.kfp.gate_report",
                                                       "--validated", validated.path, "--html", report.path])

    return dsl.container_component(gate_report)


def container_rejection(image: str | None = None):
    image = kfp_image(image)

    def gate_rejected(validated: Input[Model], report: Output[Markdown]):
        """The gate-failed branch: explain why the model was not promoted (reasons and every check)."""
        return dsl.ContainerSpec(image=image, command=["python3", "-m", "slimops.adapters.kfp.rejection",
                                                       "--validated", validated.path, "--report", report.path])

    return dsl.container_component(gate_rejected)


def __getattr__(name: str):
    """``components.quantize`` etc.: the step's Python component on the image from the one setting;
    ``components.gate_rejected``: the failed-gate branch's report (a Markdown artifact)."""
    if name in python_steps.STEP_FUNCTIONS:
        return python_component(name)
    if name == "gate_rejected":
        return python_helper(name, kfp_image())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
