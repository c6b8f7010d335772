"""The real browser the web-page tests drive: Debian's Chromium through playwright (its own download fails here)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ATTACKMAP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_or_skip() -> None:
    """Skip with the reason when no Chromium or playwright is here; fail instead under `.ci/run`
    (ATTACKMAP_REQUIRE_BROWSER=1), which installs it."""
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
        if os.environ.get("ATTACKMAP_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ATTACKMAP_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package chromium; .ci/run installs it)")
    pytest.importorskip("playwright.sync_api")
