"""The request URL form that DPoP compares (RFC 9449 §4.3 with RFC 3986 §6.2.2 and §6.2.3).

A proof's ``htu`` and the URL the server received must name the same resource even when
spelled differently (``HTTPS://Server.Example:443/a/./b`` and ``https://server.example/a/b``);
both are normalized here and compared as strings.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["normalize_htu"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT_TRIPLET = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_NOT_URI_CHAR = re.compile(r"[^\x21-\x7e]")  # controls, spaces and non-ASCII


def normalize_htu(url: str) -> str:
    """The form in which ``htu`` and the request URL are compared (RFC 9449 §4.3).

    Query and fragment are dropped; scheme and host are lowercased, the default port and
    dot segments are removed, an empty path becomes ``/``, and percent-encoding is
    normalized (RFC 3986 §6.2.2, §6.2.3). Raises ``ValueError`` for anything but an absolute
    http(s) URL with a host and no userinfo (RFC 9110 §4.2.4 forbids sending userinfo).
    """
    if _NOT_URI_CHAR.search(url) or _BAD_PCT.search(url):
        raise ValueError("not a URI")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError("htu must be an http or https URL")
    if "@" in parts.netloc:
        raise ValueError("userinfo is not allowed")
    host = parts.hostname  # lowercased, IPv6 brackets stripped
    if not host or "%" in host:
        raise ValueError("the URL has no usable host")
    port = parts.port  # raises ValueError when not a number in 0-65535
    authority = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        authority = f"{authority}:{port}"
    path = _remove_dot_segments(_PCT_TRIPLET.sub(_normalize_triplet, parts.path)) or "/"
    return f"{scheme}://{authority}{path}"


def _normalize_triplet(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else f"%{match.group(1).upper()}"


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, for the absolute paths an authority-bearing URL has."""
    segments = path.split("/")
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if len(out) > 1:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in {".", ".."}:
        out.append("")
    return "/".join(out)
