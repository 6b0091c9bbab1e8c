"""Conversions between wire encodings and numpy arrays."""
