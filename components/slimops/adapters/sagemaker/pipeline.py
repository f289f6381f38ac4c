"""A recipe as a SageMaker Pipeline (sagemaker 3.x): ProcessingSteps that run the slimops image's entrypoint,
the gate report as a PropertyFile, a ConditionStep on ``passed`` that either registers the validated model
(ModelStep, approval status a pipeline parameter) and runs the recipe's promotion steps, or fails the
execution with the gate's reasons.

No code is uploaded: each job's ContainerEntrypoint is exactly the ``slimops step ...`` command from
``slimops.plan``. Artifacts flow by S3 URI: a job's input prefix is the upstream job's output channel plus
``/model``. Recipe errors (unknown step, no gate, a gate that checks nothing, no image) raise BadInput here.

Retries follow the plan (``retry_policies``): every ProcessingStep carries RetryPolicies. A step without side
effects (source, transforms, the gate) retries infrastructure failures: a faulty or throttled service, a job that
failed inside SageMaker, no capacity, a resource limit. A step with side effects (register, promote, deploy as
jobs) retries only failures that happen before its container starts (throttling, no capacity, a resource limit):
a job that failed later may already have registered or deployed. SageMaker's policies match exception types, not
exit codes, so the gating validate retries an inconclusive verdict inside its own job (``slimops step
--retry-inconclusive``, the recipe's ``retry_inconclusive``); if it stays inconclusive the job exits 4, the
execution fails at that step and nothing is registered.

Caching is off unless ``cache_expire_after`` turns it on, and then only for the steps the plan calls cacheable:
steps with side effects and a gate against the champion carry ``CacheConfig`` disabled, and the register ModelStep
and the ConditionStep never carry one (a cached condition or registration would skip the promotion silently).

The model package registers the slimops image as its serving container: SageMaker hosting runs the image with the
argument ``serve`` (its entrypoint is ``slimops``, so ``slimops serve``), ``SLIMOPS_SERVE_PLATFORM=sagemaker``
selects SageMaker's contract (``GET /ping``, ``POST /invocations`` on port 8080), and the validated model
directory is the model data, which SageMaker places in ``/opt/ml/model``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from slimops.adapters.sagemaker.jobs import (DATA, GATE_REPORT, MODEL_CHANNEL, MODEL_SUBDIR, SOURCE,
                                             ProcessingJob, processing_jobs)
from slimops.errors import BadInput
from slimops.plan import Plan, Retry, image_reference, plan_recipe

APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")
SERVE_PLATFORM_ENV = "SLIMOPS_SERVE_PLATFORM"  # read by `slimops serve`: which platform's routes and port to serve
SERVE_PLATFORM = "sagemaker"
GATE_INFRA_RETRY = Retry(2, 30.0)  # a gate whose recipe asks no inconclusive retries still survives a lost instance
SIDE_EFFECT_START_RETRY = Retry(2, 60.0)  # side effects: only failures before the container starts
ISO_DURATION = re.compile(r"P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?", re.I)


@dataclass
class SlimopsSteps:
    """What ``build_steps`` adds to a pipeline: the steps in order, the parameters they read, and handles to
    attach more steps (``validated_model_uri`` is the S3 prefix of the validated model directory)."""

    steps: list
    parameters: list
    gate_report: object  # PropertyFile
    gate_step: object  # the validate ProcessingStep
    condition: object  # the ConditionStep
    validated_model_uri: object  # PipelineVariable
    jobs: list[ProcessingJob] = field(default_factory=list)


def _ensure_region(region: str | None) -> str:
    # `import sagemaker.mlops` reads the default region at import time and fails without one.
    region = region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if not region:
        raise BadInput("no AWS region: pass region=... or set AWS_DEFAULT_REGION (e.g. us-east-1)")
    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    return region


def pipeline_session(region: str | None = None, bucket: str | None = None):
    """A PipelineSession that builds definitions without calling AWS (no credentials needed).

    SDK defaults (and telemetry opt-out) come from the usual SageMaker config files. They are not passed here:
    sagemaker 3.27 re-validates an in-memory config against its JSON schema on every lookup (~2 s each, minutes
    per pipeline)."""
    region = _ensure_region(region)
    import boto3
    from sagemaker.core.workflow.pipeline_context import PipelineSession

    session = PipelineSession(boto_session=boto3.Session(region_name=region), default_bucket=bucket)
    if bucket:
        # default_bucket() would otherwise call S3 to create the bucket; every URI here is explicit anyway.
        session._default_bucket = bucket
    return session


def build_steps(recipe: str | Path | Plan, *, role: str, artifact_root, image: str | None = None,
                session=None, instance_type="ml.m5.xlarge", approval_status="PendingManualApproval",
                model_uri=None, data_uri=None, recipe_dir: str | None = None, model_package_group=None,
                serving_image: str | None = None, recipe_promotion: bool = True,
                name_prefix: str = "slimops-", cache_expire_after: str | None = None) -> SlimopsSteps:
    """The recipe's steps, to add to a new or an existing pipeline.

    role: the IAM role ARN the jobs run as. artifact_root: an S3 prefix (str or ParameterString) under which
    each execution writes ``<execution id>/<step>/model``. model_uri: start from this model directory (an S3
    prefix, or an upstream step's property) instead of the recipe's model section. data_uri: an S3 prefix with
    the recipe's data files (laid out as next to the recipe). instance_type / approval_status: str or
    ParameterString. model_package_group: register the validated model there when the gate passes (str or
    ParameterString; None skips the ModelStep). serving_image: the registered model's inference image
    (default: the slimops image, which serves SageMaker's contract with ``serve``). recipe_promotion: run the
    recipe's steps after the gate (register, promote, ...) as processing jobs in the passing branch; False leaves
    them out (the ModelStep still registers). cache_expire_after: turn step caching on for the cacheable steps, an
    ISO 8601 duration such as "P30D" (None: no caching).
    """
    plan = recipe if isinstance(recipe, Plan) else plan_recipe(recipe)
    if recipe_promotion:
        _check_promotion_registry(plan)
    image = image_reference(image)
    if not role or not str(role).startswith("arn:"):
        raise BadInput(f"role {role!r} is not an IAM role ARN; pass role='arn:aws:iam::<account>:role/<name>'")
    if isinstance(approval_status, str) and approval_status not in APPROVAL_STATUSES:
        raise BadInput(f"approval_status {approval_status!r} is not one of {', '.join(APPROVAL_STATUSES)}")
    cache = _cache_configs(cache_expire_after)
    session = session or pipeline_session()

    from sagemaker.core.processing import Processor
    from sagemaker.core.shapes import ProcessingInput, ProcessingOutput, ProcessingS3Input, ProcessingS3Output
    from sagemaker.core.workflow.conditions import ConditionEquals
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join, JsonGet
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow import ConditionStep, FailStep, ModelStep, ProcessingStep

    jobs = processing_jobs(plan, source=model_uri is None, data_files=data_uri is not None, recipe_dir=recipe_dir)
    if not recipe_promotion:
        jobs = [job for job in jobs if not job.after_gate]
    names = {job.id: f"{name_prefix}{job.id}" for job in jobs}
    model_uris = {} if model_uri is None else {SOURCE: model_uri}  # job id -> S3 prefix of its model directory
    gate_report = PropertyFile(name="GateReport", output_name=MODEL_CHANNEL, path=GATE_REPORT)
    chain, promotion, gate_step = [], [], None

    def s3_input(channel: str, uri, local_path: str):
        return ProcessingInput(input_name=channel, s3_input=ProcessingS3Input(
            s3_uri=uri, local_path=local_path, s3_data_type="S3Prefix", s3_input_mode="File"))

    for job in jobs:
        inputs = [s3_input(channel, model_uris[upstream], job.input_path(channel))
                  for channel, upstream in job.inputs.items()]
        if job.reads_data:
            inputs.append(s3_input(DATA, data_uri, job.input_path(DATA)))
        output = ProcessingOutput(output_name=MODEL_CHANNEL, s3_output=ProcessingS3Output(
            s3_uri=Join(on="/", values=[artifact_root, ExecutionVariables.PIPELINE_EXECUTION_ID, names[job.id],
                                        MODEL_CHANNEL]),
            local_path=job.output_path(), s3_upload_mode="EndOfJob"))
        processor = Processor(role=role, image_uri=image, instance_count=1, instance_type=instance_type,
                              entrypoint=job.argv, sagemaker_session=session,
                              base_job_name=f"slimops-{job.id}"[:32], env={"HF_HUB_OFFLINE": "1"})
        step = ProcessingStep(name=names[job.id], step_args=processor.run(inputs=inputs or None, outputs=[output]),
                              description=f"slimops {' '.join(job.argv[1:3])}",
                              property_files=[gate_report] if job.gated else None,
                              retry_policies=retry_policies(job),
                              cache_config=cache[job.cacheable] if cache else None)
        model_uris[job.id] = Join(on="/", values=[
            step.properties.ProcessingOutputConfig.Outputs[MODEL_CHANNEL].S3Output.S3Uri, MODEL_SUBDIR])
        (promotion if job.after_gate else chain).append(step)
        if job.gated:
            gate_step = step

    gate_id = plan.gate.id
    validated = model_uris[gate_id]
    if model_package_group is not None:
        from sagemaker.serve.model_builder import ModelBuilder

        # The validated directory is registered uncompressed (ModelDataSource S3Prefix, which needs the
        # trailing slash): the same files, gate report and manifest the gate judged.
        builder = ModelBuilder(image_uri=serving_image or image, role_arn=role, sagemaker_session=session,
                               env_vars={SERVE_PLATFORM_ENV: SERVE_PLATFORM},
                               s3_model_data_url={"S3DataSource": {"S3Uri": Join(on="", values=[validated, "/"]),
                                                                   "S3DataType": "S3Prefix",
                                                                   "CompressionType": "None"}})
        register = ModelStep(name=f"{name_prefix}register-model", step_args=builder.register(
            model_package_group_name=model_package_group, approval_status=approval_status,
            content_types=["application/json"], response_types=["application/json"],
            description=f"slimops {plan.name}: gate {gate_id} passed"))
        promotion.insert(0, register)
    failed = FailStep(name=f"{name_prefix}gate-failed", error_message=Join(on=" ", values=[
        f"slimops gate {gate_id} failed:", JsonGet(step_name=names[gate_id], property_file=gate_report,
                                                   json_path="reasons")]))
    condition = ConditionStep(
        name=f"{name_prefix}gate",
        conditions=[ConditionEquals(left=JsonGet(step_name=names[gate_id], property_file=gate_report,
                                                 json_path="passed"), right=True)],
        if_steps=promotion, else_steps=[failed])
    parameters = [p for p in (instance_type, approval_status, model_package_group, artifact_root, model_uri, data_uri)
                  if _is_parameter(p)]
    return SlimopsSteps(steps=[*chain, condition], parameters=parameters, gate_report=gate_report,
                        gate_step=gate_step, condition=condition, validated_model_uri=validated, jobs=jobs)


def retry_policies(job: ProcessingJob) -> list:
    """The RetryPolicies of a processing job, by its role (see the module docstring). An inconclusive gate exits
    4, which no policy matches: the gate retries itself in its container (``--retry-inconclusive``)."""
    from sagemaker.mlops.workflow.retry import (SageMakerJobExceptionTypeEnum, SageMakerJobStepRetryPolicy,
                                                StepExceptionTypeEnum, StepRetryPolicy)

    def timing(retry: Retry) -> dict:
        return {"backoff_rate": retry.factor, "interval_seconds": max(1, round(retry.backoff_s)),
                "max_attempts": retry.retries}

    if job.side_effects:
        # Throttled calls, no capacity, a resource limit: the job never ran its container, nothing happened yet.
        # Not a service fault or an internal job error: the step may already have registered or deployed.
        start = timing(SIDE_EFFECT_START_RETRY)
        return [StepRetryPolicy(exception_types=[StepExceptionTypeEnum.THROTTLING], **start),
                SageMakerJobStepRetryPolicy(exception_types=[SageMakerJobExceptionTypeEnum.CAPACITY_ERROR,
                                                             SageMakerJobExceptionTypeEnum.RESOURCE_LIMIT], **start)]
    infra = timing(job.retry or GATE_INFRA_RETRY)
    return [StepRetryPolicy(exception_types=[StepExceptionTypeEnum.SERVICE_FAULT, StepExceptionTypeEnum.THROTTLING],
                            **infra),
            SageMakerJobStepRetryPolicy(exception_types=[SageMakerJobExceptionTypeEnum.INTERNAL_ERROR,
                                                         SageMakerJobExceptionTypeEnum.CAPACITY_ERROR,
                                                         SageMakerJobExceptionTypeEnum.RESOURCE_LIMIT], **infra)]


def _cache_configs(expire_after: str | None) -> dict | None:
    """CacheConfig for a cacheable step (True) and for one that must always run (False), or None: no caching.
    Only ProcessingSteps get either; the ModelStep and the ConditionStep never carry a CacheConfig."""
    if expire_after is None:
        return None
    if not isinstance(expire_after, str) or not ISO_DURATION.fullmatch(expire_after):
        raise BadInput(f"cache_expire_after {expire_after!r} is not an ISO 8601 duration; pass e.g. 'P30D' or 'PT12H'")
    from sagemaker.mlops.workflow.steps import CacheConfig

    return {True: CacheConfig(enable_caching=True, expire_after=expire_after),
            False: CacheConfig(enable_caching=False)}


def _check_promotion_registry(plan: Plan) -> None:
    """register/promote keep their registry beside OUT unless told otherwise, and every SageMaker job is a fresh
    container: promote would not find what register wrote. They need a registry both jobs reach."""
    local = [c.id for c in plan.promotion if c.role == "registry" and not c.config.get("tracking_uri")]
    if local:
        raise BadInput(f"steps {', '.join(local)} keep their model registry inside the job (no tracking_uri), and "
                       "each SageMaker job is a fresh container; set tracking_uri in the recipe (e.g. a SageMaker "
                       "managed MLflow tracking server ARN) or build with recipe_promotion=False (the ModelStep "
                       "registers the validated model in the SageMaker Model Registry)")


def _is_parameter(value) -> bool:
    from sagemaker.core.workflow.parameters import Parameter

    return isinstance(value, Parameter)


def build_pipeline(recipe: str | Path, *, role: str, bucket: str, image: str | None = None, region: str | None = None,
                   name: str | None = None, prefix: str = "slimops", instance_type: str = "ml.m5.xlarge",
                   model_uri: str | None = None, data_uri: str | None = None, recipe_dir: str | None = None,
                   model_package_group: str | None = None, register_model: bool = True,
                   recipe_promotion: bool = True, session=None, cache_expire_after: str | None = None):
    """A Pipeline for the recipe. Its parameters: ProcessingInstanceType, ModelApprovalStatus (default
    PendingManualApproval), ModelPackageGroupName (default: the recipe name), ArtifactRoot (default
    s3://<bucket>/<prefix>), and ModelUri / DataUri when given. cache_expire_after: see ``build_steps``.
    ``pipeline.definition()`` works offline, and ``check_pipeline`` checks it against botocore's SageMaker service
    model; ``pipeline.upsert(role_arn=...)`` and ``pipeline.start()`` need an AWS account."""
    plan = plan_recipe(recipe)
    if not bucket or "/" in bucket or bucket.startswith("s3:"):
        raise BadInput(f"bucket {bucket!r} is not an S3 bucket name; pass e.g. bucket='my-ml-artifacts'")
    session = session or pipeline_session(region, bucket)
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow import Pipeline

    group = model_package_group or plan.name
    steps = build_steps(
        plan, role=role, image=image, session=session,
        artifact_root=ParameterString("ArtifactRoot", default_value=f"s3://{bucket}/{prefix.strip('/')}"),
        instance_type=ParameterString("ProcessingInstanceType", default_value=instance_type),
        approval_status=ParameterString("ModelApprovalStatus", default_value="PendingManualApproval"),
        model_package_group=ParameterString("ModelPackageGroupName", default_value=group) if register_model else None,
        model_uri=ParameterString("ModelUri", default_value=model_uri) if model_uri else None,
        data_uri=ParameterString("DataUri", default_value=data_uri) if data_uri else None,
        recipe_dir=recipe_dir, recipe_promotion=recipe_promotion, cache_expire_after=cache_expire_after)
    return Pipeline(name=name or f"slimops-{plan.name}", parameters=steps.parameters, steps=steps.steps,
                    sagemaker_session=session)
