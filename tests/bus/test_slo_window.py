"""The SLO book on an injected clock: the sliding window, target classes, the request rate,
the warning's level, minimum and once-per-window rule, and how a delivery's time splits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from llm_consumer.handlers.base import CallBudget
from llm_consumer.slo import (
    DEFAULT_TARGETS_S,
    Delivery,
    Parts,
    SloBook,
    SloPolicy,
    Window,
    published_at,
    target_class,
)
from tests.conftest import make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answered(total_s: float, queue_wait_s: float = 0.0) -> Parts:
    return Parts(queue_wait_s, total_s - queue_wait_s, 0.0)


def test_the_window_forgets_what_is_older_than_its_span() -> None:
    clock = Clock()
    window = Window(300, clock)
    for good in (True, True, True, False):
        window.record(good)
    clock.now += 150
    window.record(False)
    assert window.counts() == (5, 3)
    clock.now += 151  # the first four are now 301 s old
    assert window.counts() == (1, 0)
    clock.now += 300
    assert window.counts() == (0, 0)


def test_kinds_fall_into_the_documents_classes_unless_given_their_own() -> None:
    targets = {**DEFAULT_TARGETS_S, "character.combat": 8.0}
    assert target_class("character.backstory", targets) == "text"
    assert target_class("chat.completion", targets) == "text"
    assert target_class("theme.apply", targets) == "theme"
    assert target_class("theme.analyze", targets) == "theme"
    assert target_class("content.validate", targets) == "validation"
    assert target_class("portrait", targets) == "image"
    assert target_class("variations", targets) == "image"
    assert target_class("character.combat", targets) == "character.combat"
    assert make_settings().slo_targets_s == DEFAULT_TARGETS_S  # the setting's default


def test_shares_per_class_and_the_queue_wait_of_every_request() -> None:
    clock = Clock()
    book = SloBook(SloPolicy.of({"character.combat": 8.0}, 300, 0.9, 100), clock=clock)
    book.observe("character.backstory", answered(4.0))  # text, within 5 s
    book.observe("world.npc_dialogue", answered(6.0, queue_wait_s=1.5))  # text, late; queued
    book.observe("content.validate", answered(2.5))  # validation, late
    book.observe("portrait", answered(29.0))  # image, within 30 s
    book.observe("character.combat", answered(7.5))  # its own target of 8 s
    shares = book.shares()
    assert (shares["text"].requests, shares["text"].within_target, shares["text"].share) == (
        2, 1, 0.5)
    assert shares["validation"].share == 0.0 and shares["image"].share == 1.0
    assert shares["character.combat"].share == 1.0 and shares["character.combat"].target_s == 8
    assert shares["theme"].requests == 0 and shares["theme"].share is None
    assert (shares["queue"].requests, shares["queue"].within_target) == (5, 4)


def test_a_warning_needs_the_minimum_and_comes_once_per_window() -> None:
    clock = Clock()
    book = SloBook(SloPolicy.of({}, 60, 0.9, 4), instance="replica-1", clock=clock)
    for _ in range(3):
        assert book.observe("campaign.plot", answered(9.0)) == []  # under the minimum
    [warning] = book.observe("campaign.plot", answered(9.0))
    assert (warning.target, warning.requests, warning.within_target, warning.share) == (
        "text", 4, 0, 0.0)
    assert (warning.level, warning.window_s, warning.instance) == (0.9, 60, "replica-1")
    clock.now += 30
    for _ in range(10):  # still under the level, but warned within this window already
        assert book.observe("campaign.plot", answered(9.0)) == []
    clock.now += 31
    [again] = book.observe("campaign.plot", answered(9.0))
    assert again.requests == 11  # the first four left the window
    clock.now += 61  # a window later the slow ones are gone
    for _ in range(40):
        book.observe("campaign.plot", answered(1.0))
    assert book.observe("campaign.plot", answered(9.0)) == []  # 40 of 41: over the level
    assert book.shares()["text"].share == round(40 / 41, 4)


def test_a_share_at_the_level_is_no_warning_and_level_zero_never_warns() -> None:
    clock = Clock()
    book = SloBook(SloPolicy.of({}, 60, 0.5, 2), clock=clock)
    assert book.observe("campaign.quest", answered(1.0)) == []
    assert book.observe("campaign.quest", answered(9.0)) == []  # 1 of 2: at the level
    [warning] = book.observe("campaign.quest", answered(9.0))  # 1 of 3
    assert warning.share == 0.3333
    quiet = SloBook(SloPolicy.of({}, 60, 0.0, 1), clock=clock)
    assert all(quiet.observe("campaign.quest", answered(60.0)) == [] for _ in range(5))


def test_the_request_rate_counts_settled_deliveries_over_the_window() -> None:
    clock = Clock()
    book = SloBook(SloPolicy.of({}, 300, 0.9, 20), clock=clock)
    for _ in range(30):
        book.settled()
    clock.now += 10
    assert book.request_rate() == 3.0  # 30 in the 10 s since start
    for _ in range(600):  # then 2 a second for 10 minutes
        clock.now += 1
        book.settled()
        book.settled()
    assert book.request_rate() == pytest.approx(2.0, rel=0.01)  # the last 5 minutes only


def test_a_delivery_splits_into_queue_wait_provider_time_and_overhead() -> None:
    calls = CallBudget()
    calls.provider_s = 2.5
    delivery = Delivery(received_at=1000.0, published_at=998.0, kind="portrait", calls=calls)
    assert delivery.parts(3.0) == Parts(2.0, 2.5, 0.5)
    assert delivery.parts(3.0).total_s == 5.0
    ahead = Delivery(received_at=1000.0, published_at=1004.0)  # the publisher's clock runs ahead
    assert ahead.parts(1.0) == Parts(0.0, 0.0, 1.0)
    unknown = Delivery(received_at=1000.0)
    assert unknown.parts(0.25) == Parts(0.0, 0.0, 0.25)


def test_the_publish_time_is_the_later_stamp() -> None:
    amqp = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)  # whole seconds
    event = amqp + timedelta(milliseconds=400)
    assert published_at(amqp, event) == event.timestamp()
    assert published_at(amqp, amqp - timedelta(hours=3)) == amqp.timestamp()
    assert published_at(None, event) == event.timestamp()
    assert published_at(None, None) is None
