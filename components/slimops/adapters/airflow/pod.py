"""A slimops step in the component image, as a Kubernetes pod: ``step_operator(step, runner="kubernetes")``.

``SlimopsStepPodOperator`` is a ``KubernetesPodOperator`` (apache-airflow-providers-cncf-kubernetes) whose
container runs the same command as every other runner, ``slimops step <name> --model IN --out OUT --set ...``
(``slimops.plan.StepCall.argv``), in the component image (``image=``, else ``$SLIMOPS_IMAGE``, else the image the
container build recorded; by digest when known). What the pod gets from the recipe and the run:

- resources: a CPU request of the recipe's ``threads`` (what the step will use), and the placement's accelerator as
  a limit; the placement's node selector and tolerations;
- environment: ``SLIMOPS_ACTOR`` = ``<dag_id>/<run_id>`` (the audit log's "who"), progress lines at INFO on the
  container's log, and for register / promote / deploy the registry directory and the ``slimops`` connection's
  credentials (put them in a Kubernetes Secret instead with ``secrets=`` / ``env_from=`` and leave the
  connection's login and password empty, if pod specs are readable where you run);
- the run's ``recipe`` / ``gate`` (conf or params), as under the local runner.

Steps pass model directories by path, so the runs directory (Variable ``slimops_runs_dir``) must be a volume
every step pod mounts at the same path (``volumes=`` / ``volume_mounts=``, or a ``pod_template_file``); the data a
recipe names by path likewise. Every step but register / promote is deferrable (``deferrable=True``: the worker
slot is free while the pod runs; the triggerer watches it). The step's result comes back through the provider's
XCom sidecar: the gate's verdict (``--gate-output``) or the step's metrics (``--metrics-output``). Exit codes
keep their meaning: 2 (bad input) and 3 (a failed gate, a refused registration) fail the task for good; 4 (an
inconclusive gate) and anything else (a lost node) are retried as the plan says.

Everything ``KubernetesPodOperator`` takes passes through (``namespace``, ``volumes``, ``service_account_name``,
``kubernetes_conn_id``, ``container_resources`` to replace the computed resources, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s

from slimops.adapters.airflow.hooks import DEFAULT_CONN_ID, SlimopsHook
from slimops.adapters.airflow.operators import (
    STEP_TIMEOUTS, _class_name, check_step, retry_arguments, run_actor, task_policy, verdict,
)
from slimops.adapters.airflow.per_run import RunSettings, settings_for_run, source_for_run
from slimops.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_GATE_INCONCLUSIVE, BadInput
from slimops.plan import Retry, StepCall, image_reference
from slimops.retry import SOURCE_RETRY
from slimops.steps import get_step, step_names

XCOM_RETURN = "/airflow/xcom/return.json"  # the file the provider's XCom sidecar reads back
LOG_LEVEL_ENV = {"SLIMOPS_LOG_LEVEL": "INFO"}  # progress lines on the container log (the task log)


def pod_resources(threads: int | None, placement: dict | None) -> k8s.V1ResourceRequirements | None:
    """What the step uses: ``threads`` CPUs (requested, so the scheduler places the pod where they are free) and
    the placement's accelerator (a limit, as Kubernetes wants for extended resources)."""
    requests = {"cpu": str(threads)} if threads else {}
    limits = {}
    accelerator = (placement or {}).get("accelerator")
    if accelerator:
        if "/" not in accelerator:
            raise BadInput(f"placement accelerator {accelerator!r} is not a Kubernetes resource name; for the "
                           "kubernetes runner write e.g. nvidia.com/gpu (a node type goes in node_selector)")
        limits[accelerator] = str((placement or {}).get("accelerator_limit") or 1)
    if not requests and not limits:
        return None
    return k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None)


def pod_placement(placement: dict | None) -> dict:
    placement = placement or {}
    settings = {}
    if placement.get("node_selector"):
        settings["node_selector"] = dict(placement["node_selector"])
    if placement.get("tolerations"):
        settings["tolerations"] = [k8s.V1Toleration(**t) for t in placement["tolerations"]]
    return settings


def exit_code(pod, container: str = "base") -> int | None:
    """The step container's exit code in a finished pod (None when it did not finish)."""
    statuses = getattr(getattr(pod, "status", None), "container_statuses", None) or []
    for status in statuses:
        terminated = getattr(getattr(status, "state", None), "terminated", None)
        if status.name == container and terminated is not None:
            return terminated.exit_code
    return None


def task_failure(code: int | None, task_id: str, err: Exception) -> BaseException:
    """The pod's failure as the task's: final for bad input and a failed gate, retryable otherwise."""
    if code == EXIT_BAD_INPUT:
        return AirflowFailException(f"slimops: error: bad input in task {task_id} (exit 2); the reason is the last "
                                    "line of the pod log above")
    if code == EXIT_GATE_FAILED:
        return AirflowFailException(f"slimops: task {task_id}: gate failed or the model was refused (exit 3); see "
                                    "the pod log above")
    if code == EXIT_GATE_INCONCLUSIVE:
        return AirflowException(f"gate inconclusive ({task_id}, exit 4): retried after the recipe's backoff")
    return err


