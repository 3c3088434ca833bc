"""The embedded mode's queue: kombu's filesystem transport, with files that appear whole.

kombu writes a message straight into the queue folder under its final name, so a consumer listing the
folder can take the file while it is still empty and fail to decode it (kombu issue #1551); it creates
an exchange's binding table the same way, so a producer can read an empty table and drop the message.
Here every file is written under a hidden name that no reader matches, flushed, and renamed into place:
a reader sees either no file or the whole file. Binding updates are serialised by a lock file.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

#: Celery's ``broker_transport`` for a ``filesystem://`` broker URL.
TRANSPORT = "mergetune.common.fsqueue:Transport"


def _write_whole(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees part of it."""
    folder, name = os.path.split(path)
    partial = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.part")  # matched by no reader
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except OSError:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        path = os.path.join(self.data_folder_out, name)
        try:
            _write_whole(path, str_to_bytes(dumps(payload)))
        except OSError as exc:
            raise ChannelError(f"Cannot add file {path!r} to directory") from exc

    def _queue_bind(self, exchange: Any, routing_key: Any, pattern: Any, queue: Any) -> None:
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(parents=True, exist_ok=True)
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            with open(self.control_folder / ".bindings.lock", "a") as guard:
                fcntl.flock(guard, fcntl.LOCK_EX)
                table = self.get_table(exchange)
                if entry not in table:
                    _write_whole(str(file), str_to_bytes(dumps([entry, *table])))
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc


class Transport(filesystem.Transport):
    Channel = Channel
