"""Fit an oversized context into a model's window: trim and compress the least important parts
first, then allocate `max_tokens` from what is left.

Importance: the fields a kind cannot do without (`required_context`) and the short identity
fields of a sheet (name, race, class, ...) are kept longest; long free text and lists elsewhere
go first. Each step halves the largest remaining leaf (keeping its head and tail) or drops it
once it is small, so the loop ends after a few dozen steps even for a 200,000-character context.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from llm_consumer.prompts.tokens import MESSAGE_OVERHEAD_TOKENS, TokenCounter, counter_for

KEY_FIELDS = frozenset({
    "name", "race", "species", "class", "subclass", "level", "background", "alignment",
    "title", "summary", "setting", "theme", "current_theme", "target_theme", "elements",
    "location", "npcs", "situation", "item", "type", "rarity",
})
MIN_ANSWER_TOKENS = 256
SAFETY_TOKENS = 64
DROP_BELOW_CHARS = 48
MAX_STEPS = 400
ELLIPSIS = " […] "
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Budget:
    window: int
    counter: TokenCounter
    desired_answer: int


@dataclass(slots=True)
class FitReport:
    original_tokens: int
    fitted_tokens: int
    max_tokens: int
    exact_count: bool
    actions: list[str] = field(default_factory=list)

    @property
    def saved_tokens(self) -> int:
        return self.original_tokens - self.fitted_tokens


def serialize(context: Any) -> str:
    return orjson.dumps(context, option=orjson.OPT_SORT_KEYS).decode()


def fit_context(context: dict[str, Any], *, fixed_text: str, budget: Budget,
                keep: frozenset[str] = frozenset()) -> tuple[dict[str, Any], FitReport]:
    """Shrink `context` until prompt (fixed text + context) leaves room for the answer."""
    if budget.counter.exact and (fits := _fits_by_size(context, fixed_text, budget)):
        return context, fits
    count = budget.counter.count
    fixed = count(fixed_text) + 2 * MESSAGE_OVERHEAD_TOKENS + SAFETY_TOKENS
    answer = min(budget.desired_answer, max(MIN_ANSWER_TOKENS, budget.window // 4))
    limit = budget.window - fixed - answer
    original = count(serialize(context))
    report = FitReport(original + fixed, original + fixed, 0, budget.counter.exact)
    fitted, tokens = context, original
    if tokens > limit:
        fitted = _normalize(copy.deepcopy(context))
        report.actions.append("collapsed whitespace")
        tokens = count(serialize(fitted))
        important = KEY_FIELDS | keep
        for _ in range(MAX_STEPS):
            if tokens <= limit:
                break
            action = _shrink_once(fitted, important) or _shrink_once(fitted, frozenset())
            if action is None:
                break
            report.actions.append(action)
            tokens = count(serialize(fitted))
        if tokens > limit:  # nothing left to trim but the structure itself
            fitted = {"truncated_context": serialize(fitted)[: max(limit, 0) * 2]}
            report.actions.append("cut the whole context")
            tokens = count(serialize(fitted))
    report.fitted_tokens = tokens + fixed
    report.max_tokens = max(MIN_ANSWER_TOKENS,
                            min(budget.desired_answer, budget.window - report.fitted_tokens))
    return fitted, report


def _fits_by_size(context: dict[str, Any], fixed_text: str, budget: Budget) -> FitReport | None:
    """Every token of a byte-level BPE covers at least one byte, so the UTF-8 size bounds the
    exact count from above. When even that bound leaves the whole answer budget, nothing is
    cut and the tokenizer is not needed (nor loaded: it costs ~130 MB)."""
    upper = (len(fixed_text.encode()) + len(serialize(context).encode())
             + 2 * MESSAGE_OVERHEAD_TOKENS + SAFETY_TOKENS)
    if budget.window - upper < budget.desired_answer:
        return None
    return FitReport(upper, upper, budget.desired_answer, exact_count=False)


def _normalize(node: Any) -> Any:
    if isinstance(node, str):
        return _SPACES.sub(" ", node).strip()
    if isinstance(node, list):
        return [_normalize(item) for item in node]
    if isinstance(node, dict):
        return {key: _normalize(value) for key, value in node.items()}
    return node


def _leaves(node: Any, path: tuple[Any, ...], protected: frozenset[str],
            found: list[tuple[int, tuple[Any, ...]]]) -> None:
    """Collect (size, path) of every string or list not under a protected top-level key."""
    if path and isinstance(path[0], str) and path[0] in protected:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            _leaves(value, (*path, key), protected, found)
        return
    # A one-item list is not a candidate itself: its item is (halved rather than dropped).
    if isinstance(node, str) or (isinstance(node, list) and len(node) > 1):
        found.append((len(serialize(node)), path))
    if isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, dict | list | str):
                _leaves(value, (*path, index), protected, found)


def _shrink_once(root: dict[str, Any], protected: frozenset[str]) -> str | None:
    found: list[tuple[int, tuple[Any, ...]]] = []
    _leaves(root, (), protected, found)
    if not found:
        return None
    size, path = max(found, key=lambda item: item[0])
    parent = root
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    value = parent[last]
    where = ".".join(str(p) for p in path)
    if size < DROP_BELOW_CHARS:
        del parent[last]
        return f"dropped {where}"
    if isinstance(value, str):
        keep = len(value) // 2
        head = (keep * 2) // 3
        parent[last] = value[:head] + ELLIPSIS + value[len(value) - (keep - head):]
        return f"halved {where}"
    half = len(value) // 2
    parent[last] = value[:half]
    return f"kept {half} of {len(value)} items of {where}"


@dataclass(frozen=True, slots=True)
class ContextWindows:
    """Context window per model (tokens); models not listed get `default`."""

    windows: dict[str, int] = field(default_factory=dict)
    default: int = 8192
    counters: dict[str, TokenCounter] = field(default_factory=dict)  # beyond `counter_for`

    def budget_for(self, models: tuple[str, ...], desired_answer: int) -> Budget:
        """Fit to the smallest window of the chain, so a fallback never overflows."""
        window = min(self.windows.get(model, self.default) for model in models)
        counter = self.counters.get(models[0]) or counter_for(models[0])
        return Budget(window=window, counter=counter, desired_answer=desired_answer)
