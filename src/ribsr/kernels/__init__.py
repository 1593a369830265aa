"""Compiled kernels ribsr builds on first use (C++ sources shipped with the package; see each module)."""
