"""Open Inference Protocol V2 (KServe V2 / Triton HTTP) routes."""
