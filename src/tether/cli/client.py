"""The CLI's only way in: the HTTP API. Errors become :class:`CliError` with one clean line.

Every command module imports :class:`CliError` from here, so the HTTP client (httpx2) and the
settings (pydantic-settings) are imported only once a command builds an :class:`ApiClient`:
``tether --version``, ``--help`` and the commands that run locally never load them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tether.errors import TetherError

if TYPE_CHECKING:
    import httpx2 as httpx

# What to do next, by status, after the server's own message (which says what was wrong).
_HINTS = {
    400: " — correct the request and run the command again",
    401: " — set TETHER_TOKEN, or run where the admin token file is (TETHER_DATA_DIR)",
    403: " — use a token whose user has authority over this (an admin's, or the owner's)",
    404: " — check the id: the list commands show what exists",
    405: " — this Tether does not offer that operation: check the CLI and server versions",
    409: " — it conflicts with what exists now: look with the list or show commands",
    413: " — send less at once",
    422: " — correct the value and run the command again",
    429: " — too many requests: wait a moment and retry",
}
_SERVER_FAILED = " — the server failed: see its log, and retry"


class CliError(TetherError):
    """A command failed: a bad option, an unreadable file, or the API's refusal (``message``
    is then ``code: message [HTTP status]``). Shown as one line; the process exits 1."""

    code = "cli_error"


def _default_token() -> str | None:
    token = os.environ.get("TETHER_TOKEN")
    if token:
        return token.strip()
    from tether.config import load_settings

    path = load_settings().admin_token_path  # the server's own settings: one source
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _configured_url() -> str:
    from tether.config import load_settings

    return load_settings().client_url


def _check_path(path: str) -> None:
    """Refuse a path with an empty, ``.`` or ``..`` segment before it is sent: it names another
    resource than the one meant (``tether agents show ""`` would ask for /v1/agents/)."""
    segments = path.partition("?")[0].split("/")[1:]
    if any(segment in ("", ".", "..") for segment in segments):
        raise CliError(
            f"an id in {path} is empty or a relative path — give the item's id (the list "
            "commands show them)"
        )


def _unreachable(url: str, exc: Exception) -> CliError:
    return CliError(
        f"cannot reach Tether at {url} ({_describe(exc)}) — is `tether serve` running? Set "
        "TETHER_URL or --url to point elsewhere"
    )


def _describe(exc: Exception) -> str:
    """A transport failure in words, never its class name."""
    text = " ".join(str(exc).split())
    return text or "no answer"


class ApiClient:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        import ssl

        import httpx2 as httpx

        # --url / TETHER_URL, else where the server these settings describe listens.
        self.url = (url or os.environ.get("TETHER_URL") or _configured_url()).rstrip("/")
        self.token = token if token is not None else _default_token()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        # A plain-HTTP server needs no TLS, yet httpx2 loads the system's CA bundle into a new
        # context for every client (0.03-0.06 s of each CLI call). This client sends only to
        # its base URL (no redirects), so over http:// its context is never used; it trusts
        # no CA, so a TLS handshake through it would fail, never pass unverified.
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT) if self.url.startswith("http://") else True
        # Never follow a redirect: the API answers its own paths directly, so a 3xx means a
        # wrong TETHER_URL or a malformed path (an empty id: /v1/agents/ -> /v1/agents), and
        # following it would report another resource as the answer.
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            verify=tls,
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        import httpx2 as httpx

        _check_path(path)
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        return self._result(resp)

    def stream_lines(self, path: str, *, params: dict[str, Any] | None = None) -> Iterator[bytes]:
        import httpx2 as httpx

        _check_path(path)
        try:
            with self._http.stream("GET", path, params=params) as resp:
                if resp.status_code >= 300:
                    resp.read()
                    self._result(resp)
                for line in resp.iter_lines():
                    if line:
                        yield line.encode()
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc

    def stream_bytes(self, path: str, *, params: dict[str, Any] | None = None) -> Iterator[bytes]:
        """The body of a GET, chunk by chunk as it arrives, byte for byte (a CSV's CRLF line
        endings and the newlines inside its quoted cells kept); an error answer raises
        :class:`CliError` before the first chunk."""
        import httpx2 as httpx

        _check_path(path)
        try:
            with self._http.stream("GET", path, params=params) as resp:
                if resp.status_code >= 300:
                    resp.read()
                    self._result(resp)
                yield from resp.iter_bytes()
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc

    def _result(self, resp: httpx.Response) -> Any:
        if 300 <= resp.status_code < 400:
            target = resp.headers.get("location", "elsewhere")
            raise CliError(
                f"the server answered {resp.request.url.path} with a redirect to {target} "
                f"[HTTP {resp.status_code}] — check TETHER_URL (the server's base URL, no path)"
            )
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
        hint = _HINTS.get(resp.status_code) or (_SERVER_FAILED if resp.status_code >= 500 else "")
        raise CliError(f"{code}: {message} [HTTP {resp.status_code}]{hint}")

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
