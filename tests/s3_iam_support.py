"""An S3-protocol server that checks who is asking: moto's server in its own process, with IAM
enforcement turned on once the test's users, buckets and objects are in place. Every request is then
signed-checked against the users' access keys (an unknown key is ``InvalidAccessKeyId``, a wrong secret
``SignatureDoesNotMatch``) and authorised by the user's policy (another team's bucket is ``AccessDenied``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import s3_support as s3


@dataclass(frozen=True)
class Team:
    user: str
    bucket: str
    access_key_id: str
    secret_access_key: str

    def credentials(self, **extra: Any) -> dict[str, Any]:
        return {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key, **extra}


def _boto(service: str, endpoint: str, key: str = "setup", secret: str = "setup") -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def _bucket_policy(buckets: list[str]) -> str:
    resources = [arn for b in buckets for arn in (f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*")]
    return json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": resources}]}
    )


@contextlib.contextmanager
def enforcing_server(
    teams: dict[str, list[str]], trees: dict[str, dict[str, bytes]]
) -> Iterator[tuple[str, dict[str, Team]]]:
    """(endpoint, {user: Team}) of a server where each user may use only its buckets. ``trees`` maps
    ``bucket/prefix`` to files written before enforcement begins."""
    port = s3.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the S3 server did not start") from None
                time.sleep(0.1)
        iam, admin = _boto("iam", endpoint), _boto("s3", endpoint)
        out: dict[str, Team] = {}
        for user, buckets in teams.items():
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="buckets", PolicyDocument=_bucket_policy(buckets))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            out[user] = Team(user, buckets[0] if buckets else "", key["AccessKeyId"], key["SecretAccessKey"])
        for where, files in trees.items():
            bucket, _, prefix = where.partition("/")
            s3.put_tree(admin, bucket, prefix, files)
        req = urllib.request.Request(
            endpoint + "/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(req, timeout=10).close()  # from now on every request is checked
        yield endpoint, out
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
