output "endpoint_name" {
  description = "Full resource name of the endpoint."
  value       = google_vertex_ai_endpoint.this.id
}

output "bucket" {
  description = "target.bucket of the deploy step"
  value       = google_storage_bucket.artifacts.name
}

output "service_account" {
  description = "target.service_account of the deploy step"
  value       = google_service_account.serving.email
}
