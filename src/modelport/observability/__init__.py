"""Metrics and other observability."""