class _SlimopsPod(KubernetesPodOperator):
    """Shared by the slimops pod operators: the component image, the runs directory, the result as XCom."""

    slimops_task = True  # hands its model directory downstream as XCom "out"
    ui_color = "#c9e7f5"

    def __init__(self, *, out: str | None = None, runs_dir: str | None = None, registry_dir: str | None = None,
                 slimops_conn_id: str | None = DEFAULT_CONN_ID, image: str | None = None, **kwargs):
        kwargs.setdefault("do_xcom_push", True)
        super().__init__(image=image_reference(image), **kwargs)
        self.out = out
        self.runs_dir = runs_dir
        self.registry_dir = registry_dir
        self.slimops_conn_id = slimops_conn_id

    def slimops_hook(self) -> SlimopsHook:
        return SlimopsHook(slimops_conn_id=self.slimops_conn_id, runs_dir=self.runs_dir,
                           registry_dir=self.registry_dir)

    def output_dir(self, hook: SlimopsHook, context) -> Path:
        if self.out:
            return Path(self.out)
        return hook.step_out(context["dag"].dag_id, context["run_id"], self.task_id)

    def prepare(self, context) -> None:
        """Set the container's command and environment for this run (subclasses say which command)."""
        raise NotImplementedError

    def set_command(self, argv: list[str], env: dict[str, str]) -> None:
        # The image's entrypoint is `slimops`; naming it again keeps the command whole whatever the entrypoint.
        self.cmds, self.arguments = argv[:1], argv[1:]
        given = list(self.env_vars.items()) if isinstance(self.env_vars, dict) else \
            [(e.name, e) for e in (self.env_vars or [])]
        names = {name for name, _ in given}
        # The user's env_vars win over the computed ones (e.g. a registry directory mounted elsewhere).
        self.env_vars = [k8s.V1EnvVar(name=k, value=v) for k, v in env.items() if k not in names] + \
            [e if isinstance(e, k8s.V1EnvVar) else k8s.V1EnvVar(name=n, value=e) for n, e in given]

    def pod_request(self, context) -> k8s.V1Pod:
        """The pod this task would submit in ``context``, without submitting it (no cluster needed)."""
        self.prepare(context)
        return self.build_pod_request_obj(context)

    def execute(self, context):
        try:
            self.prepare(context)
        except BadInput as err:
            raise AirflowFailException(f"slimops: error: {err}") from None
        context["ti"].xcom_push(key="out", value=str(self.output_dir(self.slimops_hook(), context)))
        try:
            result = super().execute(context)  # deferrable: raises TaskDeferred; back in trigger_reentry
        except AirflowException as err:
            raise task_failure(exit_code(self.remote_pod or self.pod, self.base_container_name or "base"),
                               self.task_id, err) from None
        return self.finish(context, result)

    def trigger_reentry(self, context, event: dict[str, Any]) -> Any:
        try:
            result = super().trigger_reentry(context, event)
        except AirflowException as err:
            raise task_failure(exit_code(self.pod, self.base_container_name or "base"), self.task_id, err) from None
        return self.finish(context, result)

    def finish(self, context, result) -> dict:
        raise NotImplementedError


