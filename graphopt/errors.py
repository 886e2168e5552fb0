"""The exception hierarchy and the exit code each one maps to (BRIEF §4).

Every error a user can cause is a ``GraphoptError`` whose message is one line that says what is
wrong and what to do. The CLI prints that line and exits with ``exit_code``; anything else is an
internal error (exit 5).
"""

from __future__ import annotations

__all__ = [
    "EXIT_OK",
    "CheckFailedError",
    "DataError",
    "GraphoptError",
    "InternalError",
    "ModelError",
    "PassFailedError",
    "UnsupportedError",
    "UsageError",
]

EXIT_OK = 0


class GraphoptError(Exception):
    """Base class: a problem graphopt can explain in one line."""

    exit_code = 5


class CheckFailedError(GraphoptError):
    """A numeric or regression check failed (outputs drifted beyond the tolerances)."""

    exit_code = 1


class UsageError(GraphoptError):
    """Bad flag, unknown pass or option, bad option value, unusable output path."""

    exit_code = 2


class DataError(UsageError):
    """Calibration or validation data that does not fit the model's inputs."""


class ModelError(GraphoptError):
    """The model could not be read or is not a valid ONNX model."""

    exit_code = 3


class UnsupportedError(GraphoptError):
    """An op or target the chosen backend cannot handle (found before compiling)."""

    exit_code = 4


class InternalError(GraphoptError):
    """A bug in graphopt: please report it with the --debug traceback."""

    exit_code = 5


class PassFailedError(InternalError):
    """A pass raised; the message names the pass and the passes that ran before it."""
