"""Errors moetape raises on purpose. Each one also inherits the builtin it refines."""

from __future__ import annotations


class LogError(Exception):
    """Base class for errors moetape raises on purpose; the CLI prints them as one line."""


class LogFormatError(LogError, ValueError):
    """The file is not a valid moetape log, or a field does not match the layout."""


class NewerFormatError(LogFormatError):
    """The log was written by a newer moetape than this one reads."""


class LogReadError(LogError, OSError):
    """The file cannot be opened or read (missing, not HDF5, truncated, corrupt chunk)."""


class LogWriteError(LogError, OSError):
    """Writing the log failed (disk full, permissions, closed writer)."""


class OutputExistsError(LogError, FileExistsError):
    """An output path exists and --force was not given."""


class InputError(LogError, ValueError):
    """A user-supplied input (option value, trajectory, checkpoint) is invalid."""
