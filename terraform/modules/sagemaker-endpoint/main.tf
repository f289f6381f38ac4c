# A SageMaker real-time endpoint for slimops-validated models: artifact bucket, execution role, the first
# model/config/endpoint (the slimops image in its serving mode), autoscaling, and the CloudWatch alarms that roll a bad update back.
#
# terraform creates the endpoint once; later models arrive through `slimops step deploy` (blue/green or
# canary variants), so the endpoint ignores changes to its endpoint config.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  tags      = merge(var.tags, { "slimops:endpoint" = var.name })
}

# ----------------------------------------------------------------------------- encryption key

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_111:a KMS key policy's "*" resource is the key itself, not every resource
  #checkov:skip=CKV_AWS_356:a KMS key policy's "*" resource is the key itself, not every resource
  #checkov:skip=CKV_AWS_109:the account root must administer its own key (AWS's default key policy)
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy, "*" is this key
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }
  statement {
    sid       = "SageMakerRoleUses"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey", "kms:CreateGrant"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.sagemaker.arn]
    }
  }
}

resource "aws_kms_key" "artifacts" {
  description             = "slimops ${var.name}: model artifacts and endpoint volumes"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = local.tags
}

# ----------------------------------------------------------------------------- artifact bucket

resource "aws_s3_bucket" "artifacts" {
  #checkov:skip=CKV_AWS_18:access logging needs a separate log bucket the caller owns; CloudTrail data events cover reads
  #checkov:skip=CKV_AWS_144:artifacts are rebuilt by the pipeline from the recipe; cross-region replication is the caller's choice
  #checkov:skip=CKV2_AWS_62:no consumer for event notifications; the deploy step writes and SageMaker reads
  bucket = var.artifact_bucket_name
  tags   = local.tags
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.artifacts.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    id     = "expire-replaced-artifacts"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 90
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.artifacts.arn,
      "${aws_s3_bucket.artifacts.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  policy = data.aws_iam_policy_document.bucket.json
}

# ----------------------------------------------------------------------------- execution role

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["sagemaker.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "sagemaker" {
  name               = "${var.name}-sagemaker"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "sagemaker" {
  statement {
    sid       = "ReadModelArtifacts"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]
  }
  statement {
    sid       = "ListModelArtifacts"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.artifacts.arn]
  }
  statement {
    sid       = "DecryptModelArtifacts"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.artifacts.arn]
  }
  statement {
    sid       = "PullServingImage"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = ["arn:${local.partition}:ecr:*:*:repository/*"]
  }
  statement {
    # GetAuthorizationToken has no resource-level permissions: AWS requires "*".
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    sid       = "EndpointLogs"
    actions   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["arn:${local.partition}:logs:${var.region}:${local.account}:log-group:/aws/sagemaker/Endpoints/${var.name}*"]
  }
}

resource "aws_iam_role_policy" "sagemaker" {
  name   = "${var.name}-sagemaker"
  role   = aws_iam_role.sagemaker.id
  policy = data.aws_iam_policy_document.sagemaker.json
}

# ----------------------------------------------------------------------------- model, config, endpoint

resource "aws_sagemaker_model" "first" {
  name                     = var.model_name
  execution_role_arn       = aws_iam_role.sagemaker.arn
  enable_network_isolation = true # the model data is fetched by SageMaker, the container needs no network
  primary_container {
    image          = var.image_uri
    model_data_url = var.model_data_url
    # slimops serve in its SageMaker mode: port 8080, /ping, /invocations, the model in /opt/ml/model
    # (slimops.deploy.sagemaker.container_definition sends the same).
    environment = {
      SLIMOPS_SERVE_PLATFORM = "sagemaker"
    }
  }
  tags = local.tags
}

resource "aws_sagemaker_endpoint_configuration" "first" {
  name        = var.endpoint_config_name
  kms_key_arn = aws_kms_key.artifacts.arn
  production_variants {
    variant_name           = var.variant_name
    model_name             = aws_sagemaker_model.first.name
    initial_instance_count = var.instance_count
    instance_type          = var.instance_type
    initial_variant_weight = 100
  }
  tags = local.tags
}

locals {
  rollback_alarms = concat(
    [aws_cloudwatch_metric_alarm.errors.alarm_name, aws_cloudwatch_metric_alarm.latency.alarm_name],
    var.extra_rollback_alarm_names,
  )
}

resource "aws_sagemaker_endpoint" "this" {
  name                 = var.name
  endpoint_config_name = aws_sagemaker_endpoint_configuration.first.name

  # The same policy `slimops step deploy` sends with UpdateEndpoint (update: blue_green).
  deployment_config {
    blue_green_update_policy {
      traffic_routing_configuration {
        type                     = "CANARY"
        wait_interval_in_seconds = var.bake_seconds
        canary_size {
          type  = "CAPACITY_PERCENT"
          value = var.canary_percent
        }
      }
      termination_wait_in_seconds          = var.termination_wait_seconds
      maximum_execution_timeout_in_seconds = var.max_execution_seconds
    }
    auto_rollback_configuration {
      dynamic "alarms" {
        for_each = local.rollback_alarms
        content {
          alarm_name = alarms.value
        }
      }
    }
  }

  lifecycle {
    # Later models are rolled out by the deploy step; terraform must not roll them back.
    ignore_changes = [endpoint_config_name]
  }
  tags = local.tags
}

# ----------------------------------------------------------------------------- rollback alarms

resource "aws_cloudwatch_metric_alarm" "errors" {
  alarm_name          = "${var.name}-5xx"
  alarm_description   = "slimops ${var.name}: model errors; rolls a blue/green update back"
  namespace           = "AWS/SageMaker"
  metric_name         = "Invocation5XXErrors"
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 2
  threshold           = var.error_rate_threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  dimensions = {
    EndpointName = var.name
    VariantName  = var.variant_name
  }
  tags = local.tags
}

resource "aws_cloudwatch_metric_alarm" "latency" {
  alarm_name          = "${var.name}-p99-latency"
  alarm_description   = "slimops ${var.name}: p99 model latency; rolls a blue/green update back"
  namespace           = "AWS/SageMaker"
  metric_name         = "ModelLatency"
  extended_statistic  = "p99"
  period              = 60
  evaluation_periods  = 3
  threshold           = var.p99_latency_threshold_ms * 1000 # ModelLatency is in microseconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  dimensions = {
    EndpointName = var.name
    VariantName  = var.variant_name
  }
  tags = local.tags
}

# ----------------------------------------------------------------------------- autoscaling

resource "aws_appautoscaling_target" "variant" {
  service_namespace  = "sagemaker"
  resource_id        = "endpoint/${aws_sagemaker_endpoint.this.name}/variant/${var.variant_name}"
  scalable_dimension = "sagemaker:variant:DesiredInstanceCount"
  min_capacity       = var.instance_count
  max_capacity       = var.max_instance_count
}

resource "aws_appautoscaling_policy" "invocations" {
  name               = "${var.name}-invocations-per-instance"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.variant.service_namespace
  resource_id        = aws_appautoscaling_target.variant.resource_id
  scalable_dimension = aws_appautoscaling_target.variant.scalable_dimension
  target_tracking_scaling_policy_configuration {
    target_value       = var.invocations_per_instance_target
    scale_in_cooldown  = 300
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "SageMakerVariantInvocationsPerInstance"
    }
  }
}
