"""Admin API under ``/api``: artifacts, registry, deployments, status."""
