from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_support import TINY_DATASET

from mergetune.cli.main import main
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


def test_cli_parser_covers_the_commands():
    from mergetune.cli.main import build_parser

    p = build_parser()
    args = p.parse_args(
        ["job", "create", "--checkpoint", "c", "--dataset", "d", "--hp", "epochs=3", "--hp", "lr=0.01"]
    )
    assert (args.checkpoint, args.dataset, args.hp) == ("c", "d", ["epochs=3", "lr=0.01"])
    from mergetune.cli.main import _pairs

    assert _pairs(args.hp, typed=True) == {"epochs": 3, "lr": 0.01}
    assert args.eval_dataset is None
    args = p.parse_args("job create --checkpoint c --dataset d --eval-dataset e1 --eval-dataset e2".split())
    assert args.eval_dataset == ["e1", "e2"]
    args = p.parse_args(
        "job create --checkpoint c --dataset d --protocol all --class-token-position middle".split()
    )
    assert (args.protocol, args.class_token_position) == ("all", "middle")
    assert p.parse_args("upload f --class-token-position front".split()).class_token_position == "front"
    assert p.parse_args(["serve", "--embedded", "--port", "9000"]).embedded is True
    assert json.loads('{"a": 1}') == {"a": 1}
