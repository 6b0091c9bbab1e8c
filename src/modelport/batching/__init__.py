"""Adaptive batching of inference requests in front of a backend."""

from modelport.batching.queue import AdaptiveBatcher

__all__ = ["AdaptiveBatcher"]
