# Every variable without a default is a key of the deploy step's terraform.tfvars.json
# (slimops.deploy.azureml.terraform_variables); tests/test_terraform.py checks both directions.

variable "name" {
  type        = string
  description = "Endpoint name (the deploy step's `name`), 3-32 characters."
}

variable "location" {
  type        = string
  description = "Azure region of the workspace."
}

variable "workspace_id" {
  type        = string
  description = "Resource id of the Azure ML workspace."
}

variable "deployment_name" {
  type        = string
  description = "Name of the first deployment."
}

variable "model_asset_id" {
  type        = string
  description = "Registered custom_model asset: the validated model directory (azureml:<name>:<version> or its resource id)."
}

variable "image_uri" {
  type        = string
  description = "The slimops image (infra/container), pushed to a registry the workspace can pull from; it runs `slimops serve`."
}

variable "instance_type" {
  type        = string
  description = "Managed online endpoint SKU, e.g. Standard_NC4as_T4_v3."
}

variable "instance_count" {
  type        = number
  description = "Instances of the first deployment."
}

variable "public_network_access" {
  type        = string
  default     = "Disabled"
  description = "Scoring over the public internet: Enabled or Disabled (private endpoint)."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags for every resource."
}
