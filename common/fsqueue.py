"""The embedded mode's queue: kombu's filesystem transport, with messages that appear whole.

kombu writes a message straight into the queue folder under its final name, so a consumer listing the
folder can take the file while it is still empty and fail to decode it (kombu issue #1551). Here a
message is written under a hidden name that no consumer matches, flushed, and renamed into place:
a consumer sees either no file or the whole message.
"""

from __future__ import annotations

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


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")  # matched by no consumer
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
