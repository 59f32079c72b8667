"""What the CLI and the service print, independent of a broker: colours, flood control."""

from __future__ import annotations

from typing import Any

import pytest

from llm_consumer.logging import RateLimitedWarning, use_colour


class Terminal:
    def isatty(self) -> bool:
        return True


def test_the_log_renderer_honours_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(Terminal()) is True  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_colour(Terminal()) is False  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_a_flood_is_one_warning_a_minute_with_its_count() -> None:
    now = [1000.0]
    log = Recorder()
    warn = RateLimitedWarning("event.unrouted", every_s=60, clock=lambda: now[0], logger=log)
    assert warn(event_type="content.generated") is True
    for _ in range(32):
        now[0] += 1
        warn(event_type="content.generated")
    assert len(log.lines) == 1 and log.lines[0][1]["count"] == 1
    now[0] += 30  # 62 s after the first line
    assert warn(event_type="theme.analyzed") is True
    assert len(log.lines) == 2
    event, fields = log.lines[1]
    assert event == "event.unrouted" and fields["count"] == 33
    assert fields["event_type"] == "theme.analyzed" and fields["per_s"] == 60
