"""Errors of the exporter: each carries a one-line message meant for the user (the CLI prints it as is)."""
from __future__ import annotations


class ExportError(Exception):
    """An export that cannot be done as asked (bad arguments, unknown architecture, ...)."""


class WeightsError(ExportError):
    """A weights file that is missing, unreadable, or does not fit the architecture."""


class ExportCheckError(ExportError):
    """An exported graph that failed a check (parity, op set, batch sizes, ...): nothing was written."""
