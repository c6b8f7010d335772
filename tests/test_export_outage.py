"""A receiver outage never blocks mapping and loses nothing: the HEC stand-in and medallion are really
stopped in the middle of a stream and started again; every alert arrives at each exactly once.
(`bench/exports.py --outage` runs the same scenario at 10,000 alerts and a 60 s outage.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devtools.receivers import many_alerts, outage_run


def test_hec_and_taxii_outage_mid_stream(enriched_examples: list[dict[str, Any]], tmp_path: Path) -> None:
    result = outage_run(many_alerts(enriched_examples, 1000), tmp_path, feed_seconds=6, down_at=1.5, down_for=3)
    assert result.all_delivered_once, result
    assert result.offer_max_ms < 500, result  # a spool append, not a network call
