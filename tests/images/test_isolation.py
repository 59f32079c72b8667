"""Stored images belong to the caller that made them, tried as a second caller would attack.

Alice, Bob and an operator each hold a token of their own (`sub` alice, bob, ops). Bob knows
Alice's request ids and the keys of her images (they travel in events on a shared hub). He
tries to overwrite her images by reusing her request id (or the hash the old layout made of
it), and to read them through `source_image.ref`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from llm_consumer.events import catalog
from llm_consumer.events.results import ImageGenerated
from tests.conftest import Service, token
from tests.fakes.images_server import FakeImages
from tests.images.conftest import owner_folder
from tests.images.test_image_round_trip import assert_matches, read_stored

IMAGE = "llm:image"


def alice() -> str:
    return token(IMAGE, subject="alice")


def bob() -> str:
    return token(IMAGE, subject="bob")


def operator() -> str:
    return token(IMAGE, "llm:admin", subject="ops")


async def made(service: Service, kind: str, data: dict[str, Any], auth: str,
               request_id: str | None = None) -> dict[str, Any]:
    result = await service.request(kind, data, auth=auth, request_id=request_id)
    assert result.final is not None and result.final["type"] == catalog.IMAGE_GENERATED, (
        result.final)
    ImageGenerated.model_validate(result.final["data"])
    return dict(result.final["data"])


async def refused(service: Service, kind: str, data: dict[str, Any], auth: str) -> str:
    result = await service.request(kind, data, auth=auth)
    assert result.final is not None and result.final["type"] == catalog.GENERATION_FAILED, (
        result.final)
    error = result.final["data"]["error"]
    assert error["code"] == "invalid_request", error
    return str(error["message"])


def stored_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_anothers_request_id_never_reaches_their_images(
        image_service: Any, tmp_path: Path) -> None:
    service: Service = await image_service()
    alice_id = "portrait for alice, take 1"  # the old layout stored it under sha256(id)[:32]
    portrait = await made(service, "portrait", {"prompt": "an elven ranger"}, alice(),
                          request_id=alice_id)
    [hers] = portrait["images"]
    assert hers["key"].startswith(owner_folder("alice"))
    before = read_stored(hers)

    for bobs_id in (alice_id, hashlib.sha256(alice_id.encode()).hexdigest()[:32]):
        answer = await made(service, "portrait", {"prompt": "a dwarf paladin", "cache": False},
                            bob(), request_id=bobs_id)
        [his] = answer["images"]
        assert answer["request_id"] == bobs_id
        assert his["key"].startswith(owner_folder("bob")), "Bob's image is in Bob's folder"
        assert_matches(his, read_stored(his))
        assert read_stored(hers) == before, "Alice's portrait is unchanged"
        assert hashlib.sha256(read_stored(hers)).hexdigest() == hers["sha256"]
    assert owner_folder("alice") != owner_folder("bob")
    assert len(stored_files(tmp_path / "images")) == 3, "three images, none replaced"


async def test_a_reused_request_id_after_its_record_expired_does_not_overwrite(
        image_service: Any, tmp_path: Path) -> None:
    """A second service on the same store, with a Redis prefix of its own, has no record of
    the first request: just what the ledger holds once RESULT_TTL_S has passed."""
    first_service: Service = await image_service()
    later_service: Service = await image_service()
    request_id = "6b0e0a52-3f7d-4c1e-9a55-2f1f0c3b8e11"
    first = await made(first_service, "item", {"prompt": "a silver key"}, alice(),
                       request_id=request_id)
    [old] = first["images"]
    before = read_stored(old)
    again = await made(later_service, "item", {"prompt": "a golden crown"}, alice(),
                       request_id=request_id)
    [new] = again["images"]
    assert new["key"] != old["key"] and new["key"].startswith(owner_folder("alice"))
    assert read_stored(old) == before and new["sha256"] != old["sha256"]
    assert_matches(new, read_stored(new))
    assert stored_files(tmp_path / "images") == sorted([old["key"], new["key"]])


async def test_a_ref_reads_only_its_callers_images_or_an_admins(
        image_service: Any, fake_images: FakeImages) -> None:
    service: Service = await image_service()
    portrait = await made(service, "portrait", {"prompt": "a tiefling warlock",
                                                "options": {"width": 256, "height": 256}},
                          alice())
    [hers] = portrait["images"]
    key = hers["key"]
    calls = len(fake_images.requests)

    missing_in_hers = f"{key.rsplit('/', 2)[0]}/{'0' * 32}/0.png"
    assert missing_in_hers.startswith(owner_folder("alice"))
    missing_in_his = f"{owner_folder('bob')}{'0' * 32}/0.png"
    answers = {ref: await refused(service, "enhance", {"source_image": {"ref": ref}}, bob())
               for ref in (key, missing_in_hers, missing_in_his)}
    assert {message.replace(ref, "<ref>") for ref, message in answers.items()} == {
        "no stored image of yours under <ref>"}, "a foreign key reads as a missing one"
    assert len(fake_images.requests) == calls, "no provider call for a refused ref"

    own = await made(service, "enhance", {"source_image": {"ref": key},
                                          "options": {"provider": "openai"}}, alice())
    by_admin = await made(service, "enhance", {"source_image": {"ref": key},
                                               "options": {"provider": "openai"}}, operator())
    for answer, owner in ((own, "alice"), (by_admin, "ops")):
        [image] = answer["images"]
        assert image["key"].startswith(owner_folder(owner)), "results go to the reader's folder"
        assert_matches(image, read_stored(image))
    sent = [call.files[0][2] for call in fake_images.of("openai")]
    assert [hashlib.sha256(data).hexdigest() for data in sent] == [hers["sha256"]] * 2, (
        "both read Alice's stored bytes")
