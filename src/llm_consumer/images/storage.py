"""Where images live: a directory (`file://DIR`) or an S3 bucket (`s3://bucket/prefix`).

Keys are made by the service, never taken from a request:

    images/<owner tag>/<folder>/<index>.<ext>

<owner tag> is the caller's tag (`identity.owner_tag`: an HMAC of the token's `sub`, 16 hex),
<folder> is 32 random hex digits drawn for each request's images. Nothing a caller sends (its
request id included) reaches a key, so a key can be neither guessed nor aimed at another
caller's images. Stores are write-once: `put` refuses a key that already holds an image
(KeyTaken), on files and on S3 alike, so an image, once announced, never changes.

A `source_image.ref` must match that shape exactly (KEY_RE), so it can only name what this
service stores; who may read which key is decided by the image service (`service.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llm_consumer.errors import InvalidRequest, TransientFailure
from llm_consumer.identity import OWNER_TAG_CHARS
from llm_consumer.images.processing import EXTENSIONS, OutputFormat

FOLDER_BYTES = 16  # 128 random bits: 32 hex digits
KEY_RE = re.compile(
    rf"images/(?P<owner>[0-9a-f]{{{OWNER_TAG_CHARS}}})/[0-9a-f]{{{2 * FOLDER_BYTES}}}"
    r"/[0-9]{1,2}\.(png|jpg|webp)")
KEY_SHAPE = "images/<owner>/<folder>/<n>.<png|jpg|webp>"


class KeyTaken(TransientFailure):
    """The key already holds an image: stores never overwrite one."""


def new_folder() -> str:
    """A fresh random folder for one request's images."""
    return secrets.token_hex(FOLDER_BYTES)


def image_key(owner: str, folder: str, index: int, fmt: OutputFormat) -> str:
    return f"images/{owner}/{folder}/{index}.{EXTENSIONS[fmt]}"


def owner_of(key: str) -> str:
    """The owner tag of a key; InvalidRequest for anything not of the shape the service makes."""
    found = KEY_RE.fullmatch(key)
    if found is None:
        raise InvalidRequest("source_image.ref is not a key of an image this service stored "
                             f"(expected {KEY_SHAPE})")
    return found["owner"]


def check_key(key: str) -> str:
    owner_of(key)
    return key


def no_image(key: str) -> InvalidRequest:
    """The one answer for a key that is missing or not the reader's: no way to tell which."""
    return InvalidRequest(f"no stored image of yours under {key}")


class ImageStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Store `data` under a new `key`; return the URL peers fetch it from.

        Raise KeyTaken when `key` already holds an image (it is never replaced)."""
        ...

    async def get(self, key: str, *, max_bytes: int) -> bytes:
        """Read back a stored image; InvalidRequest when there is none (or it is too large)."""
        ...

    async def aclose(self) -> None: ...


class FileStore:
    def __init__(self, root: Path, *, public_base_url: str | None = None) -> None:
        self.root = root.resolve()
        self._public = public_base_url

    def path_of(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # a symlink planted inside the store
            raise InvalidRequest("source_image.ref points outside the image store")
        return path

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        path = self.path_of(key)
        try:
            await asyncio.to_thread(_write_once, path, data)
        except FileExistsError:
            raise KeyTaken(f"image store already holds {key}") from None
        except OSError as err:
            raise TransientFailure(f"image store unavailable: {err}") from err
        return f"{self._public}{key}" if self._public else path.as_uri()

    async def get(self, key: str, *, max_bytes: int) -> bytes:
        path = self.path_of(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise no_image(key) from None
        if size > max_bytes:
            raise InvalidRequest(f"stored image {key} is larger than {max_bytes} bytes")
        return await asyncio.to_thread(path.read_bytes)

    async def aclose(self) -> None:
        return None


def _write_once(path: Path, data: bytes) -> None:
    """Write a temporary file, then link it as `path`: readers never see a partial image, and
    the link fails (FileExistsError) when `path` exists, so nothing is ever replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.link(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class S3Options:
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None


_TAKEN_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


class S3Store:
    """boto3 is imported here, not at the top: it costs ~25 MB in every process that never
    stores images in S3.

    Writes are conditional (`If-None-Match: *`): S3 refuses a put to a key that exists
    (412 PreconditionFailed, or 409 while another write to it is in progress)."""

    def __init__(self, bucket: str, prefix: str, options: S3Options, *,
                 public_base_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._options = options
        self._public = public_base_url
        import boto3
        from botocore.config import Config

        self._client: Any = boto3.session.Session().client(
            "s3", endpoint_url=options.endpoint_url, region_name=options.region,
            aws_access_key_id=options.access_key_id,
            aws_secret_access_key=options.secret_access_key,
            config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2},
                          s3={"addressing_style": "path" if options.endpoint_url else "auto"}))

    def url_of(self, key: str) -> str:
        if self._public:
            return f"{self._public}{key}"
        if self._options.endpoint_url:
            return f"{self._options.endpoint_url.rstrip('/')}/{self.bucket}/{self.prefix}{key}"
        region = self._options.region or "us-east-1"
        return f"https://{self.bucket}.s3.{region}.amazonaws.com/{self.prefix}{key}"

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(key)
        try:
            await asyncio.to_thread(
                self._client.put_object, Bucket=self.bucket, Key=self.prefix + key, Body=data,
                ContentType=content_type, IfNoneMatch="*",
                Metadata={"sha256": hashlib.sha256(data).hexdigest()})
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in _TAKEN_CODES:
                raise KeyTaken(f"image store already holds {key}") from None
            raise TransientFailure(f"image store unavailable: {err}") from err
        except BotoCoreError as err:
            raise TransientFailure(f"image store unavailable: {err}") from err
        return self.url_of(key)

    async def get(self, key: str, *, max_bytes: int) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(key)
        try:
            answer = await asyncio.to_thread(
                self._client.get_object, Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise no_image(key) from None
            raise TransientFailure(f"image store unavailable: {err}") from err
        except BotoCoreError as err:
            raise TransientFailure(f"image store unavailable: {err}") from err
        body = answer["Body"]
        try:
            if int(answer.get("ContentLength", 0)) > max_bytes:
                raise InvalidRequest(f"stored image {key} is larger than {max_bytes} bytes")
            return await asyncio.to_thread(body.read)
        finally:
            body.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self._client.close)


def open_store(url: str, *, s3: S3Options, public_base_url: str | None = None) -> ImageStore:
    """The store an `IMAGE_STORE_URL` names (validated by the settings)."""
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return S3Store(bucket, prefix, s3, public_base_url=public_base_url)
    return FileStore(Path(url.removeprefix("file://")), public_base_url=public_base_url)
