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
    # kombu keeps exchange state per process: a queue name of its own keeps this test apart from the next
    tmp_path = tmp_path / "queue"
    tmp_path.mkdir()
    with _connection(tmp_path) as conn:
        q = conn.SimpleQueue("whole")
        q.put(PAYLOAD)
        q.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith(".whole.msg"), files
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

    with _connection(tmp_path) as conn:  # the queue and its binding exist before either side starts,
        conn.SimpleQueue("jobs").close()  # as the worker's start declares them in the embedded mode

    consumer = threading.Thread(target=consume)
    consumer.start()
    produce()
    consumer.join(60)
    assert not errors, errors
    assert sorted(m["i"] for m in got) == list(range(n))
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]


def _visible_while_writing(
    monkeypatch, tmp_path: Path, transport: str, module: object
) -> list[tuple[str, int]]:
    """The messages a consumer could take (its filter: ``<name>.jobs.msg``) at the moment the producer
    serialises a message, i.e. while that message is being written."""
    import kombu.utils.json

    seen: list[tuple[str, int]] = []

    def dumps(payload: object) -> str:
        seen.extend(
            (p.name, p.stat().st_size) for p in tmp_path.iterdir() if p.name.partition(".")[2] == "jobs.msg"
        )
        return kombu.utils.json.dumps(payload)

    monkeypatch.setattr(module, "dumps", dumps)
    opts = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path)}
    opts["control_folder"] = str(tmp_path.parent / "control")
    with Connection("filesystem://", transport=transport, transport_options=opts) as conn:
        conn.default_channel._put("jobs", {"body": "x"})
    return seen


def test_no_consumer_can_see_a_message_before_it_is_whole(monkeypatch, tmp_path: Path) -> None:
    import kombu.transport.filesystem

    import mergetune.common.fsqueue

    ours, stock = tmp_path / "ours", tmp_path / "stock"
    ours.mkdir(), stock.mkdir()
    assert (
        _visible_while_writing(
            monkeypatch, ours, "mergetune.common.fsqueue:Transport", mergetune.common.fsqueue
        )
        == []
    )
    # kombu's own transport shows the empty file under its final name: the race this module closes
    seen = _visible_while_writing(monkeypatch, stock, "filesystem", kombu.transport.filesystem)
    assert len(seen) == 1 and seen[0][1] == 0
