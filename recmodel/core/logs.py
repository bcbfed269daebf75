"""Where the project's log lines go: progress and results on stdout, errors on stderr.

Metaflow keeps a task's stdout and stderr apart (the UI shows them as two logs), and Python's
``logging`` writes everything to stderr by default, which leaves a task's stdout empty and its
stderr full of progress. :func:`setup_logging` sends records below ``ERROR`` to stdout and
errors to stderr.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(levelname)s %(name)s: %(message)s"


class _Below(logging.Filter):
    """Passes records under a level."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once: ``level`` up to WARNING on stdout, ERROR up on stderr.

    Replaces handlers an earlier call installed (a second call changes nothing else).
    """
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_Below(logging.ERROR))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.ERROR)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=level, handlers=[out, err], force=True)
