"""``tether gateway …`` — the MCP gateway's upstream servers (``tether.toml``'s
``[[gateway_upstreams]]``).

``add`` and ``remove`` edit the configuration file in place (its comments and layout kept),
after checking the result as the server will load it; ``list`` shows what is configured and,
when the server answers, whether each upstream is connected. A server reads its upstreams when
it starts: restart it after a change.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether.cli.client import CliError
from tether.cli.common import JsonOpt, client
from tether.cli.render import emit_json, err, line, table

if TYPE_CHECKING:  # loaded by the commands that use them: `tether --help` stays light
    import tomlkit

    from tether.gateway_config import Upstream

app = typer.Typer(help="The MCP gateway's upstream servers (tether.toml).", no_args_is_help=True)
KEY = "gateway_upstreams"
COLUMNS = ["name", "target", "auth", "timeout_seconds", "up", "tools", "error"]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="The file to edit (default: TETHER_CONFIG, else ./tether.toml)."),
]


def _path(config: Path | None) -> Path:
    from tether.config import config_file_path

    return config or config_file_path()


def _load(path: Path) -> tomlkit.TOMLDocument:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        return (
            tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.document()
        )
    except (TOMLKitError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: not valid TOML ({exc}) — fix the file first") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def _configured(doc: tomlkit.TOMLDocument, path: Path) -> list[dict[str, Any]]:
    tables = doc.get(KEY, [])
    if not isinstance(tables, list):
        raise CliError(f"{path}: {KEY} must be an array of tables ([[{KEY}]])")
    return [dict(t.unwrap() if hasattr(t, "unwrap") else t) for t in tables]


def _checked(upstreams: list[dict[str, Any]]) -> list[Upstream]:
    from pydantic import ValidationError

    from tether.gateway_config import Upstream, check_unique

    try:
        return check_unique([Upstream.model_validate(u) for u in upstreams])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        why = first["msg"].removeprefix("Value error, ")
        if first["type"] == "string_pattern_mismatch" and where == "name":
            why = "lowercase letters, digits, '_' or '-', starting with a letter, at most 32"
        raise CliError(f"{where + ': ' if where else ''}{why}") from None
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _write(path: Path, doc: tomlkit.TOMLDocument) -> None:
    """Whole or not at all: a new file beside it, then renamed over it."""
    import tomlkit

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
        if path.exists():
            tmp.chmod(path.stat().st_mode & 0o7777)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {exc.strerror}") from None


def _save(path: Path, doc: tomlkit.TOMLDocument, upstreams: list[dict[str, Any]]) -> None:
    """``upstreams`` as the file's ``[[gateway_upstreams]]`` (none: the key goes), written."""
    import tomlkit

    if upstreams:
        tables = tomlkit.aot()
        for item in upstreams:
            tables.append(tomlkit.item(item))
        doc[KEY] = tables
    elif KEY in doc:
        del doc[KEY]
    _write(path, doc)
    _env_overrides()


def _env_overrides() -> None:
    if os.environ.get("TETHER_GATEWAY_UPSTREAMS"):
        err.print("note: TETHER_GATEWAY_UPSTREAMS is set and overrides the file's upstreams")


