"""Protocol-neutral services (registry, inference, ...) shared by every API route family."""
