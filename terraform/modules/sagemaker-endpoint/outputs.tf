output "endpoint_name" {
  value = aws_sagemaker_endpoint.this.name
}

output "role_arn" {
  description = "target.role_arn of the deploy step"
  value       = aws_iam_role.sagemaker.arn
}

output "artifact_bucket" {
  description = "target.bucket of the deploy step"
  value       = aws_s3_bucket.artifacts.id
}

output "kms_key_arn" {
  description = "target.kms_key_id of the deploy step"
  value       = aws_kms_key.artifacts.arn
}

output "rollback_alarm_names" {
  description = "target.alarms of the deploy step"
  value       = local.rollback_alarms
}
