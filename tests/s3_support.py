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
