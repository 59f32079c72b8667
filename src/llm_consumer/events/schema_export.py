"""`schemas/` as a pure function of the code: JSON Schemas, the AsyncAPI 3.0 document, an index.

`llm-consumer schemas` writes the files; `--check` and tests/events/test_schemas.py report drift.
`schemas/examples/` is hand-written (the test validates it) and is neither generated nor stale.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import JsonSchemaMode

from llm_consumer.bus.topology import QueueSpec, Topology, build_topology
from llm_consumer.events.catalog import (
    CONTENT_PROGRESS,
    EVENTS,
    JOB_STATUS,
    THEME_ANALYZED,
    VALIDATION_COMPLETED,
    EventSpec,
)
from llm_consumer.events.content import CONTENT_MODELS
from llm_consumer.events.envelope import CLOUDEVENTS_CONTENT_TYPE, Envelope
from llm_consumer.events.requests import ContentKind

Json = dict[str, Any]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "urn:llm-consumer:v1:"
PREFIX, HUB = "llm.", "hub"
INBOUND = frozenset({"request", "control"})
# Kinds answered by an event of their own instead of content.generated.
OWN_RESULT: dict[ContentKind, str] = {
    ContentKind.THEME_ANALYZE: THEME_ANALYZED,
    ContentKind.CONTENT_VALIDATE: VALIDATION_COMPLETED,
}
GENERATED_DIRS = ("events/", "content/")
HAND_WRITTEN = ("examples/",)
AMQP = {"bindingVersion": "0.3.0"}


def _dump_json(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _published_shape(node: Any) -> Any:
    """What `exclude_none` puts on the wire: no null branches, and defaulted fields present."""
    if isinstance(node, list):
        return [_published_shape(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _published_shape(value) for key, value in node.items()}
    variants = out.get("anyOf")
    if isinstance(variants, list) and {"type": "null"} in variants:
        rest = [v for v in out.pop("anyOf") if v != {"type": "null"}]
        if "default" in out and out["default"] is None:
            del out["default"]
        out = {**rest[0], **out} if len(rest) == 1 else {**out, "anyOf": rest}
    props = out.get("properties")
    if out.get("type") == "object" and isinstance(props, dict):
        required = list(out.get("required", []))
        required += [n for n, p in props.items() if "default" in p and n not in required]
        if required:
            out["required"] = required
    return out


def event_schema(spec: EventSpec) -> Json:
    """The whole envelope of one event type, its `data` model hoisted into `$defs`."""
    inbound = spec.direction in INBOUND
    mode: JsonSchemaMode = "validation" if inbound else "serialization"
    envelope = Envelope.model_json_schema(mode=mode)
    data = spec.model.model_json_schema(mode=mode)
    defs: Json = envelope.pop("$defs", {})
    for name, sub in {**data.pop("$defs", {}), spec.model.__name__: data}.items():
        if defs.setdefault(name, sub) != sub:
            raise ValueError(f"{spec.type}: two different schemas named {name}")
    envelope.pop("title", None)
    envelope["properties"]["type"] = {"const": spec.type, "description": "equals the routing key"}
    envelope["properties"]["data"] = {"$ref": f"#/$defs/{spec.model.__name__}"}
    if not inbound:  # the service stamps these on everything it publishes
        envelope["required"] += ["time", "datacontenttype"]
    body = {**envelope, "$defs": defs}
    return {"$schema": DIALECT, "$id": f"{ID_BASE}events:{spec.type}", "title": spec.type,
            **(body if inbound else _published_shape(body)), "description": spec.summary}


def content_kinds() -> list[ContentKind]:
    """Kinds whose answer travels as `content` inside content.generated."""
    return [kind for kind in ContentKind if kind not in OWN_RESULT]


def content_schema(kind: ContentKind) -> Json:
    model = CONTENT_MODELS[kind]
    return {"$schema": DIALECT, "$id": f"{ID_BASE}content:{kind.value}",
            **model.model_json_schema(mode="serialization"), "title": kind.value,
            "description": f"`data.content` of content.generated, kind {kind.value}."}


def _camel(*parts: str) -> str:
    words = [w for part in parts for w in re.split(r"[._\-]", part) if w]
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])


def _args_text(queue: QueueSpec) -> str:
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in queue.arguments.items())
    binds = ", ".join(f"{ex}:{key}" for ex, key in queue.bindings)
    return "; ".join(p for p in (args and f"arguments: {args}", binds and f"bound: {binds}") if p)


def _refs(messages: list[str]) -> Json:
    return {m: {"$ref": f"#/components/messages/{m}"} for m in messages}


def _exchange(name: str, kind: str = "topic") -> Json:
    return {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": "/"}


def _queue(queue: QueueSpec, messages: list[str], exclusive: bool = False) -> Json:
    amqp_queue = {"name": queue.name, "durable": not exclusive, "exclusive": exclusive,
                  "autoDelete": exclusive, "vhost": "/"}
    channel: Json = {
        "address": queue.name,
        "description": "\n".join(p for p in (queue.purpose + ".", _args_text(queue)) if p),
        "messages": _refs(messages),
        "bindings": {"amqp": {"is": "queue", "queue": amqp_queue, **AMQP}},
    }
    return channel | ({"x-arguments": dict(queue.arguments)} if queue.arguments else {})


def _channels(topo: Topology) -> Json:
    of = {d: [t for t, s in EVENTS.items() if s.direction == d]
          for d in ("request", "control", "result", "notice")}
    hub = {"amqp": {"is": "routingKey", "exchange": _exchange(topo.hub_exchange), **AMQP}}
    channels: Json = {t: {
        "address": t, "title": t,
        "description": f"{s.summary} Topic exchange `{topo.hub_exchange}`, routing key `{t}`.",
        "messages": _refs([t]), "bindings": hub,
    } for t, s in EVENTS.items()}
    channels["replyTo"] = {
        "address": "{replyTo}",
        "description": "A copy of each result, progress and job-status event of a request "
                       "that set `reply_to` (and passed authentication), sent to the default "
                       "exchange with that routing key.",
        "messages": _refs(of["result"] + [CONTENT_PROGRESS, JOB_STATUS]),
        "parameters": {"replyTo": {"description": "the request's AMQP `reply_to` property"}},
        "bindings": {"amqp": {"is": "routingKey", "exchange": {"type": "default", "vhost": "/"},
                              **AMQP}},
    }
    channels["work"] = _queue(topo.work, of["request"])
    channels |= {f"delay{step}s": _queue(queue, of["request"]) for step, queue in topo.delays}
    channels["deadLetterExchange"] = {
        "address": None,
        "description": f"`{topo.dead_letter_exchange}`: dead letters, original routing key.",
        "messages": _refs(["deadLetter"]),
        "bindings": {"amqp": {"is": "routingKey",
                              "exchange": _exchange(topo.dead_letter_exchange), **AMQP}},
    }
    channels["dead"] = _queue(topo.dead, ["deadLetter"])
    channels["unrouted"] = _queue(topo.unrouted, of["result"] + of["notice"])
    channels["control"] = _queue(topo.control_queue("{instance}"), of["control"], True) | {
        "parameters": {"instance": {"description": "the id of one running instance"}}}
    return channels


def _operation(action: str, channel: str, messages: list[str], summary: str) -> Json:
    binding = {"ack": True} if action == "receive" else {"deliveryMode": 2, "timestamp": True}
    return {"action": action, "channel": {"$ref": f"#/channels/{channel}"}, "summary": summary,
            "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages],
            "bindings": {"amqp": binding | AMQP}}


def _operations() -> Json:
    ops: Json = {}
    for t, spec in EVENTS.items():
        action = "receive" if spec.direction in INBOUND else "send"
        ops[_camel(action, t)] = _operation(action, t, [t], spec.summary)
    results = [t for t, s in EVENTS.items() if s.direction == "result"]
    ops["sendReply"] = _operation("send", "replyTo", results,
                                  "Copy each result to reply_to via the default exchange.")
    return ops


def _message(event_type: str, spec: EventSpec) -> Json:
    message: Json = {
        "name": event_type, "title": event_type, "summary": spec.summary,
        "contentType": CLOUDEVENTS_CONTENT_TYPE,
        "correlationId": {"$ref": "#/components/correlationIds/correlationid"},
        "payload": {"$ref": f"./events/{event_type}.json"},
        "bindings": {"amqp": {"messageType": event_type} | AMQP},
    }
    if spec.direction in INBOUND:
        message["headers"] = {"$ref": f"#/components/schemas/{spec.direction}Headers"}
        message["description"] = (f"Needs the permission {permission_text(spec.permission)}. "
                                  "AMQP properties: `priority` 0-9 (9 first), `reply_to` (a "
                                  "reply queue the caller owns: see the README of schemas/).")
    return message


def permission_text(permission: str | tuple[str, ...] | None) -> str:
    if permission is None:
        return "-"
    wanted = (permission,) if isinstance(permission, str) else permission
    return " or ".join(f"`{p}`" for p in wanted)


def _components() -> Json:
    messages = {t: _message(t, s) for t, s in EVENTS.items()}
    messages["deadLetter"] = {
        "name": "deadLetter", "title": "dead letter",
        "summary": "The original message, unchanged, with the reason in its headers.",
        "headers": {"$ref": "#/components/schemas/deadLetterHeaders"},
        "payload": {"description": "the original body (possibly not JSON)"},
    }
    auth = {"type": "string", "pattern": r"^Bearer \S+$", "description":
            "HS256 JWT (exp required, at most MAX_TOKEN_LIFETIME_S after iat); exactly one "
            "authorization header in any case; scope/permissions: llm:content, llm:image, "
            "llm:admin"}
    attempt = {"type": "integer", "minimum": 0,
               "description": "retry count, set and signed (x-llm-signature) by the service on "
                              "the copies it re-queues; ignored on any other message"}
    deferred = {"type": "number", "minimum": 0, "description":
                "seconds waited in delay queues for rate limits (deferrals keep x-attempt)"}

    def headers(props: Json, required: tuple[str, ...] = ("authorization",)) -> Json:
        return {"type": "object", "required": list(required), "properties": props}

    return {
        "messages": messages,
        "schemas": {
            "requestHeaders": headers({
                "authorization": auth, "x-attempt": attempt, "x-deferred-s": deferred,
                "x-provider-calls": {"type": "integer", "minimum": 0, "description":
                                     "provider calls paid by earlier attempts (service copies)"},
                "x-llm-signature": {"type": "string", "description":
                                    "HMAC of the service's retry state; callers never set it"}}),
            "controlHeaders": headers({"authorization": auth}),
            "deadLetterHeaders": headers({
                "x-error-code": {"type": "string", "description": "e.g. invalid_request"},
                "x-error-message": {"type": "string"}, "x-attempt": attempt,
            }, ("x-error-code", "x-error-message")),
        },
        "correlationIds": {"correlationid": {
            "description": "CloudEvents `correlationid`: copied from the request (default: its id)",
            "location": "$message.payload#/correlationid"}},
    }


ASYNCAPI_DESCRIPTION = """\
LLM service of the D&D character-creator platform on the Message Hub (RabbitMQ, AMQP 0-9-1).
Every event is a CloudEvents 1.0 message in structured mode (`application/cloudevents+json`),
published to the topic exchange `hub` with routing key = `type`.
Requests and control events carry the AMQP header `authorization: Bearer <JWT>` (HS256, `exp`
required); scope `llm:content` allows content.requested, `llm:image` image.requested, `llm:admin`
the control events (`job.cancel` also any of the request scopes, for the caller's own requests).
A request is named by its token's `sub`, its `source` and its `id`. Requests may set
`priority` 0-9 (9 first) and `reply_to` (each result is also sent to the default exchange with
that routing key) when it names a queue the caller can own: `amq.gen-*`, direct reply-to, or a
configured pattern; never a queue of the service.
Transient failures are retried through delay queues, counted in the `x-attempt` header; rejected
or exhausted messages are dead-lettered with `x-error-code` and `x-error-message` headers.
"""


def asyncapi() -> Json:
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "llm-consumer", "version": version("llm-consumer"),
                 "description": ASYNCAPI_DESCRIPTION},
        "defaultContentType": CLOUDEVENTS_CONTENT_TYPE,
        "servers": {"hub": {"host": "localhost:5672", "protocol": "amqp",
                            "protocolVersion": "0.9.1",
                            "description": "RabbitMQ; URL from MESSAGE_HUB_URL"}},
        "channels": _channels(build_topology(PREFIX, HUB)),
        "operations": _operations(),
        "components": _components(),
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def _readme(topo: Topology) -> str:
    def row(*cells: str) -> str:
        return "| " + " | ".join(cells) + " |"

    def link(path: str) -> str:
        return f"[{path}]({path})"

    events = [row(f"`{t}`", s.direction, permission_text(s.permission),
                  link(f"events/{t}.json"), s.summary) for t, s in EVENTS.items()]
    kinds = [row(f"`{k.value}`", "`content.generated`",
                 f"`content` as in {link(f'content/{k.value}.json')}") for k in content_kinds()]
    kinds += [row(f"`{k.value}`", f"`{t}`", f"`data` as in {link(f'events/{t}.json')}")
              for k, t in OWN_RESULT.items()]
    queues = [row(f"`{q.name}`", _args_text(q) or "-", q.purpose)
              for q in (*topo.queues, topo.control_queue("{instance}"))]
    return README.format(events="\n".join(events), kinds="\n".join(kinds),
                         queues="\n".join(queues), work=topo.work.name, dead=topo.dead.name,
                         unrouted=topo.unrouted.name)


README = """\
# Wire contract of llm-consumer (generated)

Generated from `src/llm_consumer/events/` and `bus/topology.py`: do not edit by hand.
Regenerate with `llm-consumer schemas`; `llm-consumer schemas --check` and
`tests/events/test_schemas.py` fail when these files drift from the code.

- `events/<type>.json`: JSON Schema (draft 2020-12) of the whole CloudEvents envelope, `data`
  included: for requests what the service accepts, for published events what it sends.
- `content/<kind>.json`: the shape of `data.content` in `content.generated`, per kind.
- `asyncapi.yaml`: AsyncAPI 3.0.0: hub channels, the service's own queues, operations, messages.
- `examples/<type>.json` (hand-written, checked by the test): one valid request of each type.

## Event types

| type | direction | permission | schema | summary |
| --- | --- | --- | --- | --- |
{events}

`request` and `control` events are consumed; they need the AMQP header `authorization: Bearer
<JWT>` granting the permission. `result` events end a request; `notice` events inform.

## Content kinds (`data.kind` of `content.requested`)

| kind | result event | shape |
| --- | --- | --- |
{kinds}

## Queues the service declares (prefix `llm.`, hub exchange `hub`)

| queue | arguments and bindings | purpose |
| --- | --- | --- |
{queues}

## Where the contract was silent, and what we chose

- Requests ignore unknown fields in `data`; unknown envelope attributes (CloudEvents
  extensions) are accepted and kept.
- A published event omits null fields (an absent field means none); fields with a default are
  always present, and so are `time` and `datacontenttype`.
- Retries wait in fixed-TTL delay queues, then return to `{work}` through the default exchange,
  not the hub, so other hub subscribers never see a retry; `x-attempt` counts them.
- A request over a rate limit is deferred, not failed: `job.status` `deferred` with the same
  `attempt`, a delay-queue trip (`x-deferred-s` adds up the wait), and `generation.failed`
  `rate_limited` only past RATE_LIMIT_MAX_WAIT_S. Answers from the cache or from an identical
  request in flight at the same time have `cached: true`. `job.status` `running` is sent when a
  request waits (on its provider, an identical request's leader or a rate limit); a cache hit is
  answered at once and its job goes straight to `completed`, without `running`. `rate_limit.*`
  notices carry no `request_id`: they are about a scope and key, at most one per second for
  each.
- Results that no queue can take are kept in `{unrouted}` (bounded, oldest dropped first).
- Failures after the attempt limit, and rejected messages, go to `{dead}` with the headers
  `x-error-code` and `x-error-message`.
- A request is identified by its caller: the token's `sub`, the event's `source` and its `id`.
  Idempotency (a re-sent request gets its stored result), job state and `job.cancel` work in
  that scope; the same `id` from another caller is a different request, never answered with
  another caller's result. `job.cancel` takes optional `source` (default: the cancel event's
  own) and `subject` (default: the sender's `sub`; another one needs `llm:admin`).
- `reply_to` gets a copy of the result events and of the request's `content.progress` and
  `job.status` notices, when it names a reply queue the caller can own: a server-named queue
  (`amq.gen-*`), direct reply-to (`amq.rabbitmq.reply-to...`), or a name matching the
  operator's REPLY_TO_PATTERN; never a queue under the service's prefix. Any other `reply_to`
  makes the request `invalid_request` (`generation.failed` on the hub only, dead-lettered). A
  message whose token or permission fails never gets a `reply_to` delivery.
- One message causes at most MAX_PROVIDER_CALLS_PER_REQUEST provider calls (default 16) across
  all of its attempts; past that it ends in `generation.failed` `quota_exhausted`. A request may
  name only offered models (`model.name`, `options.model`): the configured ones and
  ALLOWED_MODELS; any other is `invalid_request`.
- Trace context (v1.1): a request's `traceparent` / `tracestate` (CloudEvents extension
  attributes, or AMQP headers of the same names) continue into every event published for it, as
  extension attributes with the caller's trace id, and into its provider calls; a malformed
  `traceparent` is ignored.
- Image answers are not shared across callers through the cache (they name stored images only
  their owner may read); text answers are (the same input gives the same output).
- Results are published with `mandatory`; notices (progress, job status, heartbeats) nobody
  is bound to are not kept.
- The service enforces rules these schemas cannot state (a breach gets `generation.failed`
  `invalid_request`): `source_image` holds exactly one of `url`, `data`, `ref`; `portrait`,
  `location` and `item` need `prompt` or `context`; the other image kinds need `source_image`;
  the `messages` of `chat.completion` end with a `user` turn; `messages`, `response_schema` and
  `model.stop` belong to `chat.completion` only, and it takes no `context` or `theme`;
  `response_schema` is a valid JSON Schema of an object, at most 16,000 bytes as JSON.
- `chat.completion` answers in `content.generated` with `content` the assistant message
  (`role`, `content`, and `parsed` for a `response_schema` answer) and `text` its text. The
  caller's turns follow the service's own system message (the platform's rules); a caller's
  `system` turn is the assistant's persona. A history over the model's window loses its oldest
  user/assistant turns first; system turns and the last user turn are always kept.
- Batch delivery (`options.delivery: "batch"` on a structured text kind, OpenAI provider):
  admitted as any request, then `job.status` `batched` and the message acked; when the
  provider's batch ends, the usual result event (or `generation.failed`) with `job.status`
  `completed` (or `failed`), to the hub and `reply_to`, once per request. A batch that expired
  before the request ran: `generation.failed` `timeout`, `retryable: true` (sent again, it is
  batched again); an answer that does not match its schema is not repaired (`internal`).
  `job.cancel` of a batched request answers at once (`cancelled`) and drops its answer. A
  re-sent request gets `batched` until the answer is there, then the answer.
"""


def render_schemas() -> dict[str, str]:
    """Relative path -> file text of every generated file under `schemas/`."""
    files = {f"events/{t}.json": _dump_json(event_schema(s)) for t, s in EVENTS.items()}
    files |= {f"content/{k.value}.json": _dump_json(content_schema(k)) for k in content_kinds()}
    files["asyncapi.yaml"] = yaml.dump(asyncapi(), Dumper=_Dumper, sort_keys=False,
                                       allow_unicode=True, width=100)
    files["README.md"] = _readme(build_topology(PREFIX, HUB))
    return dict(sorted(files.items()))


def _extra(out_dir: Path, expected: dict[str, str]) -> list[str]:
    if not out_dir.is_dir():
        return []
    found = (p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    return sorted(r for r in found if r not in expected and not r.startswith(HAND_WRITTEN))


def write_schemas(out_dir: Path) -> list[Path]:
    """Write the files; returns those created or changed. Stale generated files are removed."""
    expected = render_schemas()
    written: list[Path] = []
    for rel, text in expected.items():
        path = out_dir / rel
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    for rel in _extra(out_dir, expected):
        if rel.startswith(GENERATED_DIRS) and rel.endswith(".json"):
            (out_dir / rel).unlink()
    return written


def check_schemas(out_dir: Path) -> list[str]:
    """Relative paths that are missing, differ from the code, or are stale extra files."""
    expected = render_schemas()
    drift = [rel for rel, text in expected.items()
             if not (out_dir / rel).is_file()
             or (out_dir / rel).read_text(encoding="utf-8") != text]
    return sorted(drift + _extra(out_dir, expected))
