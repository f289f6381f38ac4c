# SageMaker endpoint for the MiniLM example. Bootstrap order (the bucket must exist before the first upload):
#   terraform apply -target=module.minilm.aws_s3_bucket.artifacts -target=module.minilm.aws_iam_role.sagemaker
#   slimops step deploy ... (target sagemaker; writes terraform.tfvars.json and uploads model.tar.gz)
#   terraform apply -var-file=<deploy output>/terraform.tfvars.json
# The values below are what that tfvars file holds for examples/minilm-sts.yaml; the model hash differs per model.

provider "aws" {
  region = "us-east-1"
}

module "minilm" {
  source = "../../modules/sagemaker-endpoint"

  name                       = "minilm-sts"
  region                     = "us-east-1"
  model_name                 = "minilm-sts-0123456789"
  endpoint_config_name       = "minilm-sts-0123456789"
  variant_name               = "primary"
  image_uri                  = "123456789012.dkr.ecr.us-east-1.amazonaws.com/slimops:0.1.0"
  model_data_url             = "s3://example-slimops-artifacts/slimops/minilm-sts/0123456789/model.tar.gz"
  instance_type              = "ml.g5.xlarge"
  instance_count             = 1
  max_instance_count         = 4
  artifact_bucket_name       = "example-slimops-artifacts"
  canary_percent             = 10
  bake_seconds               = 600
  termination_wait_seconds   = 300
  max_execution_seconds      = 3600
  extra_rollback_alarm_names = []
}

output "deploy_target" {
  description = "Paste into the recipe's deploy step (target)."
  value = {
    type     = "sagemaker"
    region   = "us-east-1"
    bucket   = module.minilm.artifact_bucket
    role_arn = module.minilm.role_arn
    alarms   = module.minilm.rollback_alarm_names
  }
}
