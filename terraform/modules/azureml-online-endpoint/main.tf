# An Azure ML managed online endpoint with its first deployment: the registered custom_model (the validated model
# directory) served by the slimops image as a custom container, in an environment that declares its routes.
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

# The slimops image and the routes `slimops serve --platform azureml` answers (slimops.serving.platforms.
# AZUREML_ROUTES; slimops.deploy.azureml.inference_config sends the same). A version per image, like the
# SDK's anonymous environments: a new image is a new version, never an in-place change.

resource "azapi_resource" "environment" {
  type      = "Microsoft.MachineLearningServices/workspaces/environments@2024-10-01"
  name      = "${var.name}-slimops-serve"
  parent_id = var.workspace_id
  body = {
    properties = {
      description = "slimops serve (custom container)"
    }
  }
}

resource "azapi_resource" "environment_version" {
  type      = "Microsoft.MachineLearningServices/workspaces/environments/versions@2024-10-01"
  name      = substr(sha256(var.image_uri), 0, 16)
  parent_id = azapi_resource.environment.id
  body = {
    properties = {
      image       = var.image_uri
      osType      = "Linux"
      description = "slimops serve (custom container)"
      inferenceConfig = {
        livenessRoute  = { port = 5001, path = "/" }
        readinessRoute = { port = 5001, path = "/" }
        scoringRoute   = { port = 5001, path = "/score" }
      }
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
      environmentId             = azapi_resource.environment_version.id
      environmentVariables      = { SLIMOPS_SERVE_PLATFORM = "azureml" }
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
