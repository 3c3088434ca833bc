"""Inputs named by object-store reference: ``s3://bucket/prefix`` datasets and ``s3://bucket/key`` weights,
read with the service's ``MERGETUNE_S3_*`` settings (the same endpoint, region and keys as an S3 artifact
store; unset ones fall back to boto3's own credential chain).

:class:`S3Inputs` lists, reads and fetches objects; fetched objects go through the machine's
:class:`~mergetune.common.objcache.ObjectCache`, verified against the size, sha256 (object metadata
``sha256`` or S3's full-object ``ChecksumSHA256``) or the MD5 that a single-part ETag is.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mergetune.common.objcache import Expected, ObjectCache, entry_name, etag_md5

#: A listing larger than this is refused (a dataset is a bounded set of images).
MAX_OBJECTS = 2_000_000
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class RemoteError(Exception):
    """An object-store reference that cannot be read; ``reason`` is a short code."""

    def __init__(self, message: str, reason: str = "unreadable", store_code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason  # "bad_reference", "not_found", "unreadable", "too_many_objects"
        self.store_code = store_code  # the store's own error code (AccessDenied, InvalidAccessKeyId, ...)


#: Store error codes that mean the credentials themselves were refused.
CREDENTIAL_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "403",
    }
)


@dataclass(frozen=True, slots=True)
class RemoteObject:
    key: str  # the full key in the bucket
    size: int
    etag: str
    sha256: str | None = None


def is_reference(value: str | None) -> bool:
    return isinstance(value, str) and value.strip().lower().startswith("s3://")


def split_reference(url: str) -> tuple[str, str]:
    """(bucket, key or prefix) of ``s3://bucket/key``; RemoteError("bad_reference") when malformed."""
    url = url.strip()
    if not url.lower().startswith("s3://"):
        raise RemoteError(f"{url[:200]!r} is not an s3:// reference", "bad_reference")
    rest = url[5:]
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise RemoteError(f"{url[:200]!r}: {bucket[:80]!r} is not a bucket name", "bad_reference")
    if "\x00" in key or "\\" in key or any(p in ("..", ".") for p in key.split("/")):
        raise RemoteError(f"{url[:200]!r}: the key may not hold '.', '..' or backslashes", "bad_reference")
    return bucket, key


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _describe(exc: BaseException) -> str:
    code = _error_code(exc)
    if code:
        return code
    return type(exc).__name__


def _sha256_of(head: dict[str, Any]) -> str | None:
    meta = {str(k).lower(): str(v) for k, v in (head.get("Metadata") or {}).items()}
    value = meta.get("sha256", "").lower()
    if _SHA256.match(value):
        return value
    checksum = head.get("ChecksumSHA256")
    if isinstance(checksum, str) and "-" not in checksum:  # composite (multipart) checksums end in -N
        with contextlib.suppress(binascii.Error, ValueError):
            raw = base64.b64decode(checksum, validate=True)
            if len(raw) == 32:
                return raw.hex()
    return None


