"""Fixtures of the image tests: the fake image APIs, a local S3 server, an image service."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from llm_consumer.identity import derive_key, owner_tag
from tests.conftest import SECRET, Service
from tests.fakes.images_server import GETIMG_KEY, OPENAI_KEY, FakeImages


def owner_folder(subject: str = "tester") -> str:
    """The key prefix of a caller's stored images (`tests.conftest.token` callers)."""
    return f"images/{owner_tag(derive_key(SECRET, 'image-owner'), subject)}/"


@dataclass(frozen=True, slots=True)
class S3Server:
    endpoint_url: str
    region: str = "us-east-1"
    access_key_id: str = "test-access"
    secret_access_key: str = "test-secret"

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key)

    def new_bucket(self) -> str:
        name = f"images-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str, prefix: str = "llm") -> dict[str, Any]:
        return {"image_store_url": f"s3://{bucket}/{prefix}", "s3_endpoint_url": self.endpoint_url,
                "s3_region": self.region, "s3_access_key_id": self.access_key_id,
                "s3_secret_access_key": self.secret_access_key}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 in server mode: real HTTP on a loopback port, for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield S3Server(f"http://{host}:{port}")
    server.stop()


@pytest.fixture
async def fake_images() -> AsyncIterator[FakeImages]:
    async with FakeImages() as server:
        yield server


@pytest.fixture
async def image_service(
    start_service: Callable[..., Awaitable[Service]], fake_images: FakeImages, tmp_path: Any,
) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    """Start the service with both image providers pointed at the fake server."""

    async def start(**overrides: Any) -> Service:
        values: dict[str, Any] = {
            "getimg_api_key": GETIMG_KEY, "getimg_base_url": fake_images.base_url,
            "openai_api_key": OPENAI_KEY, "openai_base_url": fake_images.openai_base_url,
            "image_store_url": f"file://{tmp_path / 'images'}",
        }
        values.update(overrides)
        return await start_service(**values)

    yield start
