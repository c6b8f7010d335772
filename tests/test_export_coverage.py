"""Coverage exports: ATT&CK Navigator layers (format 4.5, loaded with mitreattack-python's layer tools)
and the HTML matrix, checked in a real headless Chromium."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mitreattack.navlayers import Layer

from mitre.catalog import Catalog, load_catalog
from mitre.io.exports.coverage import Coverage, coverage_of_events
from mitre.io.exports.event import from_enriched
from mitre.io.exports.matrix import render_matrix
from mitre.io.exports.navigator import build_layers
from tests.browser import CHROMIUM, CHROMIUM_FLAGS, chromium_or_skip
from tests.helpers import SIGMA_ROW

REPO = Path(__file__).resolve().parents[1]
KIBANA_RULE = {
    "name": "Scheduled task created",
    "rule_id": "r-1",
    "threat": [{"framework": "MITRE ATT&CK", "tactic": {"id": "TA0003", "name": "Persistence"},
                "technique": [{"id": "T1053", "subtechnique": [{"id": "T1053.005"}]}]}],
}  # fmt: skip


def _coverages(catalog: Catalog, enriched: list[dict[str, Any]]) -> list[Coverage]:
    alerts = coverage_of_events(catalog, (from_enriched(a) for a in enriched), "enriched alerts")
    rules = Coverage(catalog, "rule set", counted="rules")
    assert rules.add_rule(SIGMA_ROW) and rules.add_rule(KIBANA_RULE) and not rules.add_rule({"name": "untagged"})
    return [alerts, rules]


@pytest.mark.parametrize("version", ["18.1", "19.1"])
def test_navigator_layers_load_with_mitreattack(
    version: str, enriched_examples: list[dict[str, Any]], catalog: Catalog, request: pytest.FixtureRequest
) -> None:
    if version == "19.1":
        shared = request.getfixturevalue("shared_data")
        catalog = load_catalog(shared / "attack-v19" / "enterprise-attack.json")
    layers = build_layers(_coverages(catalog, enriched_examples), score="confidence")
    assert isinstance(layers, list) and len(layers) == 2  # several layers, one file
    for layer in layers:
        loaded = Layer(init_data=layer, strict=True)
        assert loaded.to_dict() is not None, "mitreattack-python refused the layer"
        assert loaded.layer.versions.layer == "4.5" and loaded.layer.versions.attack == version.split(".")[0]
        assert loaded.layer.domain == "enterprise-attack"
        assert {t["techniqueID"] for t in layer["techniques"]} <= set(catalog.techniques)
    alerts, rules = layers
    lsass = next(t for t in alerts["techniques"] if t["techniqueID"] == "T1003.001")
    assert 0 < lsass["score"] <= 100 and "example alerts:" in lsass["comment"]
    assert {"name": "ATT&CK version", "value": catalog.version} in alerts["metadata"]
    task = next(t for t in rules["techniques"] if t["techniqueID"] == "T1053.005")
    assert task["score"] == 1 and "Scheduled task created" in task["comment"]
    sigma = next(t for t in rules["techniques"] if t["techniqueID"] == "T1027")
    assert "by Jane Doe" in sigma["comment"]  # DRL 1.1: a Sigma-derived output names the rule's author


def test_html_matrix_in_a_real_browser(enriched_examples: list[dict[str, Any]], catalog: Catalog) -> None:
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    coverage = coverage_of_events(catalog, (from_enriched(a) for a in enriched_examples), "enriched alerts")
    artefacts = Path(os.environ.get("ATTACKMAP_TEST_ARTEFACTS", REPO / ".test-artefacts"))
    artefacts.mkdir(parents=True, exist_ok=True)
    page_file = artefacts / "attack-matrix.html"
    page_file.write_text(render_matrix(coverage))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1900, "height": 1000})
            page.goto(page_file.as_uri())
            columns = page.eval_on_selector_all("section.tactic", "els => els.map(e => e.dataset.tactic)")
            assert columns == [t.id for t in catalog.tactics]
            heading = page.eval_on_selector_all("section.tactic h2", "els => els.map(e => e.firstChild.textContent)")
            assert heading == [t.name for t in catalog.tactics]
            lsass = page.locator('section[data-tactic="TA0006"] div.technique[data-technique="T1003"]')
            assert int(lsass.get_attribute("data-count") or 0) == coverage.techniques["T1003.001"].count + (
                coverage.techniques["T1003"].count if "T1003" in coverage.techniques else 0
            )
            background = "e => getComputedStyle(e).backgroundColor"
            shade = lsass.evaluate(background)
            blank = page.locator("div.technique[data-count='0']").first.evaluate(background)
            assert shade != blank  # coloured by count
            page.screenshot(path=str(artefacts / "attack-matrix.png"), full_page=True)
        finally:
            browser.close()
    assert (artefacts / "attack-matrix.png").stat().st_size > 10_000
