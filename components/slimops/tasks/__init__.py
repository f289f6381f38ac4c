"""Task-specific data, model outputs and metrics for the tasks beyond embeddings and classification."""
