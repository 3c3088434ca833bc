"""The worker reads a checkpoint's stored tensors through the same bounded, sandboxed parser as uploads
before it trusts them: a stored file that is not what the API wrote fails the job as a user error with
the parser's code, before any training."""

from __future__ import annotations

import struct

import worker_support as ws

from mergetune.worker import pipeline

HOST = "w-test@local"


def _replace_tensors(store, ck_id: str, data: bytes) -> None:  # noqa: ANN001
    store.put_bytes(f"checkpoints/{ck_id}/tensors.safetensors", data)


def test_stored_tensors_are_checked_before_use(wsettings, store, rows):  # noqa: ANN001
    import torch
    from safetensors.torch import save as st_save

    url = wsettings.DATABASE_URL
    project, _, ds = rows
    cases = {
        # NaN in ctx: the parser's own check
        "non_finite": st_save({"ctx": torch.full((4, 64), float("nan"))}),
        # a header that declares a 2^40-element tensor over 16 bytes of data
        "too_large": (lambda h: struct.pack("<Q", len(h)) + h + bytes(16))(
            b'{"ctx":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,16]}}'
        ),
        # not a tensor file at all
        "not_a_checkpoint": b"\x80\x02cos\nsystem\n(S'true'\ntR.",
    }
    for code, data in cases.items():
        ck = ws.make_checkpoint(url, store, project, torch.zeros(4, 64))
        _replace_tensors(store, ck, data)
        job_id = ws.make_job(url, project, ck, ds)
        assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "failed"
        err = ws.job_row(url, job_id)["error"]
        assert err["user_error"] is True, err
        assert err["code"] in ({code, "unsafe_pickle"} if code == "not_a_checkpoint" else {code}), err
        assert ws.artifacts(url, job_id) == []
