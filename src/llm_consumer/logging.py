"""structlog set-up: JSON lines when not on a terminal, readable colours on one (none when
NO_COLOR is set), and a rate-limited warning for events that can come in floods."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog


def use_colour(stream: TextIO) -> bool:
    """Colours on a terminal, unless NO_COLOR is set (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=use_colour(sys.stderr))
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # One write per line (print() writes the line and its newline apart): with
        # PYTHONUNBUFFERED each is a system call, and the workers of `run --workers N`, sharing
        # one stderr, would interleave their lines.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Library loggers (aio-pika reconnects, etc.) go to stderr at WARNING and above.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
    # aiormq logs every failed connection attempt before raising it; aio-pika's robust
    # connection logs its own reconnection attempts, and a failed start-up is one CLI line.
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)


class RateLimitedWarning:
    """At most one warning per `every_s` for one event, with how many times it happened
    since the last line (`count`): a flood is one line a minute, not a line per event."""

    def __init__(self, event: str, *, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 logger: Any = None) -> None:
        self.event = event
        self.every_s = every_s
        self._clock = clock
        self._log = logger or structlog.get_logger("llm_consumer")
        self._last: float | None = None
        self.pending = 0

    def __call__(self, **fields: Any) -> bool:
        """Count one occurrence; True when a line was written for it."""
        self.pending += 1
        now = self._clock()
        if self._last is not None and now - self._last < self.every_s:
            return False
        self._log.warning(self.event, count=self.pending, per_s=self.every_s, **fields)
        self._last, self.pending = now, 0
        return True
