"""Orchestration of chatgraft: Prefect flows and tasks, DVC, MLflow tracking and registry, the CLI."""
