"""Artifact store: one small interface over a local directory (default) or an S3-compatible bucket.

Keys are relative POSIX paths such as ``jobs/job_123/prompts.safetensors``. ``get_store(settings)``
picks the backend from ``settings.ARTIFACT_URL`` (or ``ARTIFACT_ROOT``): an ``s3://bucket/prefix`` URL
selects :class:`S3Store` (boto3; endpoint, region and keys of a non-AWS server come from
``settings.S3_ENDPOINT_URL`` / ``S3_REGION`` / ``S3_ACCESS_KEY_ID`` / ``S3_SECRET_ACCESS_KEY`` when set,
else from boto3's own credential chain), anything else is a directory for :class:`LocalStore`.

Writes are atomic on both backends: a reader never sees half an artifact (local: write to a temporary
file in the same directory, then ``os.replace``; S3: objects appear only when the upload completes).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024


class StorageError(Exception):
    """A key is malformed or an object is missing."""


class ArtifactNotFound(StorageError, FileNotFoundError):
    pass


#: The errors of a full disk (or a quota): the write can succeed later, once space returns.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_storage_full(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what it was raised from) is a write refused for lack of space."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes free for writing at ``path`` (its nearest existing folder); None when it cannot be told."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise StorageError(f"invalid artifact key {key!r}")
    parts = key.split("/")
    if any(p in ("..", ".", "") for p in parts):
        raise StorageError(f"invalid artifact key {key!r}")
    return key


class ArtifactStore(ABC):
    """What the API and the worker need from artifact storage."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str]) -> None: ...

    @abstractmethod
    def put_stream(self, key: str, fileobj: IO[bytes]) -> None:
        """Store everything readable from ``fileobj`` (read in chunks, never whole in memory)."""

    def put_bytes(self, key: str, data: bytes) -> None:
        import io

        self.put_stream(key, io.BytesIO(data))

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A binary file object to read (the caller closes it). Raises ArtifactNotFound."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (a folder-like prefix such as ``jobs/job_1/``), sorted."""

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for k in keys:
            self.delete(k)
        return len(keys)

    @abstractmethod
    def local_path(self, key: str) -> Path:
        """A local filesystem path holding the object. LocalStore returns the stored file itself (do not
        modify it); remote stores download to a fresh temporary file that the caller may delete."""

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        with self.open(key) as f:
            while True:
                chunk = f.read(chunk_size)
                if not chunk:
                    return
                yield chunk

    def sha256(self, key: str) -> str:
        h = hashlib.sha256()
        for chunk in self.iter_chunks(key):
            h.update(chunk)
        return h.hexdigest()


class LocalStore(ArtifactStore):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key).split("/"))

    def _atomic_write(self, key: str, writer: Any) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                writer(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        def writer(out: IO[bytes]) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, out, CHUNK_SIZE)

        self._atomic_write(key, writer)

    def put_stream(self, key: str, fileobj: IO[bytes]) -> None:
        self._atomic_write(key, lambda out: shutil.copyfileobj(fileobj, out, CHUNK_SIZE))

    def open(self, key: str) -> BinaryIO:
        p = self._path(key)
        try:
            return open(p, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError as e:
            raise ArtifactNotFound(key) from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as e:
            raise ArtifactNotFound(key) from e

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        """A folder prefix (``checkpoints/ckpt_1/``) removes that folder whole, without walking the
        rest of the store; other prefixes fall back to listing."""
        if not prefix.endswith("/") or not prefix.strip("/"):
            return super().delete_prefix(prefix)
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)
        return count

    def list(self, prefix: str = "") -> list[str]:
        base = self.root
        out = []
        for p in base.rglob("*"):
            if p.is_file() and not p.name.startswith(".tmp-"):
                k = p.relative_to(base).as_posix()
                if k.startswith(prefix):
                    out.append(k)
        return sorted(out)

    def local_path(self, key: str) -> Path:
        p = self._path(key)
        if not p.is_file():
            raise ArtifactNotFound(key)
        return p


class S3Store(ArtifactStore):
    """Objects in ``s3://bucket/prefix`` through boto3 (AWS S3, MinIO, Ceph RGW, moto, ...)."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        client: Any = None,
        region_name: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError(f"not an s3:// URL: {url!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if client is None:
            import boto3  # optional dependency (extra "s3"); only S3 deployments need it
            from botocore.config import Config

            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region_name,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}),
            )
        self.client = client

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _is_missing(self, exc: Exception) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception:  # noqa: BLE001 - any failure: try to create it, which raises a clear error
            self.client.create_bucket(Bucket=self.bucket)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def put_stream(self, key: str, fileobj: IO[bytes]) -> None:
        # upload_fileobj streams in multipart chunks (8 MiB by default): bounded memory for big uploads.
        self.client.upload_fileobj(fileobj, self.bucket, self._key(key))

    def open(self, key: str) -> BinaryIO:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as e:
            if self._is_missing(e):
                raise ArtifactNotFound(key) from e
            raise
        return obj["Body"]  # botocore StreamingBody: read(n), close(), context manager

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as e:
            if self._is_missing(e):
                return False
            raise

    def size(self, key: str) -> int:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as e:
            if self._is_missing(e):
                raise ArtifactNotFound(key) from e
            raise
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(out)

    def local_path(self, key: str) -> Path:
        suffix = "".join(PurePosixPath(key).suffixes)[-32:]
        fd, tmp = tempfile.mkstemp(prefix="mergetune-s3-", suffix=suffix)
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._key(key), tmp)
        except Exception as e:
            Path(tmp).unlink(missing_ok=True)
            if self._is_missing(e):
                raise ArtifactNotFound(key) from e
            raise
        return Path(tmp)


def store_from_url(url: str, **s3_options: Any) -> ArtifactStore:
    """``s3://bucket/prefix`` -> S3Store(url, **s3_options); a path or ``file://`` URL -> LocalStore."""
    if url.startswith("s3://"):
        return S3Store(url, **s3_options)
    if url.startswith("file://"):
        url = urlparse(url).path
    return LocalStore(url)


_STORES: dict[tuple[Any, ...], ArtifactStore] = {}


def get_store(settings: Any = None) -> ArtifactStore:
    """The artifact store the settings describe (cached per URL: boto3 clients are thread-safe)."""
    if settings is None:
        from mergetune.common.settings import get_settings

        settings = get_settings()
    url = getattr(settings, "ARTIFACT_URL", None) or getattr(settings, "ARTIFACT_ROOT", None)
    if not url:
        raise StorageError("no ARTIFACT_URL / ARTIFACT_ROOT configured")
    url = str(url)
    s3_options = {
        "endpoint_url": getattr(settings, "S3_ENDPOINT_URL", None) or None,
        "region_name": getattr(settings, "S3_REGION", None) or None,
        "access_key_id": getattr(settings, "S3_ACCESS_KEY_ID", None) or None,
        "secret_access_key": getattr(settings, "S3_SECRET_ACCESS_KEY", None) or None,
    }
    cache_key = (url, *s3_options.values())
    store = _STORES.get(cache_key)
    if store is None:
        store = _STORES[cache_key] = (
            store_from_url(url, **s3_options) if url.startswith("s3://") else (store_from_url(url))
        )
        logger.info("artifact store: %r", store)
    return store
