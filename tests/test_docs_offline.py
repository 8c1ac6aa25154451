"""``/docs`` and ``/redoc`` render with no network but the server's (issue 13, item 7).

FastAPI's pages load Swagger UI and ReDoc from public CDNs, so on an air-gapped host they were
blank. A real ``tether serve`` and Debian's headless ``chromium`` (driven by Playwright; its own
browser downloads are never used) load each page with every request to another host aborted
and recorded: none may be attempted, and the operations list must show.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from tests.conftest import backend_for
from tests.serverproc import running_server

CHROMIUM = shutil.which("chromium")
# CI installs chromium (.ci/run); a developer machine without it skips, CI never does.
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The docs touch no storage: one SQLite deployment for the module."""
    tmp = tmp_path_factory.mktemp("docs")
    with backend_for("sqlite", tmp) as backend, running_server(backend, tmp) as (url, _env):
        yield url


def _render(url: str, path: str, ready: str) -> tuple[str, list[str]]:
    """Load ``url + path`` in headless chromium, wait for ``ready`` (a selector), and return
    the page's text and every request that was not to the server (each was aborted)."""
    from playwright.sync_api import Route, sync_playwright

    assert CHROMIUM is not None, "CI must have chromium (see .ci/run)"
    origin = urlsplit(url).netloc
    elsewhere: list[str] = []

    def only_the_server(route: Route) -> None:
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox"])  # fmt: skip
        try:
            page = browser.new_context().new_page()
            page.route("**/*", only_the_server)
            page.goto(f"{url}{path}", wait_until="load")
            page.wait_for_selector(ready, timeout=30_000)
            text = page.inner_text("body")
        finally:
            browser.close()
    return text, elsewhere


@needs_chromium
def test_swagger_ui_lists_the_operations_offline(server: str) -> None:
    text, elsewhere = _render(server, "/docs", ".opblock")
    assert elsewhere == []
    assert "/access/v1/evaluation" in text
    assert "/v1/agents/{agent_id}" in text
    assert re.search(r"POST\s*/oauth/token", text), text[:2000]


@needs_chromium
def test_redoc_lists_the_operations_offline(server: str) -> None:
    text, elsewhere = _render(server, "/redoc", "[data-section-id^='operation/']")
    assert elsewhere == []
    assert "/access/v1/evaluation" in text


def test_the_pages_and_their_assets_come_from_the_server(client: TestClient) -> None:
    """Without a browser: every script, stylesheet and icon the pages name is served here."""
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200, page.text
        # The browser itself refuses anything from another host (ReDoc names a CDN logo).
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        assert assets, page.text
        for asset in assets:
            assert asset.startswith("/"), f"{path} loads {asset} from elsewhere"
            got = client.get(asset)
            assert got.status_code == 200, asset
            assert len(got.content) > 1000, asset
    assert '"validatorUrl": null' in client.get("/docs").text  # no badge from swagger.io
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_the_assets_are_package_files() -> None:
    """They install with Tether (a dependency's package data), so a wheel install has them."""
    from tether.api import docs

    files = {p.name for p in Path(docs._FILES).iterdir()}
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"} <= files
