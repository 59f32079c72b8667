"""`llm-consumer run`, `demo`, `probe` and `health`."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.panel import Panel
from rich.text import Text

from llm_consumer.cli.common import (
    Exit,
    console,
    err,
    fail,
    json_line,
    load,
    redis_where,
    show_rows,
)
from llm_consumer.cli.common import run as run_command
from llm_consumer.cli.requests import publish_and_show
from llm_consumer.client import collect_heartbeats, open_hub
from llm_consumer.logging import configure_logging
from llm_consumer.settings import Settings

SAMPLE_CHARACTER = {
    "name": "Mira Thornvale", "race": "Half-Elf", "class": "Rogue", "level": 3,
    "background": "Urchin", "alignment": "Chaotic Good",
    "traits": "quick-witted, distrustful of nobles",
}
EMBEDDED_MODEL_NOTE = ("note: no OPENAI_API_KEY, so this runs the embedded SmolLM2-135M, a tiny "
                       "CPU model: expect short, simple text; set OPENAI_API_KEY for real "
                       "quality")
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON Lines")]


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(demo)
    app.command()(probe)
    app.command()(health)


def run(
    workers: Annotated[int | None, typer.Option(
        min=0, max=64, help="service processes, each with its own event loop and connections "
        "(0: one per core; default: WORKERS, 1)")] = None,
) -> None:
    """Consume requests until SIGTERM/SIGINT, then drain and exit 0.

    A second Ctrl-C during the drain exits at once (130); unfinished requests go back to the
    queue. With several workers, each signal goes to every worker.
    """
    settings = load(need_secret=True)
    configure_logging(settings.log_level)
    from llm_consumer.workers import supervise, worker_count

    count = worker_count(settings.workers if workers is None else workers)
    if count > 1:
        sys.exit(supervise(settings, count))
    from llm_consumer.app import run_service

    use_event_loop(settings.event_loop)
    run_command(run_service(settings, tune_gc=True), settings)


def use_event_loop(name: str) -> None:
    """uvloop for `run` when asked and installed: the same asyncio API on libuv, with less
    CPU per socket write and callback, which a worker holding hundreds of requests pays for
    most."""
    if name != "uvloop":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def demo(
    timeout: Annotated[float, typer.Option(help="seconds to wait for the result")] = 300,
) -> None:
    """Start the service in this process, inject a sample backstory request, print the result."""
    if not os.environ.get("SECRET_KEY"):
        os.environ["SECRET_KEY"] = secrets.token_urlsafe(64)
        err.print("SECRET_KEY not set: using a throw-away key for this demo", style="dim")
    settings = load(need_secret=True)
    configure_logging("WARNING")
    noise = Path(tempfile.gettempdir()) / "llm-consumer-demo.log"
    with library_noise_to(noise):
        code = run_command(_demo(settings, timeout), settings)
    if code != Exit.OK and noise.stat().st_size:
        err.print(f"library messages of this run: {noise}", style="dim")
    sys.exit(int(code))


@contextmanager
def library_noise_to(path: Path) -> Iterator[None]:
    """llama.cpp writes to file descriptor 2 from C (`llama_context: ...`): while the demo
    runs, that descriptor goes to `path`; our own lines use a duplicate of the terminal."""
    sys.stderr.flush()
    terminal = os.dup(2)
    with path.open("wb") as sink:
        os.dup2(sink.fileno(), 2)
    original_file = err.file
    err.file = os.fdopen(os.dup(terminal), "w", encoding="utf-8", closefd=True)
    try:
        yield
    finally:
        sys.stderr.flush()
        err.file.flush()
        err.file.close()
        err.file = original_file
        os.dup2(terminal, 2)
        os.close(terminal)


async def _demo(settings: Settings, timeout: float) -> Exit:
    from llm_consumer.app import run_service
    from llm_consumer.client import build_request

    stop, ready = asyncio.Event(), asyncio.Event()
    service = asyncio.create_task(run_service(settings, stop=stop, ready=ready))
    waiting = asyncio.create_task(ready.wait())
    with console.status("starting the consumer (loads the embedded model on first use)…"):
        await asyncio.wait({service, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if service.done():
        waiting.cancel()
        service.result()  # raises what stopped the start-up
    if not settings.uses_openai:  # once it runs: a failed start-up stays one line
        console.print(EMBEDDED_MODEL_NOTE, style="dim", soft_wrap=True)
    request = build_request("character.backstory", {"context": SAMPLE_CHARACTER,
                                                    "theme": {"preset": "dark-fantasy"}})
    console.print(Panel.fit(Text(orjson.dumps(request, option=orjson.OPT_INDENT_2).decode()),
                            title="request published"))
    try:
        return await publish_and_show(settings, request, None, timeout, as_json=False,
                                      priority=None)
    finally:
        stop.set()
        await service


def probe(
    max_age: Annotated[float, typer.Option(help="seconds after which the file is stale")] = 30,
    as_json: JsonOpt = False,
) -> None:
    """Container health check: exit 0 when `run` refreshed HEALTH_FILE recently."""
    settings = load()
    if not settings.health_file:
        fail("HEALTH_FILE is not set", Exit.USAGE)
    try:
        state = orjson.loads(Path(settings.health_file).read_bytes())
    except (OSError, orjson.JSONDecodeError) as error:
        fail(f"unhealthy: cannot read {settings.health_file}: {error}", Exit.FAILED)
    age = time.time() - float(state.get("time", 0))
    if as_json:
        json_line({**state, "age_s": round(age, 1)})
    if age > max_age:
        fail(f"unhealthy: last heartbeat {age:.0f}s ago", Exit.FAILED)
    if state.get("status") == "down":
        fail(f"unhealthy: {state.get('components')}", Exit.FAILED)
    counts = state.get("metrics", {})
    if not as_json:
        console.print(f"{state.get('status')}: {counts.get('in_flight')} in flight, "
                      f"{counts.get('processed')} processed, heartbeat {age:.0f}s ago")


def health(
    wait: Annotated[float, typer.Option(help="seconds to listen for heartbeats")] = 12,
    as_json: JsonOpt = False,
) -> None:
    """Check the broker and Redis, collect every instance's heartbeat and print a table.

    Exits 1 when a component is down, or when no instance sent a heartbeat in time. With
    --json: one line per component of this check, then one line per instance's heartbeat.
    """
    settings = load()
    checks, beats = run_command(_health(settings, wait, as_json), settings)
    if as_json:
        for name, status in checks:
            json_line({"check": name, "status": status})
        for beat in beats:
            json_line(beat["data"])
    else:
        show_rows("llm-consumer health", ("instance", "component", "status", "in flight",
                                          "processed", "req/s", "error rate", "p95 ms"),
                  _health_rows(checks, beats),
                  right=frozenset({"in flight", "processed", "req/s", "error rate", "p95 ms"}))
        _show_targets(beats)
    if not beats:
        err.print(f"no heartbeat from any instance within {wait:g}s")
    code = _health_exit(checks, beats)
    if code is not Exit.OK:
        raise typer.Exit(int(code))


def _health_rows(checks: list[tuple[str, str]], beats: list[dict[str, Any]],
                 ) -> list[list[str]]:
    """This check's own rows, then one per component of each instance, its figures on the
    instance's first row."""
    rows = [["(this check)", name, status, "", "", "", "", ""] for name, status in checks]
    for beat in beats:
        data, counts = beat["data"], beat["data"]["metrics"]
        figures = [str(counts["in_flight"]), str(counts["processed"]),
                   f"{counts.get('request_rate', 0):.2f}", f"{counts['error_rate']:.1%}",
                   str(counts["p95_ms"])]
        for index, (name, status) in enumerate(sorted(data["components"].items())):
            rows.append([str(data["instance"]) if index == 0 else "", name, str(status),
                         *(figures if index == 0 else [""] * len(figures))])
    return rows


