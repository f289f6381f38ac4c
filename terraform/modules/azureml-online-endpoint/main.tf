# An Azure ML managed online endpoint with its first deployment (a Triton model: no scoring script).
# azurerm has no resource for online endpoints; azapi speaks the ARM API (2024-10-01) directly.
#
# terraform creates the endpoint once; `slimops step deploy` then adds each new model as a deployment at 0%,
# moves traffic (mirror, canary, 100%) and deletes the old deployment, so traffic is not managed here.

resource "azapi_resource" "endpoint" {
  type      = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints@2024-10-01"
  name      = var.name
  parent_id = var.workspace_id
  location  = var.location
  tags      = merge(var.tags, { "slimops-endpoint" = var.name })

  identity {
    type = "SystemAssigned"
  }

  body = {
    kind = "Managed"
    properties = {
      authMode            = "Key"
      publicNetworkAccess = var.public_network_access
    }
  }
}

resource "azapi_resource" "first_deployment" {
  type      = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments@2024-10-01"
  name      = var.deployment_name
  parent_id = azapi_resource.endpoint.id
  location  = var.location
  tags      = merge(var.tags, { "slimops-endpoint" = var.name })

  body = {
    kind = "Managed"
    sku = {
      name     = "Default"
      capacity = var.instance_count
    }
    properties = {
      endpointComputeType       = "Managed"
      model                     = var.model_asset_id
      instanceType              = var.instance_type
      appInsightsEnabled        = true
      egressPublicNetworkAccess = "Disabled"
    }
  }

  lifecycle {
    # The deploy step replaces this deployment with the next validated model and deletes it.
    ignore_changes = all
  }
}

# Route all traffic to the first deployment, once; later traffic maps are set by the deploy step.
resource "azapi_update_resource" "first_traffic" {
  type        = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints@2024-10-01"
  resource_id = azapi_resource.endpoint.id
  body = {
    properties = {
      traffic = { (var.deployment_name) = 100 }
    }
  }
  depends_on = [azapi_resource.first_deployment]

  lifecycle {
    ignore_changes = all
  }
}
