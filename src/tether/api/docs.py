"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) served from installed files, never a CDN.

FastAPI's default pages load Swagger UI, ReDoc, a favicon and Google Fonts from public CDNs,
so on an air-gapped host they stay blank. The ``fastapi-offline`` package (PyPI) ships the
Swagger UI bundle, its CSS, ``redoc.standalone.js`` and a favicon as package files; they are
served here under :data:`ASSETS` and the pages point at them, relative to the ASGI
``root_path`` so they also work behind a reverse proxy that mounts Tether under a prefix.

Both pages are sent with a Content-Security-Policy that keeps them to this server: ReDoc's
bundle still names a logo on Redocly's CDN, which the browser then does not even ask for (the
page hides the image that failed). The inline scripts and styles are FastAPI's page templates
and the two libraries' own; ReDoc's search runs in a worker made from a ``blob:`` URL.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS = "/docs"
REDOC = "/redoc"
ASSETS = "/docs/assets"
_FILES = Path(str(resources.files("fastapi_offline").joinpath("static")))
_ONLY_THIS_SERVER = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; worker-src 'self' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'"
)


def install(app: FastAPI) -> None:
    """Add the two pages and their assets to ``app``, built with ``docs_url=None`` and
    ``redoc_url=None`` (FastAPI's CDN pages)."""
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or f"{DOCS}/oauth2-redirect"
    app.mount(ASSETS, StaticFiles(directory=_FILES), name="docs-assets")

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _confined(
            get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} API",
                oauth2_redirect_url=f"{root}{redirect_url}",
                swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
                # No validator badge: it would send the document's URL to validator.swagger.io.
                swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
            )
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _confined(
            get_redoc_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} API",
                redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
                with_google_fonts=False,
            )
        )


def _confined(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = _ONLY_THIS_SERVER
    return page
