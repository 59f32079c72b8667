"""Source images (URL, base64, stored ref) and both storage backends, through the real broker.

The fake image server runs on 127.0.0.1, so a URL served by it is an internal address: it is
refused unless IMAGE_FETCH_ALLOWLIST names the loopback network. Refusals are checked before
any connection: the addresses 10.x and 169.254.169.254 are never contacted.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from llm_consumer.events import catalog
from tests.conftest import Service
from tests.fakes.images_server import FakeImages
from tests.fakes.pictures import noise_png, png
from tests.hub import dead_letters
from tests.images.conftest import S3Server, owner_folder
from tests.images.test_image_round_trip import assert_matches, failure, generated, read_stored

LOOPBACK = ("127.0.0.1/32",)


def transform(url: str) -> dict[str, Any]:
    return {"source_image": {"url": url}, "theme": {"preset": "gothic-horror"}}


# --------------------------------------------------------------------------- URLs


async def test_allowlisted_url_is_fetched_and_the_same_url_refused_without(
        image_service: Any, fake_images: FakeImages) -> None:
    url = fake_images.add_source("keep.png", png(320, 240))
    allowed: Service = await image_service(image_fetch_allowlist=LOOPBACK)
    data = await generated(allowed, "transform", transform(url))
    assert_matches(data["images"][0], read_stored(data["images"][0]))
    assert fake_images.source_hits == ["/sources/keep.png"]

    refused: Service = await image_service()
    error = await failure(refused, "transform", transform(url))
    assert error["code"] == "invalid_request" and "loopback" in error["message"]
    assert fake_images.source_hits == ["/sources/keep.png"], "no second fetch"
    [letter] = await dead_letters(refused.settings, expect=1)
    assert letter.headers["x-error-code"] == "invalid_request"


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.0.0.1:{port}/sources/a.png", "loopback"),
    ("http://localhost:{port}/sources/a.png", "loopback"),
    ("http://[::1]:{port}/sources/a.png", "loopback"),
    ("http://10.0.0.5/a.png", "private"),
    ("http://192.168.1.20/a.png", "private"),
    ("http://169.254.169.254/latest/meta-data/iam/", "link-local"),
    ("http://[::ffff:169.254.169.254]/latest/meta-data/", "link-local"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("ftp://example.com/a.png", "scheme 'ftp'"),
    ("http://user:secret@127.0.0.1:{port}/sources/a.png", "credentials"),
], ids=["127.0.0.1", "localhost", "ipv6-loopback", "10.x", "192.168.x", "metadata",
        "mapped-metadata", "file", "ftp", "credentials"])
async def test_internal_and_odd_urls_are_refused(image_service: Any, fake_images: FakeImages,
                                                 url: str, reason: str) -> None:
    fake_images.add_source("a.png", png())
    service: Service = await image_service()
    port = fake_images.base_url.rsplit(":", 1)[1]
    error = await failure(service, "enhance", {"source_image": {"url": url.format(port=port)}})
    assert error["code"] == "invalid_request"
    assert reason in error["message"], error["message"]
    assert fake_images.source_hits == [] and fake_images.requests == [], "nothing was contacted"


async def test_redirect_to_a_private_address_is_refused(image_service: Any,
                                                        fake_images: FakeImages) -> None:
    service: Service = await image_service(image_fetch_allowlist=LOOPBACK)
    url = fake_images.redirect_url("http://10.1.2.3/secret.png")
    error = await failure(service, "enhance", {"source_image": {"url": url}})
    assert error["code"] == "invalid_request" and "10.1.2.3" in error["message"]
    assert fake_images.source_hits == ["/redirect"] and fake_images.requests == []


async def test_redirect_to_an_allowed_image_is_followed(image_service: Any,
                                                        fake_images: FakeImages) -> None:
    service: Service = await image_service(image_fetch_allowlist=LOOPBACK)
    target = fake_images.add_source("moved.png", png(200, 160))
    data = await generated(service, "enhance", {
        "source_image": {"url": fake_images.redirect_url(target)},
        "options": {"enhance": ["face_fix"]}})
    assert (data["images"][0]["width"], data["images"][0]["height"]) == (200, 160)
    assert fake_images.source_hits == ["/redirect", "/sources/moved.png"]


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
async def test_oversized_body_is_refused(image_service: Any, fake_images: FakeImages,
                                         declare_length: bool) -> None:
    service: Service = await image_service(image_fetch_allowlist=LOOPBACK,
                                           image_fetch_max_bytes=64 * 1024)
    big = noise_png(200, 200)
    assert len(big) > 100_000
    url = fake_images.add_source("big.png", big, declare_length=declare_length)
    error = await failure(service, "enhance", {"source_image": {"url": url}})
    assert error["code"] == "invalid_request" and "larger than 65536 bytes" in error["message"]
    assert fake_images.requests == []


async def test_wrong_content_type_is_refused(image_service: Any,
                                             fake_images: FakeImages) -> None:
    service: Service = await image_service(image_fetch_allowlist=LOOPBACK)
    url = fake_images.add_source("page.html", png(), content_type="text/html")
    error = await failure(service, "transform", transform(url))
    assert error["code"] == "invalid_request" and "'text/html'" in error["message"]


async def test_image_bytes_that_do_not_decode_are_refused(image_service: Any,
                                                          fake_images: FakeImages) -> None:
    service: Service = await image_service(image_fetch_allowlist=LOOPBACK)
    url = fake_images.add_source("fake.png", b"\x89PNG but not really" * 20)
    error = await failure(service, "transform", transform(url))
    assert error["code"] == "invalid_request" and "not a readable image" in error["message"]


async def test_base64_over_the_cap_is_refused(image_service: Any,
                                              fake_images: FakeImages) -> None:
    service: Service = await image_service(image_fetch_max_bytes=32 * 1024)
    data = base64.b64encode(noise_png(200, 200)).decode()
    error = await failure(service, "enhance", {"source_image": {"data": data}})
    assert error["code"] == "invalid_request" and "larger than 32768 bytes" in error["message"]
    assert fake_images.requests == []


# --------------------------------------------------------------------------- stored refs


@pytest.mark.parametrize("ref", [
    "../../etc/passwd", "images/../../etc/passwd", "/etc/passwd", "images/x/0.png/../../a",
    "images/abc/0.gif", "images/a b/0.png",
])
async def test_refs_outside_the_store_are_refused(image_service: Any, fake_images: FakeImages,
                                                  ref: str) -> None:
    service: Service = await image_service()
    error = await failure(service, "enhance", {"source_image": {"ref": ref}})
    assert error["code"] == "invalid_request" and "not a key" in error["message"]
    assert fake_images.requests == []


async def test_unknown_ref_is_refused(image_service: Any) -> None:
    service: Service = await image_service()
    missing = f"{owner_folder()}{'0' * 32}/0.png"
    error = await failure(service, "enhance", {"source_image": {"ref": missing}})
    assert error["code"] == "invalid_request"
    assert error["message"] == f"no stored image of yours under {missing}"


async def test_file_store_ref_round_trip(image_service: Any, fake_images: FakeImages) -> None:
    service: Service = await image_service()
    first = await generated(service, "portrait", {"prompt": "a tiefling warlock",
                                                  "options": {"width": 256, "height": 256}})
    key = first["images"][0]["key"]
    second = await generated(service, "enhance", {"source_image": {"ref": key},
                                                  "options": {"provider": "openai"}})
    [call] = fake_images.of("openai")
    sent = call.files[0][2]
    assert hashlib.sha256(sent).hexdigest() == first["images"][0]["sha256"], "the stored bytes"
    assert second["images"][0]["width"] == 512


# --------------------------------------------------------------------------- S3


async def test_s3_store_round_trip(image_service: Any, fake_images: FakeImages,
                                   s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    service: Service = await image_service(**s3_server.settings(bucket, prefix="llm"))
    first = await generated(service, "item", {"prompt": "a runed shield",
                                              "theme": {"preset": "high-fantasy"},
                                              "options": {"output_format": "jpeg"}})
    [image] = first["images"]
    assert image["url"] == f"{s3_server.endpoint_url}/{bucket}/llm/{image['key']}"
    client = s3_server.client()
    head = client.head_object(Bucket=bucket, Key=f"llm/{image['key']}")
    assert head["ContentType"] == "image/jpeg" and head["Metadata"]["sha256"] == image["sha256"]
    assert_matches(image, read_stored(image, client, bucket, "llm/"), "jpeg")

    second = await generated(service, "variations", {"source_image": {"ref": image["key"]},
                                                     "options": {"count": 2}})
    assert len(second["images"]) == 2
    for stored in second["images"]:
        assert_matches(stored, read_stored(stored, client, bucket, "llm/"))
    listed = client.list_objects_v2(Bucket=bucket, Prefix="llm/images/")["Contents"]
    assert len(listed) == 3


async def test_s3_outage_is_transient(image_service: Any, fake_images: FakeImages,
                                      s3_server: S3Server) -> None:
    service: Service = await image_service(max_attempts=1, **s3_server.settings(
        "bucket-that-does-not-exist"))
    result = await service.request("item", {"prompt": "a runed shield"})
    assert result.final is not None and result.final["type"] == catalog.GENERATION_FAILED
    error = result.final["data"]["error"]
    assert error["code"] == "provider_unavailable" and "image store" in error["message"]
