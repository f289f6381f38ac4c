"""Orchestrator adapters: wiring only; each imports its SDK inside its own package (see slimops.plan)."""
