"""The embedded mode's filesystem queue: a consumer never takes a message before it is whole.

kombu's own filesystem transport creates the message file under its final name and then writes it, so a
consumer racing the producer can take an empty file and fail to decode it. Ours renames whole files into
place. Producer and consumer here are real kombu connections on one queue folder, in two threads.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from kombu import Connection

from mergetune.common.queue import celery_config
from mergetune.common.settings import Settings

PAYLOAD = {"job_id": "job_" + "x" * 2000}  # large enough that writing it is not one instant


def _connection(folder: Path) -> Connection:
    opts = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(folder.parent / "control"),
        "polling_interval": 0.001,
    }
    return Connection("filesystem://", transport="mergetune.common.fsqueue:Transport", transport_options=opts)


def test_filesystem_broker_uses_the_whole_message_transport(tmp_path: Path) -> None:
    conf = celery_config(Settings(HOME=tmp_path))
    assert conf["broker_url"] == "filesystem://"
    assert conf["broker_transport"] == "mergetune.common.fsqueue:Transport"
    assert (
        celery_config(Settings(HOME=tmp_path, BROKER_URL="redis://127.0.0.1:6379/15"))["broker_transport"]
        is None
    )


def test_put_leaves_only_whole_messages(tmp_path: Path) -> None:
    tmp_path = tmp_path / "queue"
    tmp_path.mkdir()
    with _connection(tmp_path) as conn:
        q = conn.SimpleQueue("jobs")
        q.put(PAYLOAD)
        q.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith(".jobs.msg"), files
    message = json.loads((tmp_path / files[0]).read_bytes())
    assert {"body", "properties", "headers"} <= set(message)


def test_consumer_racing_the_producer_reads_every_message(tmp_path: Path) -> None:
    n = 200
    tmp_path = tmp_path / "queue"
    tmp_path.mkdir()
    errors: list[BaseException] = []
    got: list[dict] = []

    def produce() -> None:
        with _connection(tmp_path) as conn:
            q = conn.SimpleQueue("jobs")
            for i in range(n):
                q.put({**PAYLOAD, "i": i})
            q.close()

    def consume() -> None:
        try:
            with _connection(tmp_path) as conn:
                q = conn.SimpleQueue("jobs")
                while len(got) < n:
                    msg = q.get(timeout=10)
                    got.append(msg.payload)
                    msg.ack()
                q.close()
        except BaseException as exc:  # a half-written file surfaces here as a decode error
            errors.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    produce()
    consumer.join(60)
    assert not errors, errors
    assert sorted(m["i"] for m in got) == list(range(n))
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]
