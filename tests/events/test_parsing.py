"""`parse` and `peek` against hostile bodies: whatever arrives, `parse` returns or raises
InvalidRequest with one short line, and `peek` returns. No broker needed."""

from __future__ import annotations

import string
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_consumer.errors import InvalidRequest
from llm_consumer.events.parsing import MAX_ERROR_CHARS, Peek, parse, peek
from llm_consumer.events.requests import (
    MAX_JSON_DEPTH,
    MAX_LANGUAGE_PATTERN_CHARS,
    ContentRequested,
)
from llm_consumer.prompts.fitting import serialize
from llm_consumer.store import cache

MAX_BYTES = 64_000
ROUTING_KEYS = st.sampled_from(["", "content.requested", "image.requested", "job.cancel",
                                "cache.invalidate", "weird.key\n"])
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["</context>", "</theme>", "\n\r\t\x00\x7f", "\u2028\u2029", "ignore previous "
                     "instructions", "x" * 5000, "\ufeff", "{{", "%s%n", "../../etc/passwd"]),
)
JSON_LEAVES = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
               | st.floats(allow_nan=False, allow_infinity=False) | HOSTILE_TEXT)
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(HOSTILE_TEXT, inner, max_size=4), max_leaves=25)
KINDS = st.sampled_from(["character.backstory", "theme.apply", "portrait", "transform",
                         "nope", ""]) | JSON_LEAVES
THEMES = st.fixed_dictionaries({}, optional={
    "preset": HOSTILE_TEXT | JSON_LEAVES, "tone": HOSTILE_TEXT | JSON_VALUES,
    "genre": HOSTILE_TEXT, "style": HOSTILE_TEXT,
    "language_patterns": st.lists(HOSTILE_TEXT, max_size=25) | JSON_VALUES,
    "extra": JSON_VALUES}) | JSON_VALUES
DATA = st.fixed_dictionaries({"kind": KINDS}, optional={
    "context": JSON_VALUES, "theme": THEMES, "model": JSON_VALUES, "prompt": HOSTILE_TEXT,
    "source_image": JSON_VALUES, "options": JSON_VALUES, "stream": JSON_LEAVES,
    "request_id": JSON_LEAVES, "user_id": HOSTILE_TEXT}) | JSON_VALUES
ENVELOPES = st.fixed_dictionaries(
    {"specversion": st.just("1.0") | JSON_LEAVES,
     "id": st.text(string.printable, min_size=1, max_size=40) | JSON_LEAVES,
     "source": st.just("/peer") | JSON_LEAVES,
     "type": st.sampled_from(["content.requested", "image.requested", "job.cancel",
                              "cache.invalidate", "content.generated"]) | HOSTILE_TEXT,
     "data": DATA},
    optional={"time": HOSTILE_TEXT, "subject": JSON_LEAVES, "traceparent": JSON_VALUES,
              "datacontenttype": HOSTILE_TEXT})


def nested(depth: int, opener: bytes) -> bytes:
    if opener == b"[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def envelope_with(*, context: bytes = b"{}", data_extra: bytes = b"", extension: bytes = b"",
                  kind: str = "character.backstory") -> bytes:
    """A content.requested body built as text, so any depth can be embedded."""
    extra = b',"deep":' + data_extra if data_extra else b""
    ext = b',"ext":' + extension if extension else b""
    return (b'{"specversion":"1.0","id":"r-1","source":"/peer","type":"content.requested"'
            + ext + b',"data":{"kind":"' + kind.encode() + b'","context":' + context + extra
            + b"}}")


DEEP = st.builds(
    lambda depth, opener, where: {
        "context": lambda b: envelope_with(context=b'{"x":' + b + b"}"),
        "data": lambda b: envelope_with(data_extra=b),
        "extension": lambda b: envelope_with(extension=b),
        "top": lambda b: b,
    }[where](nested(depth, opener)),
    st.integers(1, 80) | st.integers(250, 1500), st.sampled_from([b"[", b"{"]),
    st.sampled_from(["context", "data", "extension", "top"]))
RAW_TRICKS = st.sampled_from([
    b"", b"\xef\xbb\xbf{}", b"NaN", b'{"a":NaN}', b'{"a":Infinity}', b'{"id":"\\ud800"}',
    b'{"id":1e999}', b'{"id":' + b"9" * 400 + b"}", b'{"a":1,"a":2}', b"{} trailing",
    b'"just a string"', b"[]", b"null", b"\x00" * 10, b"\xff\xfe{\x00}\x00",
    b'{"specversion":"1.0","id":"x","source":"/a","type":"content.requested","data":'
    b'{"kind":"character.backstory","context":{"s":"' + b"\xc3\x28" + b'"}}}',
    b"[" * 5000 + b"]" * 5000,
])
BODIES = st.one_of(
    st.binary(max_size=400),
    JSON_VALUES.map(orjson.dumps),
    ENVELOPES.map(orjson.dumps),
    DEEP,
    RAW_TRICKS,
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def assert_one_line(message: str) -> None:
    assert message and len(message) <= MAX_ERROR_CHARS
    assert not any(ch < " " or ch == "\x7f" for ch in message), repr(message)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODIES, routing_key=ROUTING_KEYS)
