"""The worker's input cache against a real S3-protocol server (moto's server mode, over HTTP on this
machine): images of a bucket dataset read cold (every read a download), warm (every read a hit), and
with a bound smaller than the dataset (least recently used entries evicted while reading).

    .venv/bin/python bench/input_cache.py                 # 600 images of 64x64 px, bound = half of them
    .venv/bin/python bench/input_cache.py --images 200
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    import boto3
    import numpy as np
    from moto.server import ThreadedMotoServer
    from PIL import Image

    from mergetune.common.objcache import ObjectCache
    from mergetune.common.remote import S3DatasetSource, S3Inputs
    from mergetune.core.data.remote import open_listed_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's request lines
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    work = Path(tempfile.mkdtemp(prefix="mt-bench-cache-"))
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        client.create_bucket(Bucket="data")
        rng = np.random.default_rng(0)
        total = 0
        for i in range(args.images):
            buf = io.BytesIO()
            pixels = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buf, format="PNG")
            split = "train" if i % 4 else "test"
            client.put_object(Bucket="data", Key=f"bench/{split}/class{i % 10}/{i}.png", Body=buf.getvalue())
            total += len(buf.getvalue())
        print(
            f"{args.images} PNG images, {total / 1e6:.1f} MB in s3://data/bench (moto server mode over HTTP)"
        )

        def run(bound: int, label: str, passes: int = 2) -> None:
            root = work / label
            cache = ObjectCache(root, bound)
            source = S3DatasetSource(S3Inputs(client=client, cache=cache), "s3://data/bench")
            t = time.perf_counter()
            ds = open_listed_dataset("imagefolder", source, name=source.name, shown=source.url)
            listed = time.perf_counter() - t
            keys = [r.key for recs in ds.splits.values() for r in recs]
            print(f"\n{label}: bound {bound / 1e6:.1f} MB; listing + layout {listed * 1e3:.0f} ms")
            for p in range(passes):
                t = time.perf_counter()
                for k in keys:
                    ds.load_image(k)
                dt = time.perf_counter() - t
                entries = len(list(cache.objects.iterdir()))
                print(
                    f"  pass {p + 1}: {len(keys) / dt:.0f} images/s ({dt * 1e3 / len(keys):.2f} ms each); "
                    f"cache {cache.usage() / 1e6:.2f} MB in {entries} entries, "
                    f"{len(list(cache.partial.iterdir()))} partial files"
                )

        run(1 << 30, "fits")  # pass 1 downloads, pass 2 hits
        run(total // 2, "half")  # reading in order past the bound: every read evicts the oldest
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
