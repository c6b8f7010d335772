"""TAXII 2.1 sink: each batch of events becomes one STIX bundle published to a collection
(`taxii2-client`), and a reader for what a collection holds.

A re-published object (same id and ``modified``: the bundle's ids and times are derived from the
alerts) is refused by the server as already present; that counts as delivered once the sink has
checked the object is there at that version. Objects shared between alerts that this sink already
published are not sent again. Connection errors, 5xx and 429 are transient.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import requests
import stix2
from taxii2client.exceptions import TAXIIServiceException
from taxii2client.v21 import Collection, as_pages

from mitre.catalog import Catalog
from mitre.io.exports.event import CommonEvent
from mitre.io.exports.sink import PermanentError, SendResult, TransientError
from mitre.io.exports.stix import BundleBuilder, Tlp

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
PUBLISHED_MEMORY = 100_000


def _status_of(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


class TaxiiSink:
    """Publishes common events as STIX 2.1 to one TAXII 2.1 collection."""

    def __init__(
        self,
        collection_url: str,
        catalog: Catalog,
        *,
        user: str | None = None,
        password: str | None = None,
        tlp: Tlp = "amber",
        verify: bool | str = True,
        timeout: float = 30.0,
    ) -> None:
        self.collection_url = collection_url.rstrip("/") + "/"
        self.catalog = catalog
        self.tlp: Tlp = tlp
        self._auth = (user, password) if user else None
        self._verify = verify
        self._timeout = timeout
        self._collection: Collection | None = None
        # Objects shared between alerts (identity, marking, attack-patterns, indicators, relationships)
        # already in the collection are not sent again with every batch.
        self._published: OrderedDict[str, None] = OrderedDict()

    @property
    def name(self) -> str:
        url = requests.utils.urlparse(self.collection_url)
        return f"taxii-{url.hostname}-{url.port or 'default'}-{url.path.rstrip('/').rsplit('/', 1)[-1]}"

    def _open(self) -> Collection:
        if self._collection is None:
            user, password = self._auth or (None, None)
            self._collection = Collection(self.collection_url, user=user, password=password, verify=self._verify)
        return self._collection

    def send(self, events: Sequence[CommonEvent]) -> SendResult:
        builder = BundleBuilder(self.catalog, tlp=self.tlp)
        shared = [builder.add(e) for e in events]
        result = SendResult(
            skipped={i: "no technique of the active catalog: nothing to share" for i, ok in enumerate(shared) if not ok}
        )
        if not any(shared):
            return result
        objects = [o for o in builder.objects() if o.id not in self._published]
        bundle = stix2.Bundle(objects=objects, id=builder.bundle_id())
        try:
            status = self._open().add_objects(bundle.serialize(), wait_for_completion=True, timeout=self._timeout)
        except requests.ConnectionError as exc:
            self._collection = None
            raise TransientError(f"TAXII server unreachable: {type(exc).__name__}") from exc
        except (requests.HTTPError, TAXIIServiceException) as exc:
            code = _status_of(exc)
            if code is None or code in _TRANSIENT_STATUS:
                self._collection = None
                raise TransientError(f"TAXII: {exc}") from exc
            raise PermanentError(f"TAXII refused the bundle: HTTP {code}: {exc}") from exc
        missing = [f for f in status.failures or () if not self._present(f["id"], f.get("version"))]
        if missing:
            # Objects are shared between alerts; a failure cannot be pinned on one, so the batch is retried.
            raise TransientError(f"TAXII: {len(missing)} object(s) not stored, e.g. {missing[0]}")
        for obj in objects:
            if obj.type != "sighting":  # sightings are one per alert: never sent twice anyway
                self._published[obj.id] = None
        while len(self._published) > PUBLISHED_MEMORY:
            self._published.popitem(last=False)
        return result

    def _present(self, object_id: str, version: str | None) -> bool:
        try:
            found = self._open().get_object(object_id, version=version) if version else None
        except (requests.HTTPError, TAXIIServiceException):
            return False
        return bool(found and found.get("objects"))

    def close(self) -> None:
        self._collection = None


def read_collection(
    collection_url: str, *, user: str | None = None, password: str | None = None, per_request: int = 1000
) -> Iterator[dict[str, Any]]:
    """Every object of a collection, page by page (the read-back side of a publication)."""
    collection = Collection(collection_url.rstrip("/") + "/", user=user, password=password)
    for envelope in as_pages(collection.get_objects, per_request=per_request):
        yield from envelope.get("objects", ())
