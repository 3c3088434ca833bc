"""No shared disk: two real Celery workers whose homes are separate folders take everything from an
S3-protocol server (moto's server mode, over HTTP): the checkpoint's tensors and the artifacts (an
``s3://`` artifact store), a CoOp-layout dataset and OpenAI-layout weights named by ``s3://``
reference. One worker is SIGKILLed while it downloads the weights (the network hangs half way); the job
finishes once on the other, and the killed worker's half file is never trusted."""

from __future__ import annotations

import hashlib
import io
import time

import pytest
import s3_support as s3
import worker_support as ws
from sqlalchemy import update

from mergetune.common.db import session_scope
from mergetune.common.models import Dataset, Job, WorkerHeartbeat, utcnow
from mergetune.common.queue import enqueue_job
from mergetune.common.remote import S3DatasetSource, S3Inputs
from mergetune.common.storage import S3Store
from mergetune.core.data import base_to_novel
from mergetune.core.data.remote import open_listed_dataset

pytestmark = pytest.mark.slow

WEIGHTS = "s3://models/clip/tiny-openai.pt"


def _openai_weights() -> bytes:
    import torch

    from mergetune.core.config import BackboneSpec
    from mergetune.core.model.backbone import load_backbone

    src = load_backbone(BackboneSpec(model="tiny-test", pretrained="random:7"))
    sd = {k: (v.half() if v.is_floating_point() else v).clone() for k, v in src.model.state_dict().items()}
    sd.update(
        input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408)
    )
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def _register_dataset(url: str, endpoint: str, project: str) -> str:
    """What POST /v1/datasets stores for ``s3://data/coop/eurosat``."""
    client = s3.client(endpoint)
    source = S3DatasetSource(S3Inputs(client=client), "s3://data/coop/eurosat")
    ds = open_listed_dataset("coop", source, name=source.name, shown=source.url)
    task = base_to_novel(ds, 1, 1)
    with session_scope(url) as s:
        row = Dataset(
            project_id=project,
            name="eurosat-in-a-bucket",
            kind="coop",
            path=source.url,
            coop_name=ds.name,
            num_classes=ds.num_classes,
            classnames=list(ds.classnames),
            base_classes=list(task.base_classnames),
            novel_classes=list(task.novel_classnames),
            split_sizes={k: len(v) for k, v in ds.splits.items()},
            template=ds.template,
            sha256_of_split=ds.split_sha256(),
        )
        s.add(row)
        s.flush()
        return row.id


def _job(url: str, project: str, ck: str, ds: str) -> str:
    job_id = ws.make_job(url, project, ck, ds, epochs=2, batch_size=4, shots=2)
    with session_scope(url) as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(backbone={"model": "tiny-test", "pretrained": WEIGHTS})
        )
    return job_id


def _env(wsettings, home, endpoint):
    env = ws.settings_env(wsettings)
    env.update(
        MERGETUNE_HOME=str(home),
        MERGETUNE_DATA_ROOT=str(home / "data"),  # empty: nothing is read from a local data root
        MERGETUNE_MODEL_ROOT=str(home / "models"),
        MERGETUNE_ARTIFACT_URL="s3://artifacts/store",
        MERGETUNE_S3_ENDPOINT_URL=endpoint,
        MERGETUNE_S3_ACCESS_KEY_ID="testing",
        MERGETUNE_S3_SECRET_ACCESS_KEY="testing",
        MERGETUNE_S3_REGION="us-east-1",
        MERGETUNE_INPUT_CACHE_MAX_BYTES=str(64 << 20),
    )
    return env


def _sweep_unacked(broker_url: str) -> None:
    """What a worker's periodic sweep does once a message is older than the visibility timeout."""
    from kombu import Connection

    with Connection(broker_url, transport_options={"visibility_timeout": 0}) as conn:
        conn.default_channel.qos.restore_visible(num=100)