class SlimopsStepPodOperator(_SlimopsPod):
    """Run one slimops step in the component image, in a Kubernetes pod.

    Takes what ``SlimopsStepOperator`` takes (``model``, ``config``, ``baseline``, ``out``, ``recipe_dir``,
    ``threads``, ``step_id``, ``model_format``, ``inconclusive``, ``per_run``, ``is_gate``, ``slimops_conn_id``)
    plus ``image``, ``placement`` (a plan's placement: accelerator, node selector, tolerations) and anything
    ``KubernetesPodOperator`` takes. Pushes the same XComs: ``out``, ``metrics``, ``gate_passed``, ``status``.
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "model", "out", "baseline", "config")
    step_name: str | None = None  # set by the per-step subclasses

    def __init__(self, *, model: Any, config: dict | None = None, baseline: Any = None, step: str | None = None,
                 recipe_dir: str | None = None, threads: int | None = None, step_id: str | None = None,
                 model_format: str | None = None, inconclusive: Retry | None = None, per_run: bool = False,
                 is_gate: bool | None = None, placement: dict | None = None, allow_factories: Sequence[str] = (),
                 **kwargs):
        step = step or self.step_name
        step_id = step_id or step
        if step in step_names():
            known = get_step(step)
            kwargs = {**task_policy(step, inconclusive),
                      # the worker slot is free while a long step runs; register / promote take seconds
                      "deferrable": known.role != "registry",
                      "container_resources": pod_resources(threads, placement), **pod_placement(placement),
                      "name": f"slimops-{re.sub(r'[^a-z0-9-]+', '-', str(step_id).lower())}",
                      "labels": {"slimops-step": step}, **kwargs}
        super().__init__(**kwargs)
        self.step = step
        self.model = model
        self.config = dict(config or {})
        self.baseline = baseline
        self.recipe_dir = recipe_dir
        self.threads = threads
        self.step_id = step_id
        self.per_run = per_run
        self.is_gate = get_step(step).role == "gate" if is_gate is None and step in step_names() else is_gate
        self.allow_factories = tuple(allow_factories)
        self.model_format, self.output_format = check_step(self.task_id, step, self.step_id, self.config,
                                                          baseline, recipe_dir, model, model_format)

    def settings(self, context) -> RunSettings:
        if not self.per_run:
            return RunSettings(self.config, self.recipe_dir, self.threads)
        return settings_for_run(context, task_id=self.task_id, step=self.step, step_id=self.step_id,
                                config=self.config, recipe_dir=self.recipe_dir, threads=self.threads,
                                gated=bool(self.is_gate))

    def call(self, config: dict) -> StepCall:
        return StepCall(id=self.step_id, step=self.step, input="model",
                        baseline=None if self.baseline is None else "baseline", config=config, after_gate=False,
                        allow_factories=self.allow_factories)

    def prepare(self, context) -> None:
        hook = self.slimops_hook()
        run = self.settings(context)
        registry = hook.registry() if get_step(self.step).requires_gate() else None
        call = self.call(hook.step_config(self.step, run.config, registry))
        gated = call.gated
        argv = call.argv(str(self.model), str(self.output_dir(hook, context)),
                         baseline=None if self.baseline is None else str(self.baseline),
                         recipe_dir=run.recipe_dir or ".", threads=run.threads,
                         # a gate exits 0 on a failed verdict and says so here; the task fails on it in finish()
                         gate_output=XCOM_RETURN if gated else None, metrics_output=None if gated else XCOM_RETURN)
        self.set_command(argv, {**LOG_LEVEL_ENV, **hook.step_environment(self.step, run_actor(context), registry)})

    def finish(self, context, result) -> dict:
        out = self.output_dir(self.slimops_hook(), context)
        if get_step(self.step).role == "gate":
            passed = result if isinstance(result, bool) else None
            status = {True: "ok", False: "gate_failed"}.get(passed, "ok")
            outcome = {"out": str(out), "step": self.step, "status": status, "metrics": {}, "gate_passed": passed,
                       "reasons": []}
        else:
            outcome = {"out": str(out), "step": self.step, "status": "ok",
                       "metrics": result if isinstance(result, dict) else {}, "gate_passed": None, "reasons": []}
        ti = context["ti"]
        for key in ("metrics", "gate_passed", "status"):
            ti.xcom_push(key=key, value=outcome[key])
        return verdict(self.step_id, outcome, out / "gate_report.json")


class SlimopsSourcePodOperator(_SlimopsPod):
    """``slimops source`` in the component image: the recipe's model section as the run's first model directory.

    :param model_spec: the recipe's ``model:`` mapping (e.g. ``plan_recipe(path).model``).
    :param recipe_dir: what a relative ``path`` in it is relative to (in the pod).
    """

    def __init__(self, *, model_spec: dict, recipe_dir: str | None = None, allow_factories: Sequence[str] = (),
                 per_run: bool = False, **kwargs):
        super().__init__(**{**retry_arguments(SOURCE_RETRY), "execution_timeout": STEP_TIMEOUTS["source"],
                            "name": "slimops-source", "labels": {"slimops-step": "source"}, **kwargs})
        self.model_spec = dict(model_spec)
        self.recipe_dir = recipe_dir
        self.allow_factories = tuple(allow_factories)
        self.per_run = per_run
        self.output_format = "torch" if self.model_spec.get("factory") else None

    def prepare(self, context) -> None:
        from slimops.plan import Plan

        spec, recipe_dir = source_for_run(context, self.model_spec, self.recipe_dir) if self.per_run else \
            (self.model_spec, self.recipe_dir)
        plan = Plan(name="source", recipe_path=Path(recipe_dir or ".") / "recipe.yaml", model=spec, threads=None,
                    allow_factories=self.allow_factories)
        argv = plan.source_argv(str(self.output_dir(self.slimops_hook(), context)), recipe_dir=recipe_dir or ".")
        self.set_command(argv, {**LOG_LEVEL_ENV, "SLIMOPS_ACTOR": run_actor(context)})

    def finish(self, context, result) -> dict:
        return {"out": str(self.output_dir(self.slimops_hook(), context)), "step": "source"}


def pod_operator(step: str) -> type[SlimopsStepPodOperator]:
    """The pod operator class of one step, e.g. ``pod_operator("quantize") is SlimopsQuantizePodOperator``."""
    return globals()[_class_name(step).removesuffix("Operator") + "PodOperator"]


for _step in step_names():
    _cls = type(SlimopsStepPodOperator)(_class_name(_step).removesuffix("Operator") + "PodOperator",
                                        (SlimopsStepPodOperator,), {
        "__module__": __name__,
        "__doc__": f"Run the slimops ``{_step}`` step in the component image, in a pod. See SlimopsStepPodOperator.",
        "step_name": _step,
    })
    globals()[_cls.__name__] = _cls
del _step, _cls