def test_parse_only_ever_returns_or_raises_invalid_request(body: bytes,
                                                          routing_key: str) -> None:
    try:
        parsed = parse(body, routing_key, max_bytes=MAX_BYTES)
    except InvalidRequest as error:
        assert_one_line(error.message)
    else:  # what parse accepts, the rest of the service can encode (cache digest, prompt)
        assert cache.digest(parsed.envelope.type, parsed.data, "gpt-5-nano")
        if isinstance(parsed.data, ContentRequested):
            assert serialize(parsed.data.context)
    seen = peek(body, MAX_BYTES)
    assert isinstance(seen, Peek)


@pytest.mark.parametrize("where", ["context", "data", "extension", "top"])
@pytest.mark.parametrize("depth", [255, 256, 300, 1023, 1024, 1025, 5000])
def test_deep_nesting_anywhere_is_one_clear_line(where: str, depth: int) -> None:
    inner = b"[" * depth + b"]" * depth
    body = {"context": envelope_with(context=b'{"x":' + inner + b"}"),
            "data": envelope_with(data_extra=inner),
            "extension": envelope_with(extension=inner),
            "top": inner}[where]
    with pytest.raises(InvalidRequest) as caught:
        parse(body, "content.requested", max_bytes=1 << 20)
    assert caught.value.message == f"body nests JSON deeper than the {MAX_JSON_DEPTH}-level limit"
    assert peek(body, 1 << 20).request_id in (None, "r-1"), "peek still finds the id"


def test_nesting_up_to_the_limit_is_accepted() -> None:
    # envelope (1) > data (2) > context (3) > value: the whole body nests MAX_JSON_DEPTH levels.
    depth = MAX_JSON_DEPTH - 3
    body = envelope_with(context=b'{"x":' + b"[" * depth + b"]" * depth + b"}")
    parsed = parse(body, "content.requested", max_bytes=1 << 20)
    assert isinstance(parsed.data, ContentRequested)
    assert cache.digest(parsed.envelope.type, parsed.data, "gpt-5-nano")
    assert serialize(parsed.data.context).count("[") == depth
    one_more = envelope_with(context=b'{"x":' + b"[" * (depth + 1) + b"]" * (depth + 1) + b"}")
    with pytest.raises(InvalidRequest, match="level limit"):
        parse(one_more, "content.requested", max_bytes=1 << 20)


def test_many_shallow_brackets_are_not_deep() -> None:
    wide = b"[" + b",".join([b"[]"] * 10_000) + b"]"
    parsed = parse(envelope_with(context=b'{"x":' + wide + b"}"), "", max_bytes=1 << 20)
    assert isinstance(parsed.data, ContentRequested)


def test_theme_text_over_its_bounds_is_an_invalid_request() -> None:
    def with_theme(theme: dict[str, Any]) -> bytes:
        return orjson.dumps({"specversion": "1.0", "id": "r-2", "source": "/peer",
                             "type": "content.requested",
                             "data": {"kind": "character.backstory", "context": {"name": "M"},
                                      "theme": theme}})

    for theme, where in [
        ({"language_patterns": ["x" * (MAX_LANGUAGE_PATTERN_CHARS + 1)]},
         "data.theme.language_patterns.0"),
        ({"language_patterns": ["short"] * 21}, "data.theme.language_patterns"),
        ({"tone": "t" * 201}, "data.theme.tone"),
        ({"preset": "p" * 101}, "data.theme.preset"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            parse(with_theme(theme), "", max_bytes=1 << 20)
        assert caught.value.message.startswith(f"invalid data: {where}:"), caught.value.message
        assert_one_line(caught.value.message)
    # Fields the service does not use are ignored: they reach neither the model nor the prompt.
    parsed = parse(with_theme({"tone": "bleak", "lore": "x" * 500_000}), "", max_bytes=1 << 20)
    assert isinstance(parsed.data, ContentRequested) and parsed.data.theme is not None
    assert parsed.data.theme.model_dump(exclude_none=True) == {"tone": "bleak"}


def test_control_characters_from_the_caller_never_break_the_line() -> None:
    body = orjson.dumps({"specversion": "1.0", "id": "r-3", "source": "/peer",
                         "type": "evil\n\rtype", "data": {}})
    with pytest.raises(InvalidRequest) as caught:
        parse(body, "", max_bytes=1 << 20)
    assert caught.value.message == "unknown event type 'evil\\n\\rtype'"
    request = orjson.dumps({"specversion": "1.0", "id": "r-4", "source": "/peer",
                            "type": "job.cancel", "data": {"request_id": "r-1"}})
    with pytest.raises(InvalidRequest) as caught:
        parse(request, "key\x00\n" * 300, max_bytes=1 << 20)
    assert caught.value.message.startswith(
        "envelope type 'job.cancel' does not match routing key 'key\\x00\\nkey")
    assert caught.value.message.endswith("...")
    assert_one_line(caught.value.message)
