"""Where the project's log lines go: progress and results on stdout, errors on stderr.

Metaflow keeps a task's stdout and stderr apart (the UI shows them as two logs), and Python's
``logging`` writes everything to stderr by default, which leaves a task's stdout empty and its
stderr full of progress. :func:`setup_logging` sends this package's records below ``ERROR`` to
stdout and its errors to stderr. Other libraries keep logging to stderr: commands that print
machine-readable output on stdout (``argo-workflows create --only-json``, ``card list
--as-json``) stay clean.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(levelname)s %(name)s: %(message)s"
PACKAGE = "recmodel"


class _Below(logging.Filter):
    """Passes records under a level."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def setup_logging(level: int = logging.INFO) -> None:
    """This package's records up to WARNING on stdout, ERROR and above on stderr.

    The root logger (every other library) logs ``level`` and above to stderr. A second call
    replaces the handlers of the first.
    """
    formatter = logging.Formatter(FORMAT)
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_Below(logging.ERROR))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.ERROR)
    logger = logging.getLogger(PACKAGE)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in (out, err):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # not again on stderr through the root logger
    logging.basicConfig(level=level, format=FORMAT)
