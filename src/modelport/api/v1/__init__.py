"""TF-Serving / KServe V1 style ``:predict`` for simple JSON users."""
