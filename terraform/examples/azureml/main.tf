# Azure ML managed online endpoint for the MiniLM example, in an existing workspace.
# The model asset is registered by `slimops step deploy` (target azureml), which also writes these values
# to terraform.tfvars.json.

provider "azapi" {}

module "minilm" {
  source = "../../modules/azureml-online-endpoint"

  name            = "minilm-sts"
  location        = "westeurope"
  workspace_id    = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/ml/providers/Microsoft.MachineLearningServices/workspaces/slimops"
  deployment_name = "initial"
  model_asset_id  = "azureml:minilm-sts-0123456789:1"
  image_uri       = "example.azurecr.io/slimops:0.1.0"
  instance_type   = "Standard_NC4as_T4_v3"
  instance_count  = 1
}

output "endpoint_id" {
  value = module.minilm.endpoint_id
}
