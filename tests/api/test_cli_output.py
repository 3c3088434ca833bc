"""What the real ``mergetune`` command (a subprocess) prints: a rejected upload and an unknown
hyperparameter are one line on stderr (the latter with "did you mean"), every ``list`` command prints
one shape, and no library's log lines reach the terminal."""

from __future__ import annotations

import json
from pathlib import Path

from api_support import TINY_DATASET, new_token
from test_cli_errors import REPO, _env, mt, one_line_error

LIST_KEYS = ["data", "has_more", "next_cursor"]  # the REST list page's shape


def test_rejected_upload_and_unknown_hyperparameter_are_one_line(
    tmp_path: Path, settings, live_url, client, ctx_and_bytes
) -> None:
    env = _env(tmp_path, MERGETUNE_TOKEN=new_token(settings.DATABASE_URL), MERGETUNE_URL=live_url)

    out = mt(env, "upload", str(REPO / "README.md"))
    line = one_line_error(out)
    assert out.returncode == 2 and out.stdout == ""
    assert line.startswith(f"error: {REPO / 'README.md'} was rejected: ") and "(checkpoint ckpt_" in line

    ckpt_file = tmp_path / "ft.pth.tar"
    ckpt_file.write_bytes(ctx_and_bytes[1])
    ckpt = json.loads(mt(env, "upload", str(ckpt_file)).stdout)
    opts = json.dumps(TINY_DATASET["options"])
    ds = json.loads(
        mt(env, "dataset", "create", "--name", "d", "--kind", "builtin", "--options", opts).stdout
    )
    create = ["job", "create", "--checkpoint", ckpt["id"], "--dataset", ds["id"]]

    line = one_line_error(mt(env, *create, "--hp", "epoch=3"))
    assert "unknown hyperparameter 'epoch' (did you mean 'epochs'?)" in line, line
    assert "field: hyperparameters.epoch" in line and "HTTP 422" in line
    line = one_line_error(mt(env, *create, "--hyperparameters", '{"w_zss": 1}'))
    assert "unknown hyperparameter 'w_zss' (did you mean 'w_zs'?)" in line, line
    line = one_line_error(mt(env, *create, "--hp", "zzzz=1"))  # nothing close: no guess
    assert "unknown hyperparameter 'zzzz'" in line and "did you mean" not in line
    line = one_line_error(
        mt(env, "sweep", "create", "--cell", f"{ckpt['id']}:{ds['id']}", "--grid", "lrr=0.1,0.2")
    )
    assert "grid.lrr: not a hyperparameter (did you mean 'lr'?)" in line, line

    # nothing was made by the refused commands
    listed = json.loads(mt(env, "job", "list").stdout)
    assert listed == {"data": [], "has_more": False, "next_cursor": None}


def test_every_list_prints_one_shape(tmp_path: Path, settings, live_url, client, ctx_and_bytes) -> None:
    env = _env(tmp_path, MERGETUNE_TOKEN=new_token(settings.DATABASE_URL), MERGETUNE_URL=live_url)
    opts = json.dumps(TINY_DATASET["options"])
    ds = json.loads(
        mt(env, "dataset", "create", "--name", "d", "--kind", "builtin", "--options", opts).stdout
    )
    ckpt_file = tmp_path / "ft.pth.tar"
    ckpt_file.write_bytes(ctx_and_bytes[1])
    ckpt = json.loads(mt(env, "upload", str(ckpt_file)).stdout)
    job = json.loads(mt(env, "job", "create", "--checkpoint", ckpt["id"], "--dataset", ds["id"]).stdout)

    pages = {}
    for cmd in (("dataset", "list"), ("job", "list"), ("sweep", "list"), ("job", "events", job["id"])):
        out = mt(env, *cmd)
        assert out.returncode == 0 and out.stderr == "", (cmd, out.stderr)
        pages[cmd[0] + " " + cmd[1]] = page = json.loads(out.stdout)
        assert list(page) == LIST_KEYS, (cmd, page)
        assert page["has_more"] is False and page["next_cursor"] is None, (cmd, page)
    assert [d["id"] for d in pages["dataset list"]["data"]] == [ds["id"]]
    assert [j["id"] for j in pages["job list"]["data"]] == [job["id"]]
    assert pages["sweep list"]["data"] == []
    assert pages["job events"]["data"] and pages["job events"]["data"][0]["type"]


def test_operator_commands_print_no_library_log_lines(tmp_path: Path) -> None:
    env = _env(tmp_path)
    home = tmp_path / "here"
    home.mkdir()
    out = mt(env, "token", "create", "--project", "p", "--init", cwd=home)  # runs every migration
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith("mt_")
    assert "alembic" not in out.stderr and " INFO " not in out.stderr, out.stderr
    listed = mt(env, "token", "list", "--json", cwd=home)
    assert listed.returncode == 0 and "INFO" not in listed.stderr, listed.stderr
    page = json.loads(listed.stdout)
    assert list(page) == LIST_KEYS and [t["project"] for t in page["data"]] == ["p"]
    projects = json.loads(mt(env, "project", "list", "--json", cwd=home).stdout)
    assert list(projects) == LIST_KEYS and [p["name"] for p in projects["data"]] == ["p"]
    # DEBUG shows them again, for whoever needs them
    env_debug = {**env, "MERGETUNE_LOG_LEVEL": "DEBUG"}
    (tmp_path / "again").mkdir()
    out = mt(env_debug, "token", "create", "--project", "q", "--init", cwd=tmp_path / "again")
    assert "alembic.runtime.migration" in out.stderr, out.stderr
