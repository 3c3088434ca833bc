from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_support import TINY_DATASET

from mergetune.cli import main
from mergetune.client import ApiError, Client


def test_token_create_prints_the_token_alone_on_its_last_line(env_settings, client, capsys):
    assert main(["token", "create", "--project", "cli-project"]) == 0
    out = capsys.readouterr().out
    token = out.strip().splitlines()[-1]
    assert token.startswith("mt_") and " " not in token
    r = client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_python_client_flow(live_url, auth, ctx_and_bytes, tmp_path: Path):
    ckpt_file = tmp_path / "ft.pth.tar"
    ckpt_file.write_bytes(ctx_and_bytes[1])
    token = auth["Authorization"].split()[1]
    with Client(live_url, token) as c:
        ckpt = c.upload_checkpoint(ckpt_file, name="ft")
        assert ckpt["status"] == "ready" and ckpt["name"] == "ft"
        ds = c.create_dataset(TINY_DATASET["name"], "builtin", options=TINY_DATASET["options"])
        job = c.create_job(ckpt["id"], ds["id"], hyperparameters={"epochs": 2}, metadata={"a": "b"})
        assert job["status"] == "queued" and job["hyperparameters"]["epochs"] == 2
        assert [j["id"] for j in c.list_jobs()] == [job["id"]]
        c.cancel_job(job["id"])
        assert c.wait_job(job["id"], interval=0.01, timeout=5)["status"] == "cancelled"
        assert c.list_artifacts(job["id"]) == []
        with pytest.raises(ApiError) as exc:
            c.create_job(ckpt["id"], ds["id"], hyperparameters={"lr": 0})
        assert (exc.value.status, exc.value.param) == (422, "hyperparameters.lr")
        shift = c.create_dataset(
            "tiny-shift", "builtin", options={**TINY_DATASET["options"], "domain": "shift"}
        )
        job = c.create_job(ckpt["id"], ds["id"], eval_dataset_ids=[shift["id"]])
        assert job["eval_dataset_ids"] == [shift["id"]]
        with pytest.raises(ApiError) as exc:
            c.create_job(ckpt["id"], ds["id"], eval_dataset_ids=[shift["id"], "ds_nope"])
        assert (exc.value.status, exc.value.param) == (404, "eval_dataset_ids[1]")
        # CoOp's class-token position at upload, overridden per job; the protocol
        placed = c.upload_checkpoint(ckpt_file, name="mid", class_token_position="middle")
        assert placed["class_token_position"] == "middle"
        job = c.create_job(placed["id"], ds["id"], protocol="all")
        assert job["protocol"] == "all" and job["prompt"] == {"class_token_position": "middle"}
        job = c.create_job(placed["id"], ds["id"], class_token_position="front")
        assert job["protocol"] == "base2novel" and job["prompt"] == {"class_token_position": "front"}


class _Recorder:
    """Stands in for mergetune.Client: records each call, answers a ready/queued object."""

    calls: list[tuple[str, tuple, dict]] = []

    def __init__(self, url, token, *, timeout):
        self.calls.append(("__init__", (url, token), {"timeout": timeout}))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return (
                [{"id": "x", "status": "ready"}]
                if name.startswith("list_")
                else {"id": "x", "status": "ready"}
            )

        return call


def test_cli_options_reach_the_client(monkeypatch, capsys):
    import mergetune.cli.options
    from mergetune.cli.options import pairs

    monkeypatch.setattr(mergetune.cli.options, "Client", _Recorder)
    monkeypatch.setenv("MERGETUNE_TOKEN", "mt_env")
    monkeypatch.delenv("MERGETUNE_URL", raising=False)

    def run(*argv: str) -> tuple[str, tuple, dict]:
        _Recorder.calls = []
        assert main(list(argv)) == 0, capsys.readouterr().err
        out = json.loads(capsys.readouterr().out)
        if _Recorder.calls[1][0].startswith("list_"):  # every list prints the REST list page's shape
            assert out == {"data": [{"id": "x", "status": "ready"}], "has_more": False, "next_cursor": None}
        else:
            assert out == {"id": "x", "status": "ready"}
        assert _Recorder.calls[0] == ("__init__", ("http://127.0.0.1:8000", "mt_env"), {"timeout": 300.0})
        return _Recorder.calls[1]

    name, args, kw = run(*"job create --checkpoint c --dataset d --hp epochs=3 --hp lr=0.01".split())
    assert (name, args) == ("create_job", ("c", "d"))
    assert kw["hyperparameters"] == {"epochs": 3, "lr": 0.01} and kw["eval_dataset_ids"] is None
    assert pairs(["epochs=3", "lr=0.01"], typed=True) == {"epochs": 3, "lr": 0.01}
    _, _, kw = run(*"job create --checkpoint c --dataset d --eval-dataset e1 --eval-dataset e2".split())
    assert kw["eval_dataset_ids"] == ["e1", "e2"]
    _, _, kw = run(
        *"job create --checkpoint c --dataset d --protocol all --class-token-position middle".split(),
        "--hyperparameters",
        '{"epochs": 1, "seed": 2}',
        "--hp",
        "seed=3",
        "--metadata",
        "team=a",
        "--model",
        "tiny-clip",
    )
    assert (kw["protocol"], kw["class_token_position"]) == ("all", "middle")
    assert kw["hyperparameters"] == {"epochs": 1, "seed": 3} and kw["metadata"] == {"team": "a"}
    assert kw["backbone"] == {"model": "tiny-clip"}
    ckpt = Path(__file__)
    name, args, kw = run("upload", str(ckpt), "--class-token-position", "front", "--method", "coop")
    assert (name, args[0], kw["class_token_position"], kw["method"]) == (
        "upload_checkpoint",
        ckpt,
        "front",
        "coop",
    )
    name, args, kw = run(*"sweep create --cell c1:d1:2 --cell c2:d2 --grid w=1,10 --hp epochs=1".split())
    assert name == "create_sweep" and kw == {"tree": None, "idempotency_key": None}
    assert args[0] == {
        "cells": [
            {"checkpoint_id": "c1", "dataset_id": "d1", "seed": 2},
            {"checkpoint_id": "c2", "dataset_id": "d2"},
        ],
        "hyperparameters": {"epochs": 1},
        "grid": {"w": [1, 10]},
    }
    for argv, method in (
        ("job get j", "get_job"),
        ("job cancel j", "cancel_job"),
        ("sweep get s", "get_sweep"),
        ("sweep cancel s", "cancel_sweep"),
    ):
        assert run(*argv.split())[:2] == (method, (argv.split()[-1],))
    assert run("sweep", "list")[0] == "list_sweeps" and run("dataset", "list")[0] == "list_datasets"
    name, args, kw = run(*"job list --status queued --dataset ds_1".split())
    assert (name, kw) == ("list_jobs", {"status": "queued", "dataset_id": "ds_1"})
    name, args, kw = run(*"job events j --limit 5 --after 7".split())
    assert (name, args, kw) == ("job_events", ("j",), {"after": 7, "limit": 5})

    # a wrong command line is one line too (exit 2), naming the command's help
    assert main(["job", "create", "--checkpoint", "c"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "mergetune job create --help" in err[0]
    assert main(["job", "list", "--status", "bogus"]) == 2
    capsys.readouterr()
    assert main([]) == 2  # no command: the help, and nothing on stderr
    out, err = capsys.readouterr()
    assert "Usage: mergetune" in out and err == ""
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--embedded" in out and "--port" in out
