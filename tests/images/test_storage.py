"""Both image stores on real files and a real (local) S3 server: keys, round trips, refusals,
and write-once (a key that holds an image is never written again)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from llm_consumer.errors import InvalidRequest, TransientFailure
from llm_consumer.identity import derive_key, owner_tag
from llm_consumer.images import service as service_module
from llm_consumer.images.fetch import FetchPolicy, SourceFetcher
from llm_consumer.images.processing import OutputFormat, decode
from llm_consumer.images.service import Caller, ImageService
from llm_consumer.images.storage import (
    KEY_RE,
    FileStore,
    KeyTaken,
    S3Options,
    S3Store,
    image_key,
    new_folder,
    open_store,
    owner_of,
)
from llm_consumer.settings import Settings, describe_validation_error
from tests.fakes.pictures import png
from tests.images.conftest import S3Server

DATA = b"\x89PNG fake bytes for storage tests"
OTHER = b"\x89PNG someone else's bytes"
OWNER = owner_tag(derive_key("s" * 32, "image-owner"), "alice")


def a_key(index: int = 0, fmt: OutputFormat = "png") -> str:
    return image_key(OWNER, new_folder(), index, fmt)


def test_keys_are_the_owner_tag_and_a_random_folder() -> None:
    folders = {new_folder() for _ in range(100)}
    assert len(folders) == 100 and all(len(f) == 32 and int(f, 16) >= 0 for f in folders)
    key = image_key(OWNER, "0" * 32, 2, "jpeg")
    assert key == f"images/{OWNER}/{'0' * 32}/2.jpg" and KEY_RE.fullmatch(key)
    assert owner_of(key) == OWNER and len(OWNER) == 16
    other = owner_tag(derive_key("s" * 32, "image-owner"), "bob")
    assert other != OWNER, "each subject has its own tag"
    assert owner_tag(derive_key("t" * 32, "image-owner"), "alice") != OWNER, "keyed by the secret"


@pytest.mark.parametrize("key", [
    "images/6b0e0a52-3f7d-4c1e-9a55-2f1f0c3b8e11/0.png",  # the old, request-derived layout
    f"images/{OWNER}/{'a' * 31}/0.png", f"images/{OWNER.upper()}/{'a' * 32}/0.png",
    f"images/{OWNER}/{'a' * 32}/0.gif", f"images/{OWNER}/{'a' * 32}/x/0.png"])
def test_only_keys_of_the_service_shape_are_keys(key: str) -> None:
    with pytest.raises(InvalidRequest, match="not a key"):
        owner_of(key)


async def test_file_store_round_trip(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    key = a_key()
    url = await store.put(key, DATA, "image/png")
    assert url == (tmp_path / "store" / key).as_uri()
    assert (tmp_path / "store" / key).read_bytes() == DATA
    assert await store.get(key, max_bytes=1000) == DATA
    folder = (tmp_path / "store" / key).parent
    assert [p.name for p in folder.iterdir()] == ["0.png"], "no temporary file is left behind"
    with pytest.raises(InvalidRequest, match="larger than 10 bytes"):
        await store.get(key, max_bytes=10)


async def test_file_store_never_overwrites(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    key = a_key()
    await store.put(key, DATA, "image/png")
    with pytest.raises(KeyTaken, match="already holds"):
        await store.put(key, OTHER, "image/png")
    assert (tmp_path / key).read_bytes() == DATA
    assert [p.name for p in (tmp_path / key).parent.iterdir()] == ["0.png"]


async def test_file_store_public_url(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}", s3=S3Options(),
                       public_base_url="https://cdn.example/")
    key = a_key()
    assert await store.put(key, DATA, "image/png") == f"https://cdn.example/{key}"


@pytest.mark.parametrize("key", ["../secret.png", "images/../../x/0.png", "/etc/passwd",
                                 "images/r/0.png/../../../etc", "images/r/0.exe", "images/r/x.png",
                                 "images//0.png", "images/r/0.png\n"])
async def test_file_store_refuses_foreign_keys(tmp_path: Path, key: str) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(InvalidRequest, match="not a key"):
        await store.get(key, max_bytes=1000)


async def test_file_store_refuses_a_symlink_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / ("f" * 32)).mkdir(parents=True)
    (outside / ("f" * 32) / "0.png").write_bytes(b"secret")
    (tmp_path / "store" / "images").mkdir(parents=True)
    (tmp_path / "store" / "images" / OWNER).symlink_to(outside)
    store = FileStore(tmp_path / "store")
    with pytest.raises(InvalidRequest, match="outside the image store"):
        await store.get(f"images/{OWNER}/{'f' * 32}/0.png", max_bytes=1000)


async def test_file_store_write_failure_is_transient(tmp_path: Path) -> None:
    (tmp_path / "images").write_text("a file where a directory should be")
    store = FileStore(tmp_path)
    with pytest.raises(TransientFailure, match="image store unavailable") as caught:
        await store.put(a_key(), DATA, "image/png")
    assert not isinstance(caught.value, KeyTaken)


async def test_s3_store_round_trip(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = S3Store(bucket, "/team/llm/", S3Options(
        s3_server.endpoint_url, s3_server.region, s3_server.access_key_id,
        s3_server.secret_access_key))
    try:
        key = a_key(1, "webp")
        url = await store.put(key, DATA, "image/webp")
        assert url == f"{s3_server.endpoint_url}/{bucket}/team/llm/{key}"
        head = s3_server.client().head_object(Bucket=bucket, Key=f"team/llm/{key}")
        assert head["ContentType"] == "image/webp" and head["ContentLength"] == len(DATA)
        assert head["Metadata"] == {"sha256": hashlib.sha256(DATA).hexdigest()}
        assert await store.get(key, max_bytes=1000) == DATA
        with pytest.raises(InvalidRequest, match="larger than"):
            await store.get(key, max_bytes=5)
        with pytest.raises(InvalidRequest, match="no stored image of yours"):
            await store.get(key.replace("/1.webp", "/9.webp"), max_bytes=1000)
        with pytest.raises(InvalidRequest, match="not a key"):
            await store.get("../team/llm/" + key, max_bytes=1000)
    finally:
        await store.aclose()


async def test_s3_store_never_overwrites(s3_server: S3Server) -> None:
    """A second put to a key is refused by S3 itself (a conditional put, If-None-Match: *)."""
    bucket = s3_server.new_bucket()
    store = S3Store(bucket, "llm", S3Options(
        s3_server.endpoint_url, s3_server.region, s3_server.access_key_id,
        s3_server.secret_access_key))
    try:
        key = a_key()
        await store.put(key, DATA, "image/png")
        with pytest.raises(KeyTaken, match="already holds"):
            await store.put(key, OTHER, "image/png")
        assert await store.get(key, max_bytes=1000) == DATA
        head = s3_server.client().head_object(Bucket=bucket, Key=f"llm/{key}")
        assert head["Metadata"] == {"sha256": hashlib.sha256(DATA).hexdigest()}
        other = a_key()
        await store.put(other, OTHER, "image/png")  # a new key is written as before
        assert await store.get(other, max_bytes=1000) == OTHER
    finally:
        await store.aclose()


def test_aws_url_without_endpoint() -> None:
    store = S3Store("assets", "img", S3Options(region="eu-west-1", access_key_id="a",
                                               secret_access_key="b"))
    assert store.url_of("images/r/0.png") == (
        "https://assets.s3.eu-west-1.amazonaws.com/img/images/r/0.png")


def test_store_and_allowlist_settings_are_validated_at_start() -> None:
    parsed = Settings(image_store_url="s3://bucket/pre",
                      image_fetch_allowlist="127.0.0.1, 10.9.0.0/16")
    assert [str(n) for n in parsed.image_fetch_allowlist] == ["127.0.0.1/32", "10.9.0.0/16"]
    for bad in ({"image_store_url": "http://bucket"}, {"image_store_url": "s3://"},
                {"image_fetch_allowlist": "10.0.0.1/8"}):
        with pytest.raises(ValidationError) as caught:
            Settings(**bad)  # type: ignore[arg-type]
        assert next(iter(bad)).upper() in describe_validation_error(caught.value)


async def test_a_clash_moves_the_images_to_another_new_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forced here (128 random bits never repeat in practice): the second request draws the
    first one's folder, the store refuses it, and its image goes to a second new folder."""
    folders = iter(["a" * 32, "a" * 32, "b" * 32])
    monkeypatch.setattr(service_module, "new_folder", lambda: next(folders))
    service = ImageService(providers={}, default_provider="getimg", store=FileStore(tmp_path),
                           fetcher=SourceFetcher(FetchPolicy()), owner_key=b"k" * 32)
    caller = Caller(OWNER)
    try:
        [first] = await service.keep(caller, [decode(png(64, 64, "one"))], "png", ())
        [second] = await service.keep(caller, [decode(png(64, 64, "two"))], "png", ())
    finally:
        await service.aclose()
    assert first.key == f"images/{OWNER}/{'a' * 32}/0.png"
    assert second.key == f"images/{OWNER}/{'b' * 32}/0.png"
    assert hashlib.sha256((tmp_path / first.key).read_bytes()).hexdigest() == first.sha256
    assert hashlib.sha256((tmp_path / second.key).read_bytes()).hexdigest() == second.sha256