def _health_exit(checks: list[tuple[str, str]], beats: list[dict[str, Any]]) -> Exit:
    """This check's own broker or Redis down first (as every command's), then any component
    of any instance down, or no heartbeat at all."""
    own = dict(checks)
    if own.get("broker") == "down":
        return Exit.BROKER
    if own.get("redis") == "down":
        return Exit.REDIS
    statuses = [status for _, status in checks] + [
        str(s) for b in beats for s in b["data"]["components"].values()]
    return Exit.FAILED if not beats or "down" in statuses else Exit.OK


def _show_targets(beats: list[dict[str, Any]]) -> None:
    """Each instance's share of requests within the latency targets (slo.py), when any."""
    rows = []
    for beat in beats:
        for index, (target, share) in enumerate(sorted(
                beat["data"]["metrics"].get("slo", {}).items())):
            rows.append([str(beat["data"]["instance"]) if index == 0 else "", target,
                         f"{share['target_s']:g}", str(share["requests"]),
                         str(share["within_target"]),
                         "-" if share.get("share") is None else f"{share['share']:.1%}"])
    if rows:
        show_rows("latency targets over each instance's recent window (SLO_WINDOW_S)",
                  ("instance", "target", "target s", "requests", "within", "share"), rows,
                  right=frozenset({"target s", "requests", "within", "share"}))


async def _health(settings: Settings, wait: float, quiet: bool,
                  ) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """This check's view of Redis and the broker, and the heartbeats heard meanwhile."""
    from llm_consumer.client import BrokerUnavailable
    from llm_consumer.store.client import open_redis

    checks: list[tuple[str, str]] = []
    redis = open_redis(settings.redis_url, settings.redis_mode,
                       sentinel_master=settings.redis_sentinel_master, timeout_s=3)
    try:
        await redis.ping()
        checks.append(("redis", "ok"))
    except Exception as error:  # any failure is "down" here; the line says why
        checks.append(("redis", "down"))
        err.print(Text(f"Redis at {redis_where(settings.redis_url)}: {error}"), soft_wrap=True)
    finally:
        await redis.aclose()
    try:
        async with open_hub(settings.message_hub_nodes, timeout_s=5) as connection:
            checks.append(("broker", "ok"))
            with (err if quiet else console).status(f"listening for heartbeats ({wait:g}s)…"):
                beats = await collect_heartbeats(connection, settings.hub_exchange, wait)
    except BrokerUnavailable as error:
        checks.append(("broker", "down"))
        err.print(Text(str(error)), soft_wrap=True)
        return checks, []
    return checks, beats
