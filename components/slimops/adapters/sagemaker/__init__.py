"""SageMaker Pipelines (sagemaker 3.x): a recipe as ProcessingSteps running the slimops image, gated by a
ConditionStep on the validate step's gate report. The SDK is imported only when a pipeline is built."""

from slimops.adapters.sagemaker.jobs import (GATE_REPORT, PROCESSING_ROOT_ENV, ProcessingJob, processing_jobs,
                                             processing_root)
from slimops.adapters.sagemaker.pipeline import SlimopsSteps, build_pipeline, build_steps, pipeline_session

__all__ = ["GATE_REPORT", "PROCESSING_ROOT_ENV", "ProcessingJob", "SlimopsSteps", "build_pipeline", "build_steps",
           "pipeline_session", "processing_jobs", "processing_root"]
