"""The source fetcher on its own: the address rules, and real fetches from the fake server."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import AsyncIterator

import pytest

from llm_consumer.errors import InvalidRequest, TransientFailure
from llm_consumer.images.fetch import FetchPolicy, SourceFetcher, address_refusal
from tests.fakes.images_server import FakeImages
from tests.fakes.pictures import noise_png, png

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("127.8.8.8", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.0.1", "private"),
    ("fd00:ec2::254", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("100.100.100.200", "non-public"), ("0.0.0.0", "private"), ("224.0.0.1", "reserved"),
    ("::ffff:10.0.0.1", "private"), ("64:ff9b::a9fe:a9fe", "reserved"),
    ("2002:7f00:1::", "loopback"),
    ("93.184.216.34", None), ("2606:4700::1111", None),
])
def test_address_rules(address: str, reason: str | None) -> None:
    found = address_refusal(ipaddress.ip_address(address), ())
    assert (found is None) if reason is None else (found is not None and reason in found)


def test_allowlist_opens_only_its_networks() -> None:
    allow = (ipaddress.ip_network("10.20.0.0/16"),)
    assert address_refusal(ipaddress.ip_address("10.20.1.1"), allow) is None
    assert address_refusal(ipaddress.ip_address("10.21.1.1"), allow) == "a private address"
    assert address_refusal(ipaddress.ip_address("::ffff:10.20.1.1"), allow) is None


@pytest.fixture
async def fake() -> AsyncIterator[FakeImages]:
    async with FakeImages() as server:
        yield server


@pytest.fixture
async def fetcher() -> AsyncIterator[SourceFetcher]:
    instance = SourceFetcher(FetchPolicy(max_bytes=100_000, timeout_s=5, allowlist=LOOPBACK))
    yield instance
    await instance.aclose()


async def test_fetches_an_allowlisted_image(fetcher: SourceFetcher, fake: FakeImages) -> None:
    data = png(100, 80)
    assert await fetcher.fetch(fake.add_source("a.png", data)) == data
    assert await fetcher.fetch(fake.add_source("b.png", data, declare_length=False)) == data


async def test_localhost_name_is_resolved_and_refused(fake: FakeImages) -> None:
    strict = SourceFetcher(FetchPolicy())
    url = fake.add_source("a.png", png()).replace("127.0.0.1", "localhost")
    try:
        with pytest.raises(InvalidRequest, match="host localhost resolves to a loopback"):
            await strict.fetch(url)
    finally:
        await strict.aclose()
    assert fake.source_hits == []


async def test_redirect_chain_is_bounded(fetcher: SourceFetcher, fake: FakeImages) -> None:
    url = fake.add_source("a.png", png())
    for _ in range(4):
        url = fake.redirect_url(url)
    with pytest.raises(InvalidRequest, match="redirects more than 3 times"):
        await fetcher.fetch(url)


async def test_http_errors(fetcher: SourceFetcher, fake: FakeImages) -> None:
    with pytest.raises(InvalidRequest, match="answered 404"):
        await fetcher.fetch(f"{fake.base_url}/sources/missing.png")
    with pytest.raises(TransientFailure, match="unreachable"):
        await fetcher.fetch("http://127.0.0.1:9/a.png")


async def test_streamed_body_stops_at_the_cap(fetcher: SourceFetcher, fake: FakeImages) -> None:
    url = fake.add_source("big.png", noise_png(300, 300), declare_length=False)
    with pytest.raises(InvalidRequest, match="larger than 100000 bytes"):
        await fetcher.fetch(url)


def test_base64_inputs(fetcher: SourceFetcher) -> None:
    data = png(100, 80)
    encoded = base64.b64encode(data).decode()
    assert fetcher.decode_base64(encoded) == data
    assert fetcher.decode_base64("data:image/png;base64," + encoded) == data
    with pytest.raises(InvalidRequest, match="not valid base64"):
        fetcher.decode_base64("***")
    with pytest.raises(InvalidRequest, match="larger than 100000"):
        fetcher.decode_base64(base64.b64encode(noise_png(200, 200)).decode())
