"""`llm-consumer inject` and `llm-consumer token`: a peer's request, and a peer's token."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.text import Text

from llm_consumer.auth import mint_token
from llm_consumer.bus.topology import build_topology
from llm_consumer.cli.common import Exit, console, err, fail, json_line, load, run
from llm_consumer.client import Exchange, NoConsumer, Watch, build_request, send_and_wait
from llm_consumer.events import catalog
from llm_consumer.settings import Settings

KNOWN_SCOPES = ("llm:content", "llm:image", "llm:admin")


def register(app: typer.Typer) -> None:
    app.command()(inject)
    app.command()(token)


def inject(
    kind: Annotated[str, typer.Argument(help="e.g. character.backstory, theme.apply, portrait")],
    context: Annotated[str | None, typer.Option(help="context as a JSON object")] = None,
    context_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                                      help="context from a JSON file")] = None,
    prompt: Annotated[str | None, typer.Option(help="prompt (image kinds)")] = None,
    messages_file: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="chat.completion: a JSON list of {role, content} turns, or an object with "
             "`messages` (and optional `response_schema`, `model`)")] = None,
    theme: Annotated[str | None, typer.Option(help="theme preset, e.g. dark-fantasy")] = None,
    stream: Annotated[bool, typer.Option(help="ask for content.progress events")] = False,
    cache: Annotated[bool, typer.Option(help="allow a cached result")] = True,
    batch: Annotated[bool, typer.Option(help="batch delivery: OpenAI's Batch API at half the "
                                             "price, answered within hours (raise --timeout)")
                     ] = False,
    priority: Annotated[int | None, typer.Option(min=0, max=9)] = None,
    token: Annotated[str | None, typer.Option(help="bearer token; default: minted from "
                                                   "SECRET_KEY")] = None,
    subject: Annotated[str | None, typer.Option(
        help="the request's CloudEvents subject, e.g. character/42 (copied to its results)",
    )] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for the result")] = 120,
    as_json: Annotated[bool, typer.Option("--json", help="print every event as one JSON "
                                                         "line")] = False,
) -> None:
    """Publish one request as a peer would and print the correlated result.

    The wait ends at the result, at the request's generation.failed on the hub (also when the
    service does not answer reply_to, e.g. for a bad token) or at its dead letter.
    """
    settings = load(need_secret=token is None)
    data: dict[str, Any] = {"stream": stream, "cache": cache}
    ctx = _load_context(context, context_file)
    if ctx is not None:
        data["context"] = ctx
    if prompt is not None:
        data["prompt"] = prompt
    if messages_file is not None:
        data |= _load_chat(messages_file)
    if theme is not None:
        data["theme"] = {"preset": theme}
    if batch:
        data["options"] = {"delivery": "batch"}
    request = build_request(kind, data, subject=subject)
    sys.exit(int(run(publish_and_show(settings, request, token, timeout, as_json=as_json,
                                      priority=priority), settings)))


def _load_context(context: str | None, context_file: Path | None) -> dict[str, Any] | None:
    try:
        raw = context_file.read_text("utf-8") if context_file else context
    except (OSError, UnicodeDecodeError) as error:
        fail(f"cannot read {context_file}: {error}", Exit.USAGE)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        fail(f"context is not valid JSON: {error}", Exit.USAGE)
    if not isinstance(value, dict):
        fail("context must be a JSON object", Exit.USAGE)
    return value


def _load_chat(path: Path) -> dict[str, Any]:
    """A chat request's fields from a messages file (the service validates them)."""
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        fail(f"cannot read {path} as JSON: {error}", Exit.USAGE)
    if isinstance(value, list):
        return {"messages": value}
    if not isinstance(value, dict) or not isinstance(value.get("messages"), list):
        fail(f"{path} must hold a list of turns or an object with a `messages` list",
             Exit.USAGE)
    return {k: value[k] for k in ("messages", "response_schema", "model") if k in value}


