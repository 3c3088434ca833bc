"""``mergetune weights upload|list|get|delete`` and the clients' weights methods against a real server:
the record as JSON, the same bytes answering the same record, lists in the REST page's shape, and a
refused file or an unknown id as one line on stderr with nothing on stdout."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path

from mergetune.cli import main
from mergetune.client import AsyncClient


def _state_dict_file(path: Path, width: int = 64) -> bytes:
    import torch

    g = torch.Generator().manual_seed(width)
    sd = {
        "positional_embedding": torch.randn(77, width, generator=g),
        "text_projection": torch.randn(width, 32, generator=g),
        "token_embedding.weight": torch.randn(10, width, generator=g),
        "ln_final.weight": torch.ones(width),
        "visual.proj": torch.randn(16, 32, generator=g),
    }
    buf = io.BytesIO()
    torch.save(sd, buf)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_weights_commands(live_url, auth, tmp_path, capsys):
    token = auth["Authorization"].split()[1]
    conn = ["--url", live_url, "--token", token]
    data = _state_dict_file(tmp_path / "tiny.pt")

    assert main(["weights", "upload", str(tmp_path / "tiny.pt"), "--name", "tiny clip", *conn]) == 0
    w = json.loads(capsys.readouterr().out)
    assert w["sha256"] == hashlib.sha256(data).hexdigest() and w["name"] == "tiny clip"
    assert w["pretrained"] == f"weights:{w['id']}" and w["summary"]["text_width"] == 64

    (tmp_path / "again.pt").write_bytes(data)
    assert main(["weights", "upload", str(tmp_path / "again.pt"), *conn]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == w["id"]

    assert main(["weights", "list", *conn]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["has_more"] is False and listed["next_cursor"] is None
    assert [x["id"] for x in listed["data"]] == [w["id"]]
    assert main(["weights", "get", w["id"], *conn]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] == len(data)

    (tmp_path / "notes.txt").write_text("not weights at all\n")
    assert main(["weights", "upload", str(tmp_path / "notes.txt"), *conn]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert "(field: file)" in err and "not_weights" in err and "safetensors" in err

    async def through_async_client() -> dict:
        async with AsyncClient(live_url, token) as c:
            again = await c.upload_weights(tmp_path / "tiny.pt")
            assert again["id"] == w["id"]
            assert [x["id"] for x in await c.list_weights()] == [w["id"]]
            return await c.delete_weights(w["id"])

    freed = asyncio.run(through_async_client())
    assert freed == {
        "id": w["id"],
        "object": "weights",
        "deleted": True,
        "freed_bytes": len(data),
        "freed_files": 1,
    }

    assert main(["weights", "delete", w["id"], *conn]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "[HTTP 404 not_found]" in err, err
    assert main(["weights", "list", *conn]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == []
