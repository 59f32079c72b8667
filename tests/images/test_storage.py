"""Both image stores on real files and a real (local) S3 server: keys, round trips, refusals."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from llm_consumer.errors import InvalidRequest, TransientFailure
from llm_consumer.images.storage import FileStore, S3Options, S3Store, image_key, open_store
from llm_consumer.settings import Settings, describe_validation_error
from tests.images.conftest import S3Server

DATA = b"\x89PNG fake bytes for storage tests"


def test_keys_are_deterministic_and_never_carry_request_text() -> None:
    assert image_key("6b0e0a52-3f7d-4c1e-9a55-2f1f0c3b8e11", 2, "jpeg") == (
        "images/6b0e0a52-3f7d-4c1e-9a55-2f1f0c3b8e11/2.jpg")
    odd = image_key("../../etc/passwd", 0, "png")
    assert odd == image_key("../../etc/passwd", 0, "png")
    assert ".." not in odd and odd.startswith("images/") and odd.endswith("/0.png")
    assert image_key("a" * 65, 0, "webp") != image_key("a" * 66, 0, "webp")
    assert "\n" not in image_key("abc\n", 0, "png")


async def test_file_store_round_trip(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    key = image_key("req-1", 0, "png")
    url = await store.put(key, DATA, "image/png")
    assert url == (tmp_path / "store" / key).as_uri()
    assert (tmp_path / "store" / key).read_bytes() == DATA
    assert await store.get(key, max_bytes=1000) == DATA
    assert [p.name for p in (tmp_path / "store" / "images" / "req-1").iterdir()] == ["0.png"], (
        "no temporary file is left behind")
    with pytest.raises(InvalidRequest, match="larger than 10 bytes"):
        await store.get(key, max_bytes=10)


async def test_file_store_public_url(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}", s3=S3Options(),
                       public_base_url="https://cdn.example/")
    assert await store.put("images/r/0.png", DATA, "image/png") == (
        "https://cdn.example/images/r/0.png")


@pytest.mark.parametrize("key", ["../secret.png", "images/../../x/0.png", "/etc/passwd",
                                 "images/r/0.png/../../../etc", "images/r/0.exe", "images/r/x.png",
                                 "images//0.png", "images/r/0.png\n"])
async def test_file_store_refuses_foreign_keys(tmp_path: Path, key: str) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(InvalidRequest, match="not a key"):
        await store.get(key, max_bytes=1000)


async def test_file_store_refuses_a_symlink_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "r").mkdir(parents=True)
    (outside / "r" / "0.png").write_bytes(b"secret")
    (tmp_path / "store" / "images").mkdir(parents=True)
    (tmp_path / "store" / "images" / "r").symlink_to(outside / "r")
    store = FileStore(tmp_path / "store")
    with pytest.raises(InvalidRequest, match="outside the image store"):
        await store.get("images/r/0.png", max_bytes=1000)


async def test_file_store_write_failure_is_transient(tmp_path: Path) -> None:
    (tmp_path / "images").write_text("a file where a directory should be")
    store = FileStore(tmp_path)
    with pytest.raises(TransientFailure, match="image store unavailable"):
        await store.put("images/r/0.png", DATA, "image/png")


async def test_s3_store_round_trip(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = S3Store(bucket, "/team/llm/", S3Options(
        s3_server.endpoint_url, s3_server.region, s3_server.access_key_id,
        s3_server.secret_access_key))
    try:
        key = image_key("req-2", 1, "webp")
        url = await store.put(key, DATA, "image/webp")
        assert url == f"{s3_server.endpoint_url}/{bucket}/team/llm/{key}"
        head = s3_server.client().head_object(Bucket=bucket, Key=f"team/llm/{key}")
        assert head["ContentType"] == "image/webp" and head["ContentLength"] == len(DATA)
        assert head["Metadata"] == {"sha256": hashlib.sha256(DATA).hexdigest()}
        assert await store.get(key, max_bytes=1000) == DATA
        with pytest.raises(InvalidRequest, match="larger than"):
            await store.get(key, max_bytes=5)
        with pytest.raises(InvalidRequest, match="no stored image"):
            await store.get("images/req-2/9.webp", max_bytes=1000)
        with pytest.raises(InvalidRequest, match="not a key"):
            await store.get("../team/llm/" + key, max_bytes=1000)
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
