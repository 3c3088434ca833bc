"""``mergetune secret-key new|rotate``: the Fernet keys of ``MERGETUNE_SECRET_KEY``, which seal datasets'
own bucket credentials. ``new`` prints a fresh key; ``rotate`` seals every stored credential again with
the first configured key, after which the keys listed after it can be dropped."""

from __future__ import annotations

import sys

import typer

from mergetune.cli.options import UserError
from mergetune.cli.output import say
from mergetune.ops import load_settings, server_errors

app = typer.Typer(
    name="secret-key", help="MERGETUNE_SECRET_KEY (sealed dataset credentials)", no_args_is_help=True
)


@app.command("new")
def new() -> None:
    """Print a fresh key (put it first in MERGETUNE_SECRET_KEY, the old ones after it)."""
    from cryptography.fernet import Fernet

    sys.stdout.write(Fernet.generate_key().decode() + "\n")


@app.command("rotate")
@server_errors
def rotate() -> None:
    """Seal every dataset's stored credentials again with the first key of MERGETUNE_SECRET_KEY."""
    from sqlalchemy import select

    from mergetune.common.db import session_scope
    from mergetune.common.models import Dataset
    from mergetune.common.secrets import SecretKeyError, has_key
    from mergetune.common.secrets import rotate as reseal

    settings = load_settings()
    if not has_key(settings):
        raise UserError("MERGETUNE_SECRET_KEY is not set (or not a list of Fernet keys)")
    done, failed = 0, []
    with session_scope(settings.DATABASE_URL) as s:
        for row in s.scalars(select(Dataset).where(Dataset.credentials_sealed.is_not(None))):
            try:
                row.credentials_sealed = reseal(settings, row.credentials_sealed or "")
                done += 1
            except SecretKeyError:
                failed.append(row.id)
    say(f"{done} dataset credential(s) sealed with the first key")
    if failed:
        raise UserError(
            f"no key in MERGETUNE_SECRET_KEY opens the credentials of {', '.join(failed)}: keep the key "
            "that sealed them, or store them again (PUT /v1/datasets/{id}/credentials)"
        )


def register(root: typer.Typer) -> None:
    root.add_typer(app)
