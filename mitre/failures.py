"""When processing one alert raises: an error id, the traceback in the log, a one-line reason.

An unexpected exception is a bug (or an input no one foresaw), never a reason to lose the other
alerts of a run. The alert is dead-lettered with a reason that names the exception and an error id;
the traceback goes to the ``attackmap.errors`` logger under the same id, which the CLI sends to a
log file (never to the terminal) and the flows to their run logs.
"""

from __future__ import annotations

import logging
import secrets
import traceback
from collections import OrderedDict

ERRORS = logging.getLogger("attackmap.errors")
INTERNAL_ERROR = "internal_error"
# Dead letters of an input whose worker process kept dying on it (see mitre.forked).
WORKER_DIED = "worker_died"
# Dead-letter reasons that mean a failure of attackmap, not of the input.
INTERNAL_REASONS = frozenset({INTERNAL_ERROR, WORKER_DIED})
_MESSAGE_CHARS = 300
# Distinct tracebacks remembered: past the first of a kind, only its error id is logged.
_KINDS_REMEMBERED = 1000


def new_error_id() -> str:
    """A short random id that ties a dead letter to its traceback in the log."""
    return secrets.token_hex(6)


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line, cut to a readable length; never raises."""
    try:
        message = str(exc)
    except Exception:  # an exception whose __str__ fails still gets a reason
        message = ""
    message = " ".join(message.split())
    if len(message) > _MESSAGE_CHARS:
        message = message[:_MESSAGE_CHARS] + "…"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class FailureLog:
    """Logs each failure under a new error id. The first failure of a kind (exception type and the
    line that raised it) gets its full traceback; later ones of the same kind name the first one's
    id, so a bug that hits a million alerts writes one traceback, not a million."""

    def __init__(self) -> None:
        self._first: OrderedDict[tuple[str, str, int | None], str] = OrderedDict()

    def record(self, exc: BaseException, where: str) -> tuple[str, str]:
        """Log the failure; return (error id, dead-letter reason)."""
        error_id = new_error_id()
        frames = traceback.extract_tb(exc.__traceback__)
        kind = (type(exc).__name__, frames[-1].filename if frames else "", frames[-1].lineno if frames else None)
        first = self._first.get(kind)
        if first is None:
            self._first[kind] = error_id
            if len(self._first) > _KINDS_REMEMBERED:
                self._first.popitem(last=False)
            ERRORS.error("%s failed [error %s]", where, error_id, exc_info=(type(exc), exc, exc.__traceback__))
        else:
            ERRORS.error("%s failed [error %s]: %s (traceback as error %s)", where, error_id, describe(exc), first)
        return error_id, f"{INTERNAL_ERROR}: {describe(exc)} (error {error_id})"
