"""The SageMaker Processing contract of a plan, with no SDK: which container command each job runs, which
channels it reads and writes, and where the gate report lies. ``pipeline.py`` wires these into SDK steps;
a test runs the same commands locally under a temporary root to prove the contract.

Layout inside a job (``ROOT`` = /opt/ml/processing, overridable with $SLIMOPS_SAGEMAKER_PROCESSING_ROOT):

- ``ROOT/input/model``     the input model directory itself (its S3 prefix is the upstream ``.../model/model``)
- ``ROOT/input/baseline``  validate: the model it compares against
- ``ROOT/input/data``      the recipe's data files, when the recipe reads files (``data_uri``)
- ``ROOT/output/model/model``        the step's output model directory
- ``ROOT/output/model/gate_passed``  validate: ``true``/``false``

The step writes one level below the output channel because SageMaker creates the channel directory before
the container starts (Local Mode bind-mounts it): ``slimops step`` writes atomically (temp sibling, then
rename), and a directory the platform owns cannot be renamed over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from slimops.errors import BadInput
from slimops.plan import Plan, Retry, StepCall
from slimops.retry import SOURCE_RETRY, inconclusive_flags
from slimops.steps import get_step, map_data

PROCESSING_ROOT_ENV = "SLIMOPS_SAGEMAKER_PROCESSING_ROOT"
DEFAULT_PROCESSING_ROOT = "/opt/ml/processing"
MODEL_CHANNEL = "model"  # every job's one output channel
MODEL_SUBDIR = "model"  # the model directory inside the output channel
GATE_REPORT = f"{MODEL_SUBDIR}/gate_report.json"  # PropertyFile path, relative to the output channel
GATE_VERDICT = "gate_passed"
SOURCE = "source"  # the job that materialises the recipe's model; also the name of a user's model_uri input
DATA = "data"


def processing_root() -> str:
    """Where SageMaker puts a processing job's channels; a test points it at a temporary directory."""
    return os.environ.get(PROCESSING_ROOT_ENV, DEFAULT_PROCESSING_ROOT).rstrip("/") or "/"


@dataclass(frozen=True)
class ProcessingJob:
    """One processing job: the command the image runs and the channels it reads and writes."""

    id: str  # the plan's step id ("source" for the source job)
    argv: list[str]
    inputs: dict[str, str] = field(default_factory=dict)  # local channel -> id of the job whose model it reads
    reads_data: bool = False  # gets the recipe's data files as the "data" channel
    gated: bool = False  # the gating validate: its output holds gate_report.json for the ConditionStep
    after_gate: bool = False  # promotion branch: runs only when the gate passed
    retry: Retry | None = None  # the plan's retry policy (None: a step with side effects, never retried blindly)
    side_effects: bool = False  # registers, promotes or deploys: outside its output channel, a rerun repeats it
    cacheable: bool = True  # the plan's word on reusing an earlier execution's output (StepCall.cacheable)

    def input_path(self, channel: str, root: str | None = None) -> str:
        return f"{root or processing_root()}/input/{channel}"

    def output_path(self, root: str | None = None) -> str:
        return f"{root or processing_root()}/output/{MODEL_CHANNEL}"


def needs_data_files(calls: list[StepCall]) -> list[str]:
    """Ids of the calls whose config reads a data file (not data that ships in a package, such as digits)."""
    return [c.id for c in calls if _reads_files(c)]


def _reads_files(call: StepCall) -> bool:
    found = []
    map_data(call.step, call.config, lambda spec, _: found.append(isinstance(spec, dict) and bool(spec.get("path"))))
    return any(found)


def processing_jobs(plan: Plan, *, source: bool = True, data_files: bool = False,
                    recipe_dir: str | None = None, root: str | None = None) -> list[ProcessingJob]:
    """The plan as processing jobs, in order: source (unless the pipeline starts from a given model), the
    chain, then the promotion steps.

    data_files: the recipe's data arrive as the ``data`` channel (an S3 prefix mirroring the recipe directory);
    recipe_dir: or they are already at this path inside the image. A recipe that reads files needs one of them.
    """
    root = root or processing_root()
    readers = needs_data_files(plan.calls) + ([SOURCE] if source and "path" in plan.model else [])
    if readers and not data_files and not recipe_dir:
        raise BadInput(f"steps {', '.join(readers)} read data files; give data_uri (an S3 prefix holding the recipe "
                       "directory's data) or recipe_dir (where the files are inside the image)")
    placed = f"{root}/input/{DATA}" if data_files else (recipe_dir or ".")
    out = f"{root}/output/{MODEL_CHANNEL}"
    jobs = []
    if source:
        # A recipe whose model is a path next to the recipe gets it from the data channel, like its data files.
        jobs.append(ProcessingJob(id=SOURCE, argv=plan.source_argv(f"{out}/{MODEL_SUBDIR}", placed),
                                  reads_data=data_files and SOURCE in readers, retry=SOURCE_RETRY))
    for call in plan.calls:
        inputs = {MODEL_CHANNEL: call.input}
        if call.baseline is not None:
            inputs["baseline"] = call.baseline
        gated = call is plan.gate
        argv = call.argv(f"{root}/input/{MODEL_CHANNEL}", f"{out}/{MODEL_SUBDIR}",
                         baseline=f"{root}/input/baseline" if call.baseline is not None else None,
                         recipe_dir=placed, threads=plan.threads,
                         gate_output=f"{out}/{GATE_VERDICT}" if gated else None)
        # SageMaker's retry policies match exception types, never exit codes: an inconclusive gate (exit 4) is
        # retried inside its own job instead.
        argv += inconclusive_flags(call)
        jobs.append(ProcessingJob(id=call.id, argv=argv, inputs=inputs, reads_data=data_files and call.id in readers,
                                  gated=gated, after_gate=call.after_gate, retry=call.retry,
                                  side_effects=get_step(call.step).side_effects, cacheable=call.cacheable))
    return jobs
