"""`llm-consumer queue {status,prioritize}`: ask the running service, as a peer would, over the
hub (bus/queue_index.py sends the control event and waits for its answer); this module parses
and renders."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from llm_consumer.auth import mint_token
from llm_consumer.bus.queue_index import NoService, ask
from llm_consumer.cli.common import Exit, console, fail, json_line, load, run, show_rows
from llm_consumer.cli.requests import KNOWN_SCOPES
from llm_consumer.events import catalog
from llm_consumer.settings import Settings

queue_app = typer.Typer(no_args_is_help=True, help=(
    "Queue depth by priority, in flight, deferred, where a request is; move a queued request "
    "to another priority."))

TokenOpt = Annotated[str | None, typer.Option(
    help="bearer token; default: minted from SECRET_KEY (subject cli, every scope: llm:admin "
         "sees every caller's requests)")]
SourceOpt = Annotated[str, typer.Option(
    help="the request's CloudEvents source (inject's default)")]
TimeoutOpt = Annotated[float, typer.Option(min=0.1, help="seconds to wait for the answer")]
JsonOpt = Annotated[bool, typer.Option("--json", help="the answer event as one JSON line")]


@queue_app.command("status")
def status(request_id: Annotated[str | None, typer.Option(
               "--request-id", help="also say where this request is")] = None,
           source: SourceOpt = "/llm-consumer-cli", token: TokenOpt = None,
           timeout: TimeoutOpt = 10, as_json: JsonOpt = False) -> None:
    """Queued requests per priority, requests in flight, deferred and dead letters."""
    settings = load(need_secret=token is None)
    data: dict[str, Any] = {"source": source} if request_id else {}
    if request_id:
        data["request_id"] = request_id
    event = _ask(settings, catalog.QUEUE_STATUS, data, token, timeout)
    if as_json:
        json_line(event)
        return
    _show_status(event["data"])


@queue_app.command("prioritize")
def prioritize(request_id: Annotated[str, typer.Argument(help="the queued request's id")],
               priority: Annotated[int, typer.Argument(min=0, max=9, help="0-9, 9 first")],
               source: SourceOpt = "/llm-consumer-cli",
               subject: Annotated[str | None, typer.Option(
                   help="the requester's token sub (llm:admin only)")] = None,
               token: TokenOpt = None, timeout: TimeoutOpt = 10,
               as_json: JsonOpt = False) -> None:
    """Move a queued request to another priority; it still runs once (exit 1 unless
    accepted)."""
    settings = load(need_secret=token is None)
    data: dict[str, Any] = {"request_id": request_id, "priority": priority, "source": source}
    if subject:
        data["subject"] = subject
    event = _ask(settings, catalog.JOB_PRIORITIZE, data, token, timeout)
    answer = event["data"]
    if as_json:
        json_line(event)
    outcome = answer.get("outcome")
    if outcome != "accepted":
        fail(f"{request_id} was not moved: {outcome}", Exit.FAILED)
    if not as_json:
        console.print(Text(f"{request_id}: priority {answer.get('previous_priority')} -> "
                           f"{priority}, position now {_shown(answer.get('position'))}"))


def _ask(settings: Settings, event_type: str, data: dict[str, Any], token: str | None,
         timeout: float) -> dict[str, Any]:
    bearer = token or mint_token(settings.secret, subject="cli", permissions=KNOWN_SCOPES,
                                 audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                                 ttl_s=min(int(timeout) + 60, settings.max_token_lifetime_s))
    try:
        event = run(ask(settings.message_hub_nodes, settings.hub_exchange, event_type, data,
                        token=bearer, timeout_s=timeout), settings)
    except NoService as error:
        fail(str(error), Exit.NO_SERVICE)
    except TimeoutError:
        fail(f"no answer to {event_type} within {timeout:g}s", Exit.TIMEOUT)
    if event.get("type") == catalog.GENERATION_FAILED:
        refusal = event["data"].get("error", {})
        fail(f"{event_type} refused: {refusal.get('code')}: {refusal.get('message')}",
             Exit.FAILED)
    return event


def _shown(value: object) -> str:
    return "-" if value is None else str(value)


def _show_status(data: dict[str, Any]) -> None:
    scope = "every caller's" if data.get("scope") == "all" else "your"
    bands = data.get("bands") or []
    console.print(Text(f"queued, {scope} requests: {data.get('queued')}"))
    show_rows("by priority", ("priority", "queued"),
              [[str(b["priority"]), str(b["queued"])] for b in bands] or [["-", "0"]],
              right=frozenset({"priority", "queued"}))
    broker = data.get("broker", {})
    deferred = ", ".join(f"{n} in {s}s" for s, n in broker.get("deferred_by_delay_s", {}).items())
    lines = [
        f"in flight: {data.get('in_flight')}" + "".join(
            f"   {name}: {n}" for name, n in sorted(data.get("in_flight_by_instance", {}).items())),
        f"work queue (broker, every caller): {broker.get('work_queue')}",
        f"deferred: {broker.get('deferred')}" + (f" ({deferred}; none waits more than "
                                                 f"{broker.get('oldest_deferred_max_s')}s)"
                                                 if deferred else ""),
        f"dead letters: {broker.get('dead_letters')}",
    ]
    if data.get("index") != "ok":
        lines.append("index: degraded (Redis did not answer; its counts are 0)")
    for line in lines:
        console.print(Text(line))
    request = data.get("request")
    if request:
        where = (f"position {_shown(request.get('position'))} (ahead: "
                 f"{_shown(request.get('ahead_in_higher'))} in higher priorities, "
                 f"{_shown(request.get('ahead_in_band'))} in its own), priority "
                 f"{_shown(request.get('priority'))}, queued {request.get('queued_s', 0):.1f}s"
                 if request.get("state") == "queued" else
                 f"attempt {_shown(request.get('attempt'))}")
        console.print(Text(f"{request['request_id']}: {request['state']}, {where}"))
