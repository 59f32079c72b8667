"""What an authenticated caller may name: where replies go, and which models it may ask for.

`reply_to` is a capability, not a free address. The service answers only into reply queues a
caller can own: queues the broker named (`amq.gen-*`), direct reply-to
(`amq.rabbitmq.reply-to...`), and names matching REPLY_TO_PATTERN when an operator sets one.
Never into a queue of its own (anything under QUEUE_PREFIX), whatever the pattern says.

A request may name only models the service offers: the configured default and fallbacks,
models with configured rate limits or context windows, and ALLOWED_MODELS (`*`: any). An
unlisted model would bypass per-model limits and pricing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from llm_consumer.errors import InvalidRequest
from llm_consumer.events.requests import ContentRequested, ImageRequested

SERVER_NAMED = re.compile(r"amq\.gen-[A-Za-z0-9_.-]{1,200}")
DIRECT_REPLY_TO = re.compile(r"amq\.rabbitmq\.reply-to(\.[A-Za-z0-9+/=._-]{1,500})?")
ANY = "*"
SHOWN_MODELS = 8


@dataclass(frozen=True, slots=True)
class ReplyPolicy:
    own_prefix: str  # QUEUE_PREFIX: the service's own queues are never a reply target
    pattern: re.Pattern[str] | None = None  # REPLY_TO_PATTERN: further names callers own

    def check(self, reply_to: str | None) -> str | None:
        """`reply_to` when the service may answer into it; InvalidRequest otherwise."""
        if not reply_to:
            return None
        if self.own_prefix and reply_to.startswith(self.own_prefix):
            raise InvalidRequest(f"reply_to {reply_to[:100]!r} names a queue of this service")
        if (SERVER_NAMED.fullmatch(reply_to) or DIRECT_REPLY_TO.fullmatch(reply_to)
                or (self.pattern is not None and self.pattern.fullmatch(reply_to))):
            return reply_to
        raise InvalidRequest(
            f"reply_to {reply_to[:100]!r} is not a reply queue this service answers into "
            "(a server-named amq.gen-* queue, direct reply-to, or REPLY_TO_PATTERN)")


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    text: frozenset[str]
    image: frozenset[str]

    @classmethod
    def of(cls, text: Iterable[str], image: Iterable[str], widened: Iterable[str]) -> ModelPolicy:
        extra = frozenset(widened)
        return cls(frozenset(text) | extra, frozenset(image) | extra)

    def check(self, data: ContentRequested | ImageRequested) -> None:
        if isinstance(data, ImageRequested):
            _check(data.options.model, self.image, "options.model")
        elif data.model is not None:
            _check(data.model.name, self.text, "model.name")


def _check(name: str | None, allowed: frozenset[str], field: str) -> None:
    if name is None or ANY in allowed or name in allowed:
        return
    shown = ", ".join(sorted(allowed)[:SHOWN_MODELS])
    raise InvalidRequest(f"{field} {name[:100]!r} is not offered here (offered: {shown}; "
                         "ALLOWED_MODELS widens the list)")
