"""The CLI's only way in: the HTTP API. Errors become :class:`CliError` with one clean line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx

from tether.config import load_settings
from tether.errors import TetherError


class CliError(TetherError):
    """A command failed: a bad option, an unreadable file, or the API's refusal (``message``
    is then ``code: message [HTTP status]``). Shown as one line; the process exits 1."""

    code = "cli_error"


def _default_token() -> str | None:
    token = os.environ.get("TETHER_TOKEN")
    if token:
        return token.strip()
    path = load_settings().admin_token_path  # the server's own settings: one source
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class ApiClient:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # --url / TETHER_URL, else where the server these settings describe listens.
        self.url = (url or os.environ.get("TETHER_URL") or load_settings().client_url).rstrip("/")
        self.token = token if token is not None else _default_token()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach Tether at {self.url} ({exc.__class__.__name__}); is "
                "`tether serve` running? Set TETHER_URL to point elsewhere."
            ) from exc
        return self._result(resp)

    def stream_lines(self, path: str, *, params: dict[str, Any] | None = None) -> Iterator[bytes]:
        try:
            with self._http.stream("GET", path, params=params) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._result(resp)
                for line in resp.iter_lines():
                    if line:
                        yield line.encode()
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach Tether at {self.url}: {exc}") from exc

    def _result(self, resp: httpx.Response) -> Any:
        if resp.status_code < 400:
            return resp.json() if resp.content else None
        try:
            err = resp.json()["error"]
            message = err.get("message") or err.get("code")
            field = (err.get("details") or {}).get("field")
            if field and field not in message:
                message = f"{field}: {message}"
            code = err.get("code", "error")
        except (ValueError, KeyError, TypeError, AttributeError):
            code, message = "error", resp.text[:200] or resp.reason_phrase
        if resp.status_code == 401:
            message += " (set TETHER_TOKEN, or run where the admin token file is: TETHER_DATA_DIR)"
        raise CliError(f"{code}: {message} [HTTP {resp.status_code}]")

    # -- conveniences ----------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def paginate(
        self, path: str, *, limit: int | None = None, cursor: str | None = None, **params: Any
    ) -> Iterator[Any]:
        """Every item across pages (from ``cursor`` on), or the first ``limit`` items."""
        count = 0
        while True:
            page = self.get(path, cursor=cursor, limit=min(limit or 500, 500), **params)
            for item in page["items"]:
                yield item
                count += 1
                if limit is not None and count >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return