async def publish_and_show(settings: Settings, request: dict[str, Any], token: str | None,
                           timeout: float, *, as_json: bool, priority: int | None) -> Exit:
    """Publish, follow the request on the hub, render what comes back; the exit code."""
    token = token or mint_token(settings.secret, subject="cli", permissions=KNOWN_SCOPES,
                                audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                                ttl_s=min(int(timeout) + 60, settings.max_token_lifetime_s))
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    watch = Watch(dead_letter_exchange=topology.dead_letter_exchange,
                  work_queue=topology.work.name)
    streamed: list[str] = []

    def warn(line: str) -> None:
        err.print(Text("warning: ", style="yellow") + Text(line), soft_wrap=True)

    try:
        shown_on = err if as_json else console  # stdout stays JSON Lines
        with shown_on.status(f"waiting for the result of {request['id']}…") as status:
            def track(event: dict[str, Any]) -> None:
                if as_json:
                    json_line(event)
                if event["type"] == catalog.CONTENT_PROGRESS:
                    streamed.append(str(event["data"].get("delta", "")))
                    status.update(f"streaming: {len(''.join(streamed))} characters…")
                elif event["type"] == catalog.JOB_STATUS:
                    status.update(f"{request['id']}: {event['data'].get('state')}…")

            outcome = await send_and_wait(
                settings.message_hub_nodes, settings.hub_exchange, request, token=token,
                timeout_s=timeout, priority=priority, on_event=track, watch=watch,
                on_notice=warn)
    except NoConsumer as error:
        fail(str(error), Exit.NO_SERVICE)
    except TimeoutError:
        fail(f"no result for {request['id']} within {timeout:g}s", Exit.TIMEOUT)
    return _show_outcome(outcome, as_json=as_json)


def _show_outcome(outcome: Exchange, *, as_json: bool) -> Exit:
    final = outcome.final
    if final is None:  # ended by the dead letter alone
        letter = outcome.dead_letter
        assert letter is not None
        if as_json:
            json_line({"type": "dead_letter", "request_id": outcome.request["id"],
                       "code": letter.code, "reason": letter.reason})
        err.print(Text(f"error: {outcome.request['id']} was dead-lettered: {letter.code}: "
                       f"{' '.join(letter.reason.split())}", style="red"), soft_wrap=True)
        return Exit.FAILED
    if final["type"] == catalog.GENERATION_FAILED:
        error = final["data"].get("error", {})
        if not as_json:
            console.print(Panel(
                Text(f"{error.get('message')}\n\ncode: {error.get('code')}   retryable: "
                     f"{error.get('retryable')}   attempts: {final['data'].get('attempts')}"),
                title="[red]generation.failed", border_style="red"))
        err.print(Text(f"error: {outcome.request['id']} failed: {error.get('code')}: "
                       f"{' '.join(str(error.get('message')).split())}", style="red"),
                  soft_wrap=True)
        return Exit.FAILED
    if not as_json:
        _print_result(final)
    return Exit.OK


def _print_result(event: dict[str, Any]) -> None:
    data = event["data"]
    body = data.get("text") or json.dumps(
        {k: v for k, v in data.items() if k not in ("request_id", "token_usage")}, indent=2,
        ensure_ascii=False)
    usage = data.get("token_usage") or {}
    footer = (f"model {data.get('model_used')}   tokens {usage.get('total_tokens', '-')}"
              f"{' (estimated)' if usage.get('estimated') else ''}   "
              f"{data.get('duration_ms')} ms   cached {data.get('cached')}")
    console.print(Panel(Text(body), title=f"{event['type']} {data.get('kind', '')}",
                        subtitle=Text(footer), border_style="green"))


def token(
    subject: Annotated[str, typer.Option(help="sub claim")] = "cli",
    scope: Annotated[list[str] | None, typer.Option(
        help=f"permission (repeatable): {', '.join(KNOWN_SCOPES)}; default: all")] = None,
    ttl: Annotated[int, typer.Option(help="lifetime in seconds (at most "
                                          "MAX_TOKEN_LIFETIME_S)")] = 300,
) -> None:
    """Print a short-lived token signed with SECRET_KEY (for peers under test)."""
    unknown = sorted(set(scope or ()) - set(KNOWN_SCOPES))
    if unknown:
        fail(f"unknown scope {', '.join(map(repr, unknown))}; known: "
             f"{', '.join(KNOWN_SCOPES)}", Exit.USAGE)
    if not subject.strip():
        fail("--subject must not be empty", Exit.USAGE)
    settings = load(need_secret=True)
    if ttl <= 0 or ttl > settings.max_token_lifetime_s:
        fail(f"--ttl must be between 1 and {settings.max_token_lifetime_s} seconds "
             f"(MAX_TOKEN_LIFETIME_S), not {ttl}", Exit.USAGE)
    sys.stdout.write(mint_token(settings.secret, subject=subject,
                                permissions=scope or KNOWN_SCOPES, ttl_s=ttl,
                                audience=settings.jwt_audience, issuer=settings.jwt_issuer)
                     + "\n")
