"""A report's HTML (Jinja2, the templates in this package) and PDF (WeasyPrint).

Both carry the JSON envelope they show, so ``tether report verify`` reads any of the three:
the HTML in a ``<script type="application/json" id="tether-report">`` block (Jinja's
``tojson`` escapes ``<``, ``>`` and ``&``, so no text of the report can close it), the PDF as
an embedded file ``tether-report.json`` (PDF 32000-1 §7.11.4). The PDF fetches nothing: every
style is inline, fonts are the system's (fontconfig), and any URL is refused.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from tether.errors import ConfigurationError
from tether.jsonutil import canonical

ATTACHMENT = "tether-report.json"
_ENV = Environment(
    loader=PackageLoader("tether.governance", "templates"),
    autoescape=select_autoescape(default=True),
    auto_reload=False,
)


class Format(StrEnum):
    JSON = "json"
    HTML = "html"
    PDF = "pdf"

    @property
    def media_type(self) -> str:
        return {
            "json": "application/json",
            "html": "text/html; charset=utf-8",
            "pdf": "application/pdf",
        }[self.value]


def filename(envelope: dict[str, Any], fmt: Format) -> str:
    period = envelope["report"]["period"]
    return f"tether-compliance-{period['from'][:10]}-{period['to'][:10]}.{fmt.value}"


def render(envelope: dict[str, Any], fmt: Format) -> bytes:
    if fmt is Format.JSON:
        return canonical(envelope)
    html = render_html(envelope)
    return html.encode() if fmt is Format.HTML else _pdf(html, envelope)


def render_html(envelope: dict[str, Any]) -> str:
    return _ENV.get_template("report.html").render(env=envelope, r=envelope["report"])


def _refuse(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    raise ValueError(f"a report fetches nothing ({url[:80]})")


def _pdf(html: str, envelope: dict[str, Any]) -> bytes:
    import weasyprint  # imported on first use: ~0.3 s, and only reports need it

    attachment = weasyprint.Attachment(
        string=canonical(envelope).decode(),
        base_url=None,
        name=ATTACHMENT,
        description="the report's JSON, for tether report verify",
    )
    out = weasyprint.HTML(string=html, url_fetcher=_refuse).write_pdf(attachments=[attachment])
    if not isinstance(out, bytes):  # pragma: no cover - write_pdf without a target returns bytes
        raise ConfigurationError("WeasyPrint returned no PDF")
    return out
