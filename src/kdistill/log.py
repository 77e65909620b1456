"""One output path for everything kdistill tells the user, rank-aware.

``log = get_logger(__name__)`` for status lines: info goes to stdout on rank 0 only (a
distributed job says each thing once); warnings and errors go to stderr on every rank,
prefixed ``[rank N]`` when there is more than one. :func:`say` prints rich renderables
(tables, coloured summaries) to stdout on rank 0. Error lines of the command line itself
(``kdistill: error: ...``) are written by ``cli/main.py`` directly, raw, by design.
"""

from __future__ import annotations

import logging
import os
import sys

_NAME = "kdistill"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class _Handler(logging.Handler):
    """Info to the current ``sys.stdout`` (rank 0), warnings up to the current ``sys.stderr``
    (every rank); the streams are looked up at each record, so redirection works."""

    def emit(self, record: logging.LogRecord) -> None:
        warn = record.levelno >= logging.WARNING
        if not warn and rank() != 0:
            return
        prefix = f"[rank {rank()}] " if warn and world_size() > 1 else ""
        stream = sys.stderr if warn else sys.stdout
        try:
            stream.write(f"{prefix}[kdistill] {record.getMessage()}\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def get_logger(name: str = _NAME) -> logging.Logger:
    root = logging.getLogger(_NAME)
    if not any(isinstance(h, _Handler) for h in root.handlers):
        root.addHandler(_Handler())
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(name if name.startswith(_NAME) else f"{_NAME}.{name}")


def say(*renderables) -> None:
    """Print rich renderables (tables, markup) to stdout, once (rank 0)."""
    if rank() != 0:
        return
    from rich.console import Console

    Console().print(*renderables)
