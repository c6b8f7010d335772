"""Where the command line's log records go: warnings to the terminal on one line, tracebacks to a file.

A user running ``attackmap enrich`` never sees a traceback: each internal error is dead-lettered with
an error id, and the traceback is in ``$ATTACKMAP_HOME/logs/attackmap.log`` under that id. The file is
opened on the first record only (forked workers each open it for appending).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

from mitre.config import Environment
from mitre.failures import ERRORS

LOG_NAME = "attackmap.log"
_FILE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


class _Terminal(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (a test runner swaps it per command)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class _OneLine(logging.Formatter):
    """``warning: message``; a record's traceback is left to the log file."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def log_path(env: Environment | None = None) -> Path:
    return (env or Environment()).home / "logs" / LOG_NAME


def reset_logging() -> None:
    """Undo configure_logging (tests run many commands in one process)."""
    root = logging.getLogger("attackmap")
    for handler in list(root.handlers):
        if getattr(handler, "_attackmap_cli", False):
            root.removeHandler(handler)
            handler.close()
    root.propagate = True
    root.setLevel(logging.NOTSET)


def configure_logging(path: Path | None = None) -> Path:
    """Send the ``attackmap`` loggers to the terminal (warnings, one line; per-alert errors excluded:
    the run's summary counts them) and to the log file (everything, with tracebacks). Idempotent."""
    path = path or log_path()
    reset_logging()
    root = logging.getLogger("attackmap")
    handlers: list[logging.Handler] = []
    to_terminal = _Terminal()
    to_terminal.setLevel(logging.WARNING)
    to_terminal.setFormatter(_OneLine())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # tracebacks then go nowhere; the dead letters still carry their reasons
        sys.stderr.write(f"warning: no log file ({exc}): tracebacks of internal errors are not kept\n")
    else:
        to_file = logging.FileHandler(path, delay=True, encoding="utf-8")
        to_file.setFormatter(logging.Formatter(_FILE_FORMAT))
        handlers.append(to_file)
        to_terminal.addFilter(lambda record: not record.name.startswith(ERRORS.name))
    handlers.append(to_terminal)
    for handler in handlers:
        handler._attackmap_cli = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Not to the root logger too: Prefect, once imported, prints whatever reaches it, tracebacks included.
    root.propagate = False
    return path
