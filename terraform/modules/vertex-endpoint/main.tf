# A Vertex AI endpoint, its artifact bucket and the service account the deployed models run as.
#
# The google provider manages the endpoint, not the models on it (it has no resource for a Vertex model):
# `slimops step deploy` uploads each validated model directory to the bucket and registers it with the slimops
# image as its container (args ["serve"], SLIMOPS_SERVE_PLATFORM=vertex, port 8080, predict route /predict,
# health route /health: slimops.deploy.vertex.container_spec), then deploys it with its machine spec and traffic
# split. The container downloads Vertex AI's copy of the model (gs:// AIP_STORAGE_URI) at startup, as the
# service account below.

locals {
  labels = merge(var.labels, { "slimops-endpoint" = var.name })
}

resource "google_service_account" "serving" {
  project      = var.project
  account_id   = substr("${var.name}-serving", 0, 30)
  display_name = "slimops ${var.name}: deployed models"
}

resource "google_storage_bucket" "artifacts" {
  #checkov:skip=CKV_GCP_62:access logs need a separate log bucket the caller owns; Cloud Audit Logs record data access
  project                     = var.project
  name                        = var.artifact_bucket_name
  location                    = upper(var.region)
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = local.labels

  versioning {
    enabled = true
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  lifecycle_rule {
    condition {
      num_newer_versions = 3
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_storage_bucket_iam_member" "serving_reads" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.serving.email}"
}

resource "google_vertex_ai_endpoint" "this" {
  #checkov:skip=CKV2_GCP_33:a private endpoint needs VPC peering the caller owns (set var.network); the public one requires IAM auth
  project      = var.project
  location     = var.region
  region       = var.region
  name         = var.endpoint_id
  display_name = var.name
  description  = "slimops: validated models only"
  labels       = local.labels
  network      = var.network

  dynamic "encryption_spec" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      kms_key_name = encryption_spec.value
    }
  }
}
