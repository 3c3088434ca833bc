"""A real S3-protocol server for tests (moto's server mode on a free local port, reached over HTTP by
boto3) and dataset layouts written into its buckets."""

from __future__ import annotations

import contextlib
import io
import json
import socket
from collections.abc import Iterator
from typing import Any

CREDENTIALS = {"S3_ACCESS_KEY_ID": "testing", "S3_SECRET_ACCESS_KEY": "testing", "S3_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def put_tree(s3: Any, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    with contextlib.suppress(Exception):
        s3.create_bucket(Bucket=bucket)
    for rel, data in files.items():
        s3.put_object(
            Bucket=bucket, Key=f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel, Body=data
        )


def png(seed: int, size: int = 8) -> bytes:
    """A small PNG whose pixels depend on ``seed`` (every image its own bytes, hence its own ETag)."""
    from PIL import Image

    im = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    im.putpixel((seed % size, (seed // size) % size), (255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def eurosat_files(n_cls: int = 6, per: dict[str, int] | None = None) -> dict[str, bytes]:
    """EuroSAT in CoOp's layout: ``2750/<class>/<image>`` and ``split_zhou_EuroSAT.json``."""
    per = per or {"train": 4, "val": 1, "test": 2}
    files: dict[str, bytes] = {}
    split: dict[str, list[list[Any]]] = {}
    n = 0
    for s, k in per.items():
        split[s] = []
        for label in range(n_cls):
            cname = f"Class{label}"
            for j in range(k):
                rel = f"{cname}/{cname}_{s}{j}.png"
                files[f"2750/{rel}"] = png(n)
                n += 1
                split[s].append([rel, label, cname])
    files["split_zhou_EuroSAT.json"] = json.dumps(split).encode()
    return files


def imagefolder_files(classes: tuple[str, ...] = ("golden_retriever", "tabby_cat")) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    n = 100
    for split, k in (("train", 2), ("test", 1)):
        for cls in classes:
            for i in range(k):
                files[f"{split}/{cls}/{i}.png"] = png(n)
                n += 1
    return files


class StallingProxy:
    """An HTTP proxy in front of the S3 server that, for the first GET whose path contains ``stall``,
    sends half the object and then stops sending until :meth:`release` (a network that hangs mid
    download, so that the reader can be killed with half a file written)."""

    def __init__(self, upstream: str, stall: str) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlparse

        self.stalled = threading.Event()
        self._released = threading.Event()
        self._armed = True
        self._lock = threading.Lock()
        up = urlparse(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    raw = b""
                    while True:
                        line = self.rfile.readline()
                        raw += line
                        size = int(line.split(b";")[0].strip() or b"0", 16)
                        chunk = self.rfile.read(size + 2)
                        raw += chunk
                        if size == 0:
                            # trailers until an empty line
                            while chunk not in (b"\r\n", b""):
                                chunk = self.rfile.readline()
                                raw += chunk
                            return raw
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else None

            def _relay(self) -> None:
                body = self._body()
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in (
                        "transfer-encoding",
                        "connection",
                        "content-length",
                        "server",
                        "date",
                    ):
                        self.send_header(k, v)
                self.send_header(
                    "Content-Length",
                    str(len(data) if self.command != "HEAD" else resp.getheader("Content-Length") or 0),
                )
                self.end_headers()
                conn.close()
                if self.command == "HEAD":
                    return
                with proxy._lock:
                    stall = self.command == "GET" and stall_on in self.path and proxy._armed and len(data) > 1
                    if stall:
                        proxy._armed = False
                if stall:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    proxy.stalled.set()
                    proxy._released.wait(120)
                    self.close_connection = True
                    return  # the reader is gone by now; the rest is never sent
                self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay

        stall_on = stall
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StallingProxy:
        self._thread.start()
        return self

    def release(self) -> None:
        self._released.set()

    def __exit__(self, *exc: Any) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
