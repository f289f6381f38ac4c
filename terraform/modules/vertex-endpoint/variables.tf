# Every variable without a default is a key of the deploy step's terraform.tfvars.json
# (slimops.deploy.vertex.terraform_variables); tests/test_terraform.py checks both directions.

variable "name" {
  type        = string
  description = "Endpoint display name (the deploy step's `name`)."
}

variable "endpoint_id" {
  type        = string
  description = "Numeric endpoint id the deploy step derives from the name, so it finds this endpoint."
}

variable "project" {
  type        = string
  description = "Google Cloud project."
}

variable "region" {
  type        = string
  description = "Vertex AI region, e.g. us-central1."
}

variable "artifact_bucket_name" {
  type        = string
  description = "Cloud Storage bucket for the validated model directories the deploy step uploads (created here: CMEK, versioned, private)."
}

variable "kms_key_name" {
  type        = string
  default     = null
  description = "Cloud KMS key for the bucket and the endpoint; null uses Google-managed keys."
}

variable "network" {
  type        = string
  default     = null
  description = "VPC network (projects/<number>/global/networks/<name>) for a private endpoint; null: public, IAM-authenticated."
}

variable "labels" {
  type        = map(string)
  default     = {}
  description = "Labels for every resource."
}
