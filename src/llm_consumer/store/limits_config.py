"""Rate-limit configuration: `N/second`, `N/minute`, `N/hour`, `N/<seconds>s` or `off`.

Parsed once at start-up (settings validate with these functions, so a typo stops start-up with
one line naming the variable) into frozen values the limiter uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

UNITS_S = {"second": 1.0, "sec": 1.0, "s": 1.0, "minute": 60.0, "min": 60.0, "m": 60.0,
           "hour": 3600.0, "h": 3600.0}
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(?:(\d+(?:\.\d+)?)\s*s|([a-z]+))\s*$")
OFF = frozenset({"off", "none", "unlimited"})
FORMAT_HINT = "must look like N/second, N/minute, N/hour, N/<seconds>s or off"
# Operations: the rate-limit scope each request kind counts against.
OPERATIONS = ("text", "theme", "validation", "image_text_to_image", "image_to_image")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `limit` within any `window_s` (sliding)."""

    limit: int
    window_s: float

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_s:g}s"


def parse_rate(text: str) -> Rate | None:
    """`100/minute` -> Rate(100, 60.0); `off` -> None. Raises ValueError with a hint."""
    lowered = text.strip().lower()
    if lowered in OFF:
        return None
    match = _SPEC.match(lowered)
    if match is None:
        raise ValueError(f"{text!r} {FORMAT_HINT}")
    count, seconds, unit = match.groups()
    if seconds is not None:
        window = float(seconds)
    elif unit in UNITS_S:
        window = UNITS_S[unit]
    else:
        raise ValueError(f"{text!r}: unknown unit {unit!r}; {FORMAT_HINT}")
    if int(count) < 1 or window <= 0:
        raise ValueError(f"{text!r}: the count and the window must be positive; it {FORMAT_HINT}")
    return Rate(int(count), window)


@dataclass(frozen=True, slots=True)
class ModelRates:
    requests: Rate | None = None
    tokens: Rate | None = None  # prompt + completion tokens, estimated at admission


def parse_model_rates(raw: Mapping[str, object]) -> dict[str, ModelRates]:
    """`{"gpt-5-nano": "1000/minute"}` or `{"m": {"requests": "...", "tokens": "..."}}`."""
    parsed: dict[str, ModelRates] = {}
    for model, value in raw.items():
        if isinstance(value, str):
            parsed[model] = ModelRates(requests=parse_rate(value))
        elif isinstance(value, Mapping) and set(value) <= {"requests", "tokens"}:
            parts = {k: parse_rate(str(v)) for k, v in value.items()}
            parsed[model] = ModelRates(**parts)
        else:
            raise ValueError(f"model {model!r}: give a rate string or "
                             '{"requests": "N/minute", "tokens": "N/minute"}')
    return parsed


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Every configured limit; `None` means that scope is not limited."""

    global_: Rate | None
    user: Rate | None
    operations: Mapping[str, Rate | None]
    models: Mapping[str, ModelRates] = field(default_factory=dict)
    replicas_hint: int = 3  # the share each replica keeps to itself when Redis is down
    user_share: float = 1.0  # of each operation and model limit, the most one user may take
    # Redis replicas that must hold an admission before its call goes out (WAIT), so a
    # master's failover cannot lose admissions the replicas never received (0: do not wait).
    wait_replicas: int = 0

    def user_part(self, rate: Rate | None) -> Rate | None:
        """One user's share of `rate` (None when there is no share to keep)."""
        if rate is None:
            return None
        share = max(1, math.floor(rate.limit * self.user_share))
        return Rate(share, rate.window_s) if share < rate.limit else None

    def model(self, name: str) -> ModelRates:
        return self.models.get(name, ModelRates())
