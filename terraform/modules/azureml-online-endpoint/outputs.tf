output "endpoint_id" {
  value = azapi_resource.endpoint.id
}

output "endpoint_principal_id" {
  description = "The endpoint's managed identity: grant it AcrPull and storage read on the workspace."
  value       = azapi_resource.endpoint.identity[0].principal_id
}
