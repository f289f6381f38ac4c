"""SageMaker Pipelines (sagemaker 3.x): a recipe as ProcessingSteps running the slimops image, gated by a
ConditionStep on the validate step's gate report, checked offline against botocore's SageMaker service model. The
SDK is imported only when a pipeline is built (botocore only when a definition is checked)."""

from slimops.adapters.sagemaker.jobs import (GATE_REPORT, PROCESSING_ROOT_ENV, ProcessingJob, processing_jobs,
                                             processing_root)
from slimops.adapters.sagemaker.pipeline import SlimopsSteps, build_pipeline, build_steps, pipeline_session
from slimops.adapters.sagemaker.service_model import check_definition, check_pipeline, definition_problems

__all__ = ["GATE_REPORT", "PROCESSING_ROOT_ENV", "ProcessingJob", "SlimopsSteps", "build_pipeline", "build_steps",
           "check_definition", "check_pipeline", "definition_problems", "pipeline_session", "processing_jobs",
           "processing_root"]
