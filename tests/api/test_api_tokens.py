"""Bearer tokens: optional expiry, `mergetune token list|revoke`, last-used time; a revoked or expired
token is refused (401) from the very next request, on the REST API and on the dashboard."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import typer
from sqlalchemy import update

from mergetune.cli import main
from mergetune.common.db import session_scope
from mergetune.common.models import ApiToken, utcnow
from mergetune.ops.tokens import parse_duration


def _create(capsys, project: str, *extra: str) -> str:
    assert main(["token", "create", "--project", project, *extra]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def _listed(capsys, project: str) -> list[dict]:
    assert main(["token", "list", "--project", project, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["data"]


def _row(url: str, secret: str) -> ApiToken:
    from mergetune.common import repositories as repo

    with session_scope(url) as s:
        found = repo.find_token(s, secret)
        assert found is not None
        s.expunge(found[0])
        return found[0]


def test_durations_parse_to_seconds_and_nonsense_is_refused():
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 43200
    assert parse_duration("90m") == 5400
    assert parse_duration("2w") == 14 * 86400
    assert parse_duration("3600") == 3600
    assert parse_duration("45s") == 45
    for bad in ("", "0", "-5", "1.5h", "30x", "d"):
        with pytest.raises(typer.BadParameter):
            parse_duration(bad)


def test_expiring_token_works_until_it_expires_then_gets_401(env_settings, client, capsys):
    secret = _create(capsys, "tok-expiry", "--expires-in", "30d")
    row = _row(env_settings.DATABASE_URL, secret)
    assert row.expires_at is not None
    left = (row.expires_at - utcnow()).total_seconds()
    assert 30 * 86400 - 120 < left <= 30 * 86400
    auth = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/jobs", headers=auth).status_code == 200

    # The clock passes the expiry (moved in the database rather than waited for).
    with session_scope(env_settings.DATABASE_URL) as s:
        s.execute(
            update(ApiToken).where(ApiToken.id == row.id).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    r = client.get("/v1/jobs", headers=auth)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "token_expired"
    assert r.headers["www-authenticate"] == "Bearer"
    assert _listed(capsys, "tok-expiry")[0]["state"] == "token_expired"


def test_revoke_by_prefix_refuses_the_next_request_on_api_and_dashboard(env_settings, client, capsys):
    secret = _create(capsys, "tok-revoke")
    keep = _create(capsys, "tok-revoke")
    auth = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/datasets", headers=auth).status_code == 200
    login = client.post("/login", data={"token": secret, "next": "/"}, follow_redirects=False)
    assert login.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 200  # the cookie works

    prefix = _row(env_settings.DATABASE_URL, secret).prefix
    assert main(["token", "revoke", prefix]) == 0
    assert "revoked" in capsys.readouterr().err

    r = client.get("/v1/datasets", headers=auth)
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_revoked"
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    relog = client.post("/login", data={"token": secret, "next": "/"}, follow_redirects=False)
    assert relog.status_code == 401
    # Only that token: the project's other token still works.
    assert client.get("/v1/datasets", headers={"Authorization": f"Bearer {keep}"}).status_code == 200

    # Revoking again says so and keeps the first revocation time; the id works as well as the prefix.
    first = _row(env_settings.DATABASE_URL, secret).revoked_at
    assert main(["token", "revoke", _row(env_settings.DATABASE_URL, secret).id]) == 0
    assert "already revoked" in capsys.readouterr().err
    assert _row(env_settings.DATABASE_URL, secret).revoked_at == first


def test_revoke_refuses_unknown_and_ambiguous_references(env_settings, capsys):
    _create(capsys, "tok-ambiguous")
    _create(capsys, "tok-ambiguous")
    assert main(["token", "revoke", "mt_"]) == 1  # every token's prefix starts with mt_
    assert "matches" in capsys.readouterr().err
    assert main(["token", "revoke", "mt_nosuchtoken"]) == 1
    assert "no token matches" in capsys.readouterr().err
    assert all(t["revoked"] == "-" for t in _listed(capsys, "tok-ambiguous"))


def test_list_shows_prefix_project_created_last_used_expiry_and_revocation(env_settings, client, capsys):
    used = _create(capsys, "tok-list")
    unused = _create(capsys, "tok-list", "--expires-in", "3600")
    before = utcnow()
    assert client.get("/v1/checkpoints", headers={"Authorization": f"Bearer {used}"}).status_code == 200
    main(["token", "revoke", unused[:10]])
    capsys.readouterr()

    rows = {r["prefix"]: r for r in _listed(capsys, "tok-list")}
    assert set(rows) == {used[:10], unused[:10]}
    assert rows[used[:10]]["project"] == "tok-list"
    assert rows[used[:10]]["state"] == "active" and rows[used[:10]]["revoked"] == "-"
    assert rows[used[:10]]["expires"] == "-"
    from datetime import datetime

    last_used = datetime.fromisoformat(rows[used[:10]]["last_used"])
    assert last_used >= before.replace(microsecond=0)
    assert rows[unused[:10]]["last_used"] == "-"
    assert rows[unused[:10]]["state"] == "token_revoked" and rows[unused[:10]]["revoked"] != "-"
    assert rows[unused[:10]]["expires"] != "-"

    # The table form names every column; secrets never appear in it.
    assert main(["token", "list", "--project", "tok-list"]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0].split()
    assert header == ["ID", "PREFIX", "PROJECT", "CREATED", "LAST_USED", "EXPIRES", "REVOKED", "STATE"]
    assert used not in table and unused not in table


def test_last_used_is_kept_up_to_date_with_throttled_writes(env_settings, client, capsys):
    secret = _create(capsys, "tok-touch")
    auth = {"Authorization": f"Bearer {secret}"}
    url = env_settings.DATABASE_URL
    assert client.get("/v1/jobs", headers=auth).status_code == 200
    first = _row(url, secret).last_used_at
    assert first is not None
    assert client.get("/v1/jobs", headers=auth).status_code == 200
    assert _row(url, secret).last_used_at == first  # within a minute: no second write

    stale = utcnow() - timedelta(minutes=5)
    with session_scope(url) as s:
        s.execute(update(ApiToken).where(ApiToken.prefix == secret[:10]).values(last_used_at=stale))
    assert client.get("/v1/jobs", headers=auth).status_code == 200
    now_used = _row(url, secret).last_used_at
    assert now_used is not None and now_used > stale + timedelta(minutes=4)
