"""Google Cloud Storage through ``google-cloud-storage``; procedures reach it through
:mod:`opsbook.stores.uri`, which also serves local folders.

Credentials come from the environment (``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata
server), never from parameters. With ``STORAGE_EMULATOR_HOST`` set, the client talks to that
emulator (tests use ``gcp-storage-emulator``).
"""

from __future__ import annotations

import os
from functools import cache
from typing import IO
from urllib.parse import urlsplit

from opsbook.errors import UsageError
from opsbook.stores.uri import ObjectInfo


def split_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parts = urlsplit(uri)
    if parts.scheme != "gs" or not parts.netloc:
        raise UsageError(f"not a gs:// URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")


@cache
def client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=os.environ.get("GOOGLE_CLOUD_PROJECT", "opsbook"), credentials=AnonymousCredentials()
        )
    return storage.Client()


def list_objects(prefix_uri: str) -> list[ObjectInfo]:
    """Every object under ``gs://bucket/prefix`` (recursively), sorted by name."""
    bucket, prefix = split_uri(prefix_uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    from google.cloud.storage.retry import DEFAULT_RETRY

    found = []
    deadline = retry_seconds()
    blobs = client().list_blobs(
        bucket, prefix=prefix or None, retry=DEFAULT_RETRY.with_timeout(deadline), timeout=min(deadline, 60)
    )
    for blob in blobs:
        if blob.name.endswith("/"):
            continue
        found.append(
            ObjectInfo(
                uri=f"gs://{bucket}/{blob.name}",
                name=blob.name.rsplit("/", 1)[-1],
                size=int(blob.size or 0),
                fingerprint=f"gen:{blob.generation}:md5:{blob.md5_hash}",
            )
        )
    return sorted(found, key=lambda o: o.uri)


def open_read(uri: str) -> IO[bytes]:
    """A seekable binary reader over one object (ZIP readers need to seek)."""
    bucket, name = split_uri(uri)
    blob = client().bucket(bucket).blob(name)
    return blob.open("rb", chunk_size=8 << 20)


def md5_of(uri: str) -> str | None:
    """The object's MD5 as hex (None: no such object, or a composite object without one)."""
    import base64

    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket, name = split_uri(uri)
    deadline = retry_seconds()
    blob = client().bucket(bucket).get_blob(name, retry=DEFAULT_RETRY.with_timeout(deadline), timeout=min(deadline, 60))
    if blob is None or not blob.md5_hash:
        return None
    return base64.b64decode(blob.md5_hash).hex()


def exists(uri: str) -> bool:
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket, name = split_uri(uri)
    deadline = retry_seconds()
    return (
        client().bucket(bucket).blob(name).exists(retry=DEFAULT_RETRY.with_timeout(deadline), timeout=min(deadline, 60))
    )


def retry_seconds() -> float:
    """How long a GCS call retries before it gives up (OPSBOOK_GCS_RETRY_SECONDS, default 60)."""
    return float(os.environ.get("OPSBOOK_GCS_RETRY_SECONDS", "60"))


def upload_bytes(uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket, name = split_uri(uri)
    deadline = retry_seconds()
    client().bucket(bucket).blob(name).upload_from_string(
        data, content_type=content_type, retry=DEFAULT_RETRY.with_timeout(deadline), timeout=min(deadline, 60)
    )


def upload_file(uri: str, path: str) -> None:
    """Upload a local file (streamed; a large one in chunks, finalized at its end)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket, name = split_uri(uri)
    deadline = retry_seconds()
    client().bucket(bucket).blob(name).upload_from_filename(
        path, retry=DEFAULT_RETRY.with_timeout(deadline), timeout=min(deadline, 300)
    )


def delete(uri: str) -> bool:
    """Delete one object; False when it was not there."""
    from google.api_core.exceptions import NotFound

    bucket, name = split_uri(uri)
    try:
        client().bucket(bucket).blob(name).delete()
    except NotFound:
        return False
    return True
