"""``mergetune token create|list|revoke``: the project's bearer tokens, written straight into the
server's database (the one configured, or the one of the ``mergetune serve`` running here)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mergetune.cli.options import UserError
from mergetune.cli.output import print_list, say
from mergetune.ops import load_settings, server_errors
from mergetune.ops.serve import running_servers

if TYPE_CHECKING:
    from mergetune.common.settings import Settings

app = typer.Typer(name="token", help="API tokens", no_args_is_help=True)

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds (``3600``) -> seconds (> 0)."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _DURATION_UNITS else "s"
    number = raw[:-1] if raw[-1:] in _DURATION_UNITS else raw
    if not number.isdigit() or int(number) <= 0:
        raise typer.BadParameter(
            f"{text!r} is not a duration: use seconds or a number with s, m, h, d or w (e.g. 30d)"
        )
    return int(number) * _DURATION_UNITS[unit]


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(url[len(prefix) :]) if url.startswith(prefix) and url != prefix + ":memory:" else None


def open_token_db(settings: Settings, *, init: bool = False) -> Settings:
    """The settings whose database holds the tokens: the configured one when it exists; otherwise the
    home of the one running ``mergetune serve`` (so that the token is one that server accepts); a new
    embedded database only with ``--init``. Never creates a database silently."""
    from mergetune.common.db import DatabaseNotMigrated, check_migrated, get_engine, upgrade_head

    db_file = _sqlite_path(settings.DATABASE_URL)
    if db_file is not None and not db_file.exists() and not init:
        explicit = bool(os.environ.get("MERGETUNE_HOME") or os.environ.get("MERGETUNE_DATABASE_URL"))
        homes = {r["database_url"]: r for r in running_servers()} if not explicit else {}
        homes = {u: r for u, r in homes.items() if (f := _sqlite_path(u)) is None or f.exists()}
        if len(homes) == 1:
            rec = next(iter(homes.values()))
            say(f"using the home of the running server at {rec['url']} (pid {rec['pid']}): {rec['home']}")
            return settings.model_copy(
                update={"HOME": Path(rec["home"]), "DATABASE_URL": rec["database_url"]}
            )
        if len(homes) > 1:
            listed = ", ".join(f"{r['home']} ({r['url']})" for r in homes.values())
            raise UserError(
                f"no database at {db_file} and several servers are running: {listed}; "
                "set MERGETUNE_HOME to the home of the one the token is for"
            )
        raise UserError(
            f"no database at {db_file}: run this where the server runs or set MERGETUNE_HOME to its "
            "home (`mergetune serve` logs it), or pass --init to create a new embedded database"
        )
    settings.ensure_dirs()
    try:
        check_migrated(get_engine(settings.DATABASE_URL))
    except DatabaseNotMigrated as exc:
        if not (settings.is_sqlite and init):
            raise UserError(str(exc)) from None
        upgrade_head(settings.DATABASE_URL)  # --init: the embedded database is ours to create
    return settings


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


@app.command("create")
@server_errors
def create(
    project: Annotated[str, typer.Option(help="project name (created if new)")],
    init: Annotated[
        bool,
        typer.Option(
            "--init",
            help="create a new embedded database under MERGETUNE_HOME if there is none (default: refuse)",
        ),
    ] = False,
    expires_in: Annotated[
        int | None,
        typer.Option(
            parser=parse_duration,
            metavar="DURATION",
            help="expire after this long: seconds or e.g. 90m, 12h, 30d, 2w (default: never)",
        ),
    ] = None,
) -> None:
    """Create a bearer token for a project (created if new); prints it alone on the last line."""
    from datetime import timedelta

    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.models import utcnow

    settings = open_token_db(load_settings(), init=init)
    expires_at = utcnow() + timedelta(seconds=expires_in) if expires_in else None
    with session_scope(settings.DATABASE_URL) as s:
        proj = repo.get_or_create_project(s, project)
        token, secret = repo.create_token(s, proj, expires_at=expires_at)
        project_id, token_id = proj.id, token.id
    until = f", expires {expires_at.isoformat(timespec='seconds')}" if expires_at else ""
    say(f"created token {token_id} for project {project} ({project_id}){until}")
    sys.stdout.write(secret + "\n")


@app.command("list")
@server_errors
def list_(
    project: Annotated[str | None, typer.Option(help="only this project's tokens")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List tokens: prefix, project, created, last used, expires, revoked."""
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.models import utcnow

    settings = open_token_db(load_settings())
    now = utcnow()
    with session_scope(settings.DATABASE_URL) as s:
        rows = [
            {
                "id": t.id,
                "prefix": t.prefix,
                "project": name,
                "created": _when(t.created_at),
                "last_used": _when(t.last_used_at),
                "expires": _when(t.expires_at),
                "revoked": _when(t.revoked_at),
                "state": repo.token_refusal(t, now) or "active",
            }
            for t, name in repo.list_tokens(s, project)
        ]
    if as_json:
        print_list(rows)
        return
    cols = ["id", "prefix", "project", "created", "last_used", "expires", "revoked", "state"]
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in cols}
    sys.stdout.write("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip() + "\n")
    for r in rows:
        sys.stdout.write("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip() + "\n")


@app.command("revoke")
@server_errors
def revoke(
    token_ref: Annotated[
        str, typer.Argument(metavar="PREFIX_OR_ID", help="token id (tok_...) or prefix (mt_...)")
    ],
) -> None:
    """Revoke a token (by id tok_... or prefix mt_...): refused (401) by every API process within 5 s."""
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    settings = open_token_db(load_settings())
    with session_scope(settings.DATABASE_URL) as s:
        try:
            token = repo.resolve_token(s, token_ref)
        except repo.TokenLookupError as exc:
            raise UserError(str(exc)) from None
        changed = repo.revoke_token(s, token)
        token_id, prefix, when = token.id, token.prefix, token.revoked_at
    state = "revoked" if changed else "was already revoked"
    say(f"token {token_id} ({prefix}...) {state} at {_when(when)}")


def register(root: typer.Typer) -> None:
    root.add_typer(app)