class S3Inputs:
    """Reading inputs from S3-compatible stores with one client (boto3 clients are thread-safe)."""

    def __init__(
        self,
        settings: Any = None,
        *,
        client: Any = None,
        cache: ObjectCache | None = None,
        credentials: dict[str, str] | None = None,
    ) -> None:
        #: Set for a dataset's own credentials: cache entries are then named within the store's
        #: endpoint and bucket, so two teams' identical keys (or claimed sha256) never share an entry.
        self.scope: str | None = None
        if credentials is not None:
            endpoint = credentials.get("endpoint_url") or getattr(settings, "S3_ENDPOINT_URL", None) or ""
            self.scope = endpoint
            settings = _Own(
                S3_ENDPOINT_URL=endpoint or None,
                S3_REGION=credentials.get("region") or getattr(settings, "S3_REGION", None),
                S3_ACCESS_KEY_ID=credentials.get("access_key_id"),
                S3_SECRET_ACCESS_KEY=credentials.get("secret_access_key"),
                S3_SESSION_TOKEN=credentials.get("session_token"),
            )
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:  # pragma: no cover - boto3 is a dependency of the server
                raise RemoteError("s3:// references need boto3 on this machine") from None
            client = boto3.client(
                "s3",
                endpoint_url=getattr(settings, "S3_ENDPOINT_URL", None) or None,
                region_name=getattr(settings, "S3_REGION", None) or None,
                aws_access_key_id=getattr(settings, "S3_ACCESS_KEY_ID", None) or None,
                aws_secret_access_key=getattr(settings, "S3_SECRET_ACCESS_KEY", None) or None,
                aws_session_token=getattr(settings, "S3_SESSION_TOKEN", None) or None,
                config=Config(
                    retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60
                ),
            )
        self.client = client
        self.cache = cache

    def list(self, bucket: str, prefix: str) -> list[RemoteObject]:
        """The objects under ``prefix`` (as a folder: ``prefix/``), sorted by key."""
        folder = prefix.strip("/") + "/" if prefix.strip("/") else ""
        out: list[RemoteObject] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=folder):
                for obj in page.get("Contents", []):
                    out.append(
                        RemoteObject(obj["Key"], int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
                    )
                if len(out) > MAX_OBJECTS:
                    raise RemoteError(
                        f"s3://{bucket}/{folder} holds more than {MAX_OBJECTS} objects", "too_many_objects"
                    )
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001 - no such bucket, access denied, no endpoint: unreadable
            reason = "not_found" if _error_code(exc) in ("NoSuchBucket", "404") else "unreadable"
            raise RemoteError(
                f"s3://{bucket}/{folder} cannot be listed: {_describe(exc)}", reason, _error_code(exc)
            ) from None
        return sorted(out, key=lambda o: o.key)

    def head(self, bucket: str, key: str) -> RemoteObject:
        try:
            head = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except Exception as exc:  # noqa: BLE001
            reason = (
                "not_found" if _error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket") else ""
            )
            raise RemoteError(
                f"s3://{bucket}/{key} cannot be read: {_describe(exc)}", reason or "unreadable"
            ) from None
        return RemoteObject(
            key, int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'), _sha256_of(head)
        )

    def read(self, bucket: str, key: str, max_bytes: int) -> bytes:
        """A small object whole (split files, class lists), at most ``max_bytes``."""
        try:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            with contextlib.closing(body):
                data = body.read(max_bytes + 1)
        except Exception as exc:  # noqa: BLE001
            raise RemoteError(f"s3://{bucket}/{key} cannot be read: {_describe(exc)}") from None
        if len(data) > max_bytes:
            raise RemoteError(f"s3://{bucket}/{key} is larger than {max_bytes} bytes", "too_large")
        return data

    def _download(self, bucket: str, key: str, out: Any) -> None:
        body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        with contextlib.closing(body):
            for chunk in body.iter_chunks(64 * 1024):  # small pieces: the cache sees progress
                out.write(chunk)

    @contextlib.contextmanager
    def fetch(self, bucket: str, obj: RemoteObject) -> Iterator[Path]:
        """The object as a verified local file in the cache, kept while the block runs."""
        if self.cache is None:
            raise RemoteError("no input cache configured on this machine")
        name = entry_name(
            location=f"{bucket}/{obj.key}",
            etag=obj.etag,
            sha256=obj.sha256,
            suffix="".join(PurePosixPath(obj.key).suffixes[-2:]),
            scope=None if self.scope is None else f"{self.scope}\0{bucket}",
        )
        expected = Expected(size=obj.size, sha256=obj.sha256, md5=etag_md5(obj.etag))
        with self.cache.fetch(name, lambda out: self._download(bucket, obj.key, out), expected) as path:
            yield path


class _Own:
    """Settings-like holder of a dataset's own S3 endpoint, region and keys."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __repr__(self) -> str:  # never the keys
        return "_Own(...)"


_INPUTS: dict[tuple[Any, ...], S3Inputs] = {}


def dataset_inputs(settings: Any, credentials: dict[str, str] | None, *, with_cache: bool = True) -> S3Inputs:
    """The service's S3Inputs, or for a dataset with its own credentials a fresh one reading with them
    (its cache entries scoped to the store's endpoint and bucket)."""
    if credentials is None:
        return inputs_for(settings, with_cache=with_cache)
    cache_dir = getattr(settings, "INPUT_CACHE_DIR", None) if with_cache else None
    cache = ObjectCache(cache_dir, settings.INPUT_CACHE_MAX_BYTES) if cache_dir else None
    return S3Inputs(settings, cache=cache, credentials=credentials)


def inputs_for(settings: Any, *, with_cache: bool = True) -> S3Inputs:
    """One S3Inputs per settings (and cache folder) in this process."""
    cache_dir = getattr(settings, "INPUT_CACHE_DIR", None) if with_cache else None
    key = (
        getattr(settings, "S3_ENDPOINT_URL", None),
        getattr(settings, "S3_REGION", None),
        getattr(settings, "S3_ACCESS_KEY_ID", None),
        getattr(settings, "S3_SECRET_ACCESS_KEY", None),
        str(cache_dir) if cache_dir else None,
        getattr(settings, "INPUT_CACHE_MAX_BYTES", None),
    )
    found = _INPUTS.get(key)
    if found is None:
        cache = ObjectCache(cache_dir, settings.INPUT_CACHE_MAX_BYTES) if cache_dir else None
        found = _INPUTS[key] = S3Inputs(settings, cache=cache)
    return found


class S3DatasetSource:
    """The objects under ``s3://bucket/prefix`` as a dataset source (``mergetune.core.data.remote``):
    keys relative to the prefix; images fetched through the cache when there is one."""

    def __init__(self, inputs: S3Inputs, url: str) -> None:
        self.inputs = inputs
        self.url = url.strip()
        self.bucket, prefix = split_reference(self.url)
        self.folder = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._by_rel: dict[str, RemoteObject] = {}

    @property
    def name(self) -> str:
        return self.folder.rstrip("/").split("/")[-1] or self.bucket

    def objects(self) -> list[tuple[str, int, str]]:
        listed = self.inputs.list(self.bucket, self.folder)
        self._by_rel = {o.key[len(self.folder) :]: o for o in listed if o.key != self.folder}
        return [(rel, o.size, o.etag) for rel, o in self._by_rel.items()]

    def read(self, rel: str, max_bytes: int) -> bytes:
        return self.inputs.read(self.bucket, self.folder + rel, max_bytes)

    def image_bytes(self, rel: str) -> bytes:
        obj = self._by_rel.get(rel)
        if obj is None:  # a split file names an image the bucket does not hold
            raise FileNotFoundError(f"s3://{self.bucket}/{self.folder}{rel} is not in the bucket")
        if self.inputs.cache is None:
            return self.read(rel, max(obj.size, 1))
        with self.inputs.fetch(self.bucket, obj) as path:
            return path.read_bytes()
