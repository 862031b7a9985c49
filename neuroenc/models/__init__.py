"""Numerical kernels of encoding models: per-vertex cross-validated ridge (``ridge``)."""
