"""What every streaming exporter is to the delivery layer: a `Sink` that sends a batch of common events.

A sink says what happened to each event of a batch: delivered, rejected for good (with the reason: it
goes to the dead-letter file), or worth another try. A failure of the whole request that may pass (a
refused connection, 429, 503, a timeout) is raised as `TransientError`; the delivery layer keeps the
batch spooled and tries again later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mitre.io.exports.event import CommonEvent


class TransientError(RuntimeError):
    """The whole batch could not be sent now, but may be later (``retry_after`` seconds, when the
    receiver said so)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(RuntimeError):
    """The whole batch was refused for a reason that retrying will not fix (bad token, bad request)."""


@dataclass
class SendResult:
    """Per-event outcome of one send, by position in the batch; positions not named were delivered.

    ``skipped``: nothing of the event is for this sink (a STIX sink and an alert with no technique);
    ``rejected``: refused for good (dead-lettered); ``retry``: send again later."""

    skipped: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    retry: dict[int, str] = field(default_factory=dict)


class Sink(Protocol):
    """A destination for common events (Splunk HEC, TAXII, Elasticsearch, an NDJSON file, a federation peer)."""

    @property
    def name(self) -> str:
        """Stable name of this destination: it names the spool and the dead-letter file."""
        ...

    def send(self, events: Sequence[CommonEvent]) -> SendResult:
        """Deliver one batch, or raise TransientError / PermanentError for the whole of it."""
        ...

    def close(self) -> None: ...