def test_two_workers_without_a_shared_disk(tmp_path, wsettings):
    url = wsettings.DATABASE_URL
    weights = _openai_weights()
    sha = hashlib.sha256(weights).hexdigest()
    with s3.moto_server() as endpoint, s3.StallingProxy(endpoint, stall="tiny-openai.pt") as proxy:
        c = s3.client(endpoint)
        s3.put_tree(c, "data", "coop/eurosat", s3.eurosat_files())
        s3.put_tree(c, "models", "", {})
        c.put_object(Bucket="models", Key="clip/tiny-openai.pt", Body=weights, Metadata={"sha256": sha})
        store = S3Store("s3://artifacts/store", client=c)
        store.ensure_bucket()

        project = ws.make_project(url)
        ck = ws.make_checkpoint(url, store, project, ws.tiny_ctx())
        ds = _register_dataset(url, endpoint, project)
        home_a, home_b = tmp_path / "node-a", tmp_path / "node-b"
        env_a, env_b = _env(wsettings, home_a, proxy.url), _env(wsettings, home_b, proxy.url)
        cache_a = home_a / "cache"

        # 1. node A takes the job and is killed while the weights arrive (half of them on its disk)
        first = _job(url, project, ck, ds)
        a = ws.WorkerProcess(env_a, tmp_path / "a.log", nodename="node-a@test").start()
        enqueue_job(wsettings, first)
        assert proxy.stalled.wait(90), a.log()[-3000:]
        name = f"sha256-{sha}.pt"
        ws.wait_for(
            lambda: any(p.stat().st_size > 0 for p in (cache_a / "partial").glob(f"{name}.*")),
            30,
            0.05,
            "half the weights on node A's disk",
        )
        a.kill()
        (half,) = (cache_a / "partial").glob(f"{name}.*")
        assert 0 < half.stat().st_size < len(weights)
        assert not (cache_a / "objects" / name).exists()  # never under a trusted name
        assert ws.job_row(url, first)["worker_host"] == "node-a@test"
        proxy.release()

        # 2. node A's heartbeat goes stale and its unacknowledged message comes back: node B runs the job
        with session_scope(url) as s:
            s.execute(
                update(WorkerHeartbeat)
                .where(WorkerHeartbeat.hostname == "node-a@test")
                .values(last_seen=utcnow().replace(year=2000))
            )
        b = ws.WorkerProcess(env_b, tmp_path / "b.log", nodename="node-b@test").start()
        try:
            _sweep_unacked(wsettings.BROKER_URL)
            ws.wait_for(
                lambda: ws.job_row(url, first)["status"] in ("succeeded", "failed"), 180, 0.2, "job 1"
            )
            job = ws.job_row(url, first)
            assert job["status"] == "succeeded", (job["error"], b.log()[-3000:])
            assert job["worker_host"] == "node-b@test" and job["attempts"] == 2
            finished = [
                e for e in ws.events(url, first) if e["type"] == "status" and "succeeded" in e["message"]
            ]
            assert len(finished) == 1
            arts = ws.artifacts(url, first)
            assert len(arts) == len({a["name"] for a in arts}) and "prompts.safetensors" in {
                a["name"] for a in arts
            }
            assert sorted(store.list(f"jobs/{first}/")) == sorted(a["key"] for a in arts)
            cache_b = home_b / "cache"
            assert (cache_b / "objects" / name).read_bytes() == weights
            assert list((cache_b / "partial").iterdir()) == []
            assert (
                len(list((cache_b / "objects").glob("etag-*.png"))) > 0
            )  # the images came through B's cache
            assert not any((home_b / "data").iterdir())
        finally:
            b.stop()

        # 3. node A comes back and runs the next job: its half file is dropped, the weights fetched whole
        a2 = ws.WorkerProcess(env_a, tmp_path / "a2.log", nodename="node-a@test").start()
        try:
            second = _job(url, project, ck, ds)
            t = time.monotonic()
            enqueue_job(wsettings, second)
            ws.wait_for(
                lambda: ws.job_row(url, second)["status"] in ("succeeded", "failed"), 180, 0.2, "job 2"
            )
            job = ws.job_row(url, second)
            assert job["status"] == "succeeded", (job["error"], a2.log()[-3000:])
            assert job["worker_host"] == "node-a@test" and time.monotonic() - t < 180
            assert (cache_a / "objects" / name).read_bytes() == weights
            assert list((cache_a / "partial").iterdir()) == []
        finally:
            a2.stop()
        # job 1 finished once: its redelivered message (if any) was not run again
        assert ws.job_row(url, first)["attempts"] == 2
