# Vertex AI endpoint for the MiniLM example. `slimops step deploy` (target vertex) writes these values to
# terraform.tfvars.json; the endpoint id is derived from the name, so the step finds this endpoint.

provider "google" {
  project = "example-project"
  region  = "us-central1"
}

module "minilm" {
  source = "../../modules/vertex-endpoint"

  name                 = "minilm-sts"
  endpoint_id          = "296680942"
  project              = "example-project"
  region               = "us-central1"
  artifact_bucket_name = "example-slimops-models"
}

output "deploy_target" {
  description = "Paste into the recipe's deploy step (target)."
  value = {
    type            = "vertex"
    project         = "example-project"
    location        = "us-central1"
    bucket          = module.minilm.bucket
    service_account = module.minilm.service_account
  }
}
