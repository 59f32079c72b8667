"""`schemas/` is what the code generates, and what it documents is valid for the models too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from llm_consumer.bus.topology import build_topology
from llm_consumer.events.catalog import CONSUMED_TYPES, EVENTS
from llm_consumer.events.content import CONTENT_MODELS
from llm_consumer.events.envelope import Envelope
from llm_consumer.events.requests import ContentKind
from llm_consumer.events.schema_export import (
    HUB,
    OWN_RESULT,
    PREFIX,
    check_schemas,
    content_kinds,
    render_schemas,
    write_schemas,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def load_json(rel: str) -> Any:
    return json.loads((SCHEMAS / rel).read_text(encoding="utf-8"))


def validator(rel: str) -> Draft202012Validator:
    schema = load_json(rel)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


# --- drift -------------------------------------------------------------------------------


def test_schemas_match_the_code() -> None:
    drift = check_schemas(SCHEMAS)
    assert drift == [], (
        f"schemas/ is out of date with the models ({', '.join(drift)}): "
        "run `llm-consumer schemas` and commit the result"
    )


def test_rendering_is_deterministic() -> None:
    first, second = render_schemas(), render_schemas()
    assert first == second
    assert list(first) == sorted(first)
    assert all(text.endswith("\n") and not text.endswith("\n\n") for text in first.values())


def test_check_reports_missing_changed_and_stale_files(tmp_path: Path) -> None:
    assert "README.md" in check_schemas(tmp_path)
    assert len(write_schemas(tmp_path)) == len(render_schemas())
    assert check_schemas(tmp_path) == []
    assert write_schemas(tmp_path) == []  # nothing changed, nothing rewritten

    (tmp_path / "events" / "job.status.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "events" / "old.event.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "job.cancel.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "asyncapi.yaml").unlink()
    assert check_schemas(tmp_path) == ["asyncapi.yaml", "events/job.status.json",
                                       "events/old.event.json"]

    write_schemas(tmp_path)
    assert check_schemas(tmp_path) == []
    assert not (tmp_path / "events" / "old.event.json").exists()
    assert (tmp_path / "examples" / "job.cancel.json").exists()  # hand-written, kept


def test_every_generated_json_schema_is_valid_2020_12() -> None:
    for rel in render_schemas():
        if rel.endswith(".json"):
            Draft202012Validator.check_schema(load_json(rel))


# --- examples ------------------------------------------------------------------------------


EXAMPLES = sorted(p.name for p in (SCHEMAS / "examples").glob("*.json"))


def test_there_is_one_example_per_consumed_type() -> None:
    # `<type>.json` for each type; further forms of a type as `<type>.<form>.json`
    found = {p.name.removesuffix(".json") for p in (SCHEMAS / "examples").glob("*.json")}
    assert found & set(CONSUMED_TYPES) == set(CONSUMED_TYPES)
    assert {load_json(f"examples/{name}")["type"] for name in EXAMPLES} == set(CONSUMED_TYPES)
    assert "content.requested.chat.completion.json" in EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_valid_for_the_model_and_the_schema(name: str) -> None:
    body = load_json(f"examples/{name}")
    event_type = body["type"]
    assert name.startswith(f"{event_type}.")
    envelope = Envelope.model_validate(body)
    assert envelope.type == event_type
    EVENTS[event_type].model.model_validate(envelope.data)
    errors = list(validator(f"events/{event_type}.json").iter_errors(body))
    assert errors == [], [e.message for e in errors]


@pytest.mark.parametrize(
    ("event_type", "change"),
    [
        ("content.requested", {"type": "image.requested"}),
        ("content.requested", {"data": {"kind": "character.poem", "context": {}}}),
        ("content.requested", {"data": {"kind": "world.location"}}),
        ("content.requested", {"data": {"kind": "chat.completion"}}),
        ("content.requested", {"data": {"kind": "chat.completion", "messages": []}}),
        ("content.requested", {"data": {"kind": "chat.completion", "messages": [
            {"role": "tool", "content": "hi"}]}}),
        ("image.requested", {"data": {"kind": "item", "options": {"count": 9}}}),
        ("job.cancel", {"specversion": "0.3"}),
        ("cache.invalidate", {"data": None}),
    ],
)
def test_schema_and_model_reject_the_same_bad_request(
    event_type: str, change: dict[str, Any]
) -> None:
    body = load_json(f"examples/{event_type}.json") | change
    assert not validator(f"events/{event_type}.json").is_valid(body)
    assert not models_accept(event_type, body)


def models_accept(event_type: str, body: dict[str, Any]) -> bool:
    try:
        envelope = Envelope.model_validate(body)
        EVENTS[event_type].model.model_validate(envelope.data)
    except ValidationError:
        return False
    return envelope.type == event_type


# --- AsyncAPI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    doc = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_asyncapi_has_a_channel_for_every_event_and_queue(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    assert asyncapi["info"]["title"] == "llm-consumer"
    assert asyncapi["servers"]["hub"]["protocol"] == "amqp"
    addresses = {channel["address"] for channel in asyncapi["channels"].values()}
    topology = build_topology(PREFIX, HUB)
    assert set(EVENTS) <= addresses
    assert {topology.work.name, topology.dead.name, topology.unrouted.name} <= addresses
    assert {queue.name for _, queue in topology.delays} <= addresses
    assert f"{PREFIX}requests.control.{{instance}}" in addresses
    dead_letter = [c for c in asyncapi["channels"].values()
                   if c["bindings"]["amqp"].get("exchange", {}).get("name")
                   == topology.dead_letter_exchange]
    assert dead_letter, "no channel for the dead-letter exchange"


def test_asyncapi_operations_match_the_catalog(asyncapi: dict[str, Any]) -> None:
    actions: dict[str, set[str]] = {}
    for operation in asyncapi["operations"].values():
        channel = operation["channel"]["$ref"].removeprefix("#/channels/")
        actions.setdefault(channel, set()).add(operation["action"])
    for event_type in EVENTS:
        expected = "receive" if event_type in CONSUMED_TYPES else "send"
        assert actions[event_type] == {expected}, event_type
    assert actions["replyTo"] == {"send"}
    components = asyncapi["components"]
    message = components["messages"]["content.requested"]
    assert message["contentType"] == "application/cloudevents+json"
    assert message["payload"] == {"$ref": "./events/content.requested.json"}
    assert components["correlationIds"]["correlationid"]["location"] == (
        "$message.payload#/correlationid"
    )
    assert message["headers"] == {"$ref": "#/components/schemas/requestHeaders"}
    assert set(components["schemas"]["requestHeaders"]["properties"]) == {
        "authorization", "x-attempt", "x-deferred-s", "x-provider-calls", "x-llm-signature"}


def test_asyncapi_references_resolve(asyncapi: dict[str, Any]) -> None:
    for ref in refs(asyncapi):
        if ref.startswith("./"):
            assert (SCHEMAS / ref).is_file(), ref
            continue
        node: Any = asyncapi
        for part in ref.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        assert isinstance(node, dict), ref


# --- content -------------------------------------------------------------------------------


def sample(annotation: Any, metadata: list[Any]) -> Any:
    """The smallest value a field accepts, read from its type and constraints."""
    size = max([1, *(m.min_length for m in metadata if hasattr(m, "min_length"))])
    low = next((m.ge for m in metadata if hasattr(m, "ge")), 1)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return minimal(annotation).model_dump(mode="json")
    if get_origin(annotation) is list:
        return [sample(get_args(annotation)[0], []) for _ in range(size)]
    if get_origin(annotation) is Literal:
        return get_args(annotation)[0]
    if annotation is bool:
        return True
    if annotation in (int, float):
        return low
    if annotation is str:
        return "x" * size
    raise AssertionError(f"no sample for {annotation!r}")


def minimal(model: type[BaseModel]) -> BaseModel:
    return model.model_validate({
        name: sample(field.annotation, field.metadata)
        for name, field in model.model_fields.items()
        if field.is_required()
    })


def test_content_files_cover_every_kind_but_those_with_their_own_result() -> None:
    found = {p.name.removesuffix(".json") for p in (SCHEMAS / "content").glob("*.json")}
    assert found == {kind.value for kind in content_kinds()}
    assert found | {kind.value for kind in OWN_RESULT} == {kind.value for kind in ContentKind}
    assert set(CONTENT_MODELS) == set(ContentKind)


@pytest.mark.parametrize("kind", content_kinds(), ids=str)
def test_minimal_content_validates_against_its_schema(kind: ContentKind) -> None:
    instance = minimal(CONTENT_MODELS[kind])
    check = validator(f"content/{kind.value}.json")
    errors = list(check.iter_errors(instance.model_dump(mode="json")))
    assert errors == [], [e.message for e in errors]
    assert not check.is_valid({**instance.model_dump(mode="json"), "unexpected": 1})
