"""Error types raised at the edges of the package.

Every problem caused by user input (a data file, a config value, a checkpoint,
a CLI argument) is raised as a :class:`KgnnlsError` whose message names the
file, the line and the problem, so the CLI can print it as one line and exit
with status 2 instead of showing a traceback.
"""

from __future__ import annotations

from pathlib import Path


class KgnnlsError(Exception):
    """Base class of all errors caused by user input."""


class DataError(KgnnlsError, ValueError):
    """A dataset file is missing, malformed or inconsistent.

    ``path`` and ``line`` (1-based) locate the problem when it sits in a file.
    """

    def __init__(self, problem: str, path: str | Path | None = None, line: int | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path + (f":{line}" if line is not None else "") + ": "
        super().__init__(where + problem)


class ConfigError(KgnnlsError, ValueError):
    """A configuration value or CLI option is invalid."""


class CheckpointError(KgnnlsError):
    """A checkpoint cannot be loaded or does not match the data or config."""


class OutputError(KgnnlsError):
    """An output directory cannot be written or lacks the room a run needs."""
