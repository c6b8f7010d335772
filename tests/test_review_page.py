"""The review page in a real headless Chromium (Debian's, driven by Playwright): load it with an API key,
correct a mapping, see the correction stored and applied, opt the rule out."""

from __future__ import annotations

from pathlib import Path

import httpx

from devtools.asgi import serving
from mitre.api.app import EnrichmentApi
from mitre.api.audit import AuditLog
from mitre.api.keys import ApiKeys
from mitre.api.server import server_app
from mitre.assemble import EngineOptions, build_engine
from mitre.config import Environment, WorkflowsFile
from tests.browser import CHROMIUM, CHROMIUM_FLAGS, chromium_or_skip
from tests.helpers import kibana_alert


def test_correct_a_mapping_and_opt_a_rule_out_from_the_page(tmp_path: Path) -> None:
    chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    env = Environment(home=tmp_path)
    engine = build_engine(WorkflowsFile(), env, EngineOptions(knowledge_base=(), cache_dir=tmp_path / "cache"))
    keys = ApiKeys(tmp_path / "api-keys.json")
    _, admin = keys.create("ana", "admin", "acme")
    api = EnrichmentApi(engine=engine, keys=keys, audit=AuditLog(tmp_path / "audit.ndjson"), env=env)
    alert = kibana_alert(rule_name="Odd rundll32", command_line=r"rundll32.exe C:\Users\x\a.dll,Start")
    headers = {"authorization": f"Bearer {admin}"}
    with serving(server_app(api=api, inbound=None)) as server:
        first = httpx.post(server.url + "/v1/enrich", json=alert, headers=headers).json()["results"][0]["ecs"]
        key = first["attackmap"]["mapping_key"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page()
                page.goto(server.url + "/review")
                page.fill("#key", admin)
                page.click("#load")
                expect(page.locator("#status")).to_have_text("1 mapping(s) to review")
                row = page.locator(f'#review tr[data-key="{key}"]')
                expect(row).to_contain_text("Odd rundll32")
                row.locator("input.techniques").fill("T1218.011")
                row.get_by_role("button", name="Correct").click()
                expect(row.locator(".mark")).to_have_text("stored: correct T1218.011")
                rule = page.locator('#telemetry tr[data-rule="rule-odd-rundll32"]')
                expect(rule).to_contain_text("0.00")  # precision: one correction, no accept
                rule.get_by_role("button", name="Opt out").click()
                expect(rule).to_contain_text("opted out")
            finally:
                browser.close()
        # Stored: the next mapping of that alert is the analyst's, and the rule is now opted out.
        assert engine.feedback is not None
        stored = engine.feedback.corrections.latest([key])[key]
        assert (stored.verdict, stored.techniques, stored.analyst) == ("correct", ("T1218.011",), "ana")
        assert engine.feedback.opted_out("acme") == {"rule-odd-rundll32"}
        again = httpx.post(server.url + "/v1/enrich", json=alert, headers=headers).json()["results"][0]
        assert (again["status"], again["reason"]) == ("skipped", "opted_out")
