"""Errors every layer may raise; here so that raising one never imports a stage."""

from __future__ import annotations


class RunError(RuntimeError):
    """A run directory is missing, broken or from an incompatible schema version."""


class InteropError(RunError):
    """A cross-coder or run cannot be read, converted, imported, exported or fetched."""
