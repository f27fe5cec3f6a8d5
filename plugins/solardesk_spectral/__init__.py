"""Builtin spectral pre-compute plugin."""