def _row(u: Upstream) -> dict[str, Any]:
    target = u.url if u.url is not None else shlex.join(u.command or [])
    auth: str = u.auth.kind
    if u.auth.kind == "header":
        auth = f"header {u.auth.header} ← secret {u.auth.secret}"
    elif u.auth.kind == "client_credentials":
        auth = f"client credentials {u.auth.client_id} ← secret {u.auth.client_secret}"
    return {"name": u.name, "target": target, "auth": auth, "timeout_seconds": u.timeout_seconds}


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Its tools appear as NAME.<tool>.")],
    url: Annotated[str | None, typer.Option(help="Its streamable-HTTP endpoint.")] = None,
    command: Annotated[
        str | None, typer.Option(help="Or a stdio server: the command line to start it.")
    ] = None,
    header: Annotated[
        str | None, typer.Option(help="Send this header (e.g. X-Api-Key) with a secret's value.")
    ] = None,
    secret: Annotated[
        str | None, typer.Option(help="The secret (best broker-only) --header sends.")
    ] = None,
    header_prefix: Annotated[str, typer.Option(help='Before the value, e.g. "Bearer ".')] = "",
    token_url: Annotated[
        str | None, typer.Option(help="Or an OAuth client credential: the token endpoint.")
    ] = None,
    client_id: Annotated[str | None, typer.Option(help="The OAuth client id.")] = None,
    client_secret: Annotated[
        str | None, typer.Option(help="The secret holding the OAuth client's secret.")
    ] = None,
    scope: Annotated[str | None, typer.Option(help="The OAuth scope to ask for.")] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="KEY=VALUE for a stdio command; repeat.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds a call may take (default 30).")
    ] = None,
    replace: Annotated[bool, typer.Option(help="Replace an upstream of that name.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Declare an upstream MCP server behind /mcp, checked as the server will load it, in
    tether.toml. Restart the server to connect to it."""
    entry: dict[str, Any] = {"name": name}
    if url is not None:
        entry["url"] = url
    if command is not None:
        try:
            entry["command"] = shlex.split(command)
        except ValueError as exc:
            raise CliError(f"--command: {exc}") from None
    if env:
        pairs = [item.partition("=") for item in env]
        if any(not k or not sep for k, sep, _ in pairs):
            raise CliError("--env takes KEY=VALUE")
        entry["env"] = {k: v for k, _, v in pairs}
    if header is not None or secret is not None:
        if token_url is not None:
            raise CliError("give either --header/--secret or --token-url/--client-id/…, not both")
        entry["auth"] = {"kind": "header", "header": header, "secret": secret,
                         "prefix": header_prefix}  # fmt: skip
    elif token_url is not None or client_id is not None or client_secret is not None:
        entry["auth"] = {"kind": "client_credentials", "token_url": token_url,
                         "client_id": client_id, "client_secret": client_secret,
                         "scope": scope}  # fmt: skip
    if timeout is not None:
        entry["timeout_seconds"] = timeout
    path = _path(config)
    doc = _load(path)
    existing = _configured(doc, path)
    if any(u.get("name") == name for u in existing) and not replace:
        raise CliError(f"an upstream named {name!r} is configured already — add --replace")
    at = next((i for i, u in enumerate(existing) if u.get("name") == name), len(existing))
    kept = [u for u in existing if u.get("name") != name]
    checked = _checked([*kept[:at], entry, *kept[at:]])
    new = checked[at].model_dump(mode="json", exclude_defaults=True)
    new["name"] = name
    _save(path, doc, [*kept[:at], new, *kept[at:]])  # a replaced one keeps its place
    if as_json:
        emit_json({"config": str(path), "upstream": new})
        return
    line(f"{name} added to {path}: restart `tether serve` to connect to it")


@app.command("remove")
def remove(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Take an upstream out of tether.toml (its tools leave /mcp at the server's restart)."""
    path = _path(config)
    doc = _load(path)
    existing = _configured(doc, path)
    if not any(u.get("name") == name for u in existing):
        raise CliError(f"no upstream named {name!r} in {path} — `tether gateway list` shows them")
    _save(path, doc, [u for u in existing if u.get("name") != name])
    if as_json:
        emit_json({"config": str(path), "removed": name})
        return
    line(f"{name} removed from {path}: restart `tether serve` to drop it")


@app.command("list")
def list_(
    ctx: typer.Context,
    config: ConfigOpt = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Only the configuration; do not ask the server.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The configured upstreams and, from the server, whether each is connected."""
    if os.environ.get("TETHER_GATEWAY_UPSTREAMS") and config is None:
        from tether.config import load_settings
        from tether.errors import ConfigurationError

        try:
            upstreams = list(load_settings().gateway_upstreams)
        except ConfigurationError as exc:
            raise CliError(exc.message) from None
    else:
        path = _path(config)
        upstreams = _checked(_configured(_load(path), path))
    rows = [_row(u) for u in upstreams]
    if not offline:
        try:
            live = {u["name"]: u for u in client(ctx).get("/readyz").get("upstreams", [])}
        except CliError as exc:
            err.print(f"note: the server did not answer ({exc}); showing the configuration only")
            live = {}
        for row in rows:
            status = live.get(row["name"], {})
            row.update(up=status.get("up"), tools=status.get("tools"), error=status.get("error"))
    if as_json:
        emit_json(rows)
        return
    table(rows, COLUMNS if not offline else COLUMNS[:4])
