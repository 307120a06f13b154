"""The report's browser check (tests/browser.py) sees what a reader would: a page with a
console error, an uncaught exception, a resource that fails to load and a figure that
does not decode is caught on each count. The run report itself in the browser: the
finished workflow run's, tests/test_workflow.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import browser

BAD_PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>bad</title>
</head><body><h2>Configuration</h2><table></table>
<img src="missing.png" alt="missing"><img src="data:image/png;base64,AAAA" alt="undecodable">
<script>console.error("a console error"); notDefined();</script></body></html>
"""


def test_the_browser_check_catches_errors_and_broken_figures(tmp_path: Path) -> None:
    browser.require_chromium()
    (tmp_path / "index.html").write_text(BAD_PAGE, encoding="utf-8")
    page = browser.open_page(tmp_path / "index.html")
    assert any("a console error" in e for e in page.errors), page.errors
    assert any("notDefined is not defined" in e for e in page.errors), page.errors
    assert any("missing.png" in e for e in page.errors), page.errors
    assert [i["naturalWidth"] for i in page.images] == [0, 0]
    assert page.tables == 1 and page.headings == ["Configuration"]
    assert page.screenshot.startswith(b"\x89PNG")


def test_without_chromium_a_developer_skips_and_ci_fails(monkeypatch) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        browser.require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        browser.require_chromium()
