# Every variable without a default is a key of the deploy step's terraform.tfvars.json
# (slimops.deploy.sagemaker.terraform_variables); tests/test_terraform.py checks both directions.

variable "name" {
  type        = string
  description = "Endpoint name (the deploy step's `name`)."
}

variable "region" {
  type        = string
  description = "AWS region."
}

variable "model_name" {
  type        = string
  description = "First model: <name>-<model hash>, the name the deploy step derives, so it re-attaches."
}

variable "endpoint_config_name" {
  type        = string
  description = "First endpoint config, named like the model."
}

variable "variant_name" {
  type        = string
  description = "Production variant name; stable across rollouts so the alarms keep matching."
}

variable "image_uri" {
  type        = string
  description = "The slimops image (infra/container), pushed to ECR; SageMaker starts it as `<image> serve`."
}

variable "model_data_url" {
  type        = string
  description = "s3:// URL of model.tar.gz (the validated model directory's files at its root) uploaded by the deploy step."
}

variable "instance_type" {
  type        = string
  description = "Production variant instance type, e.g. ml.g5.xlarge."
}

variable "instance_count" {
  type        = number
  description = "Initial and minimum instance count."
}

variable "max_instance_count" {
  type        = number
  description = "Autoscaling ceiling."
}

variable "artifact_bucket_name" {
  type        = string
  description = "S3 bucket for model artifacts (created here: KMS-encrypted, versioned, private)."
}

variable "canary_percent" {
  type        = number
  description = "Blue/green canary size, percent of capacity."
}

variable "bake_seconds" {
  type        = number
  description = "Wait between traffic shifts of a blue/green update."
}

variable "termination_wait_seconds" {
  type        = number
  description = "How long the old fleet is kept after a blue/green update."
}

variable "max_execution_seconds" {
  type        = number
  description = "Limit for a whole blue/green update."
}

variable "extra_rollback_alarm_names" {
  type        = list(string)
  description = "Alarms, besides the ones made here, that roll an update back."
}

variable "invocations_per_instance_target" {
  type        = number
  default     = 200
  description = "Autoscaling target: invocations per instance per minute."
}

variable "error_rate_threshold" {
  type        = number
  default     = 1
  description = "Invocation5XXErrors per minute that trip the rollback alarm."
}

variable "p99_latency_threshold_ms" {
  type        = number
  default     = 500
  description = "ModelLatency p99 (ms) that trips the rollback alarm."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags for every resource."
}
