"""Fit a request's data (its context and its theme, together) into a model's window: trim and
compress the least important parts first, then allocate `max_tokens` from what is left.

Importance: the fields a kind cannot do without (`required_context`), the short identity fields
of a sheet (name, race, class, ...) and the theme's genre, tone and style are kept longest;
long free text and lists elsewhere (the theme's language patterns included) go first. Each
round shortens the largest remaining leaves by what the excess needs, at most by half (a string
keeps its head and tail, a list its first items; one leaf far above the rest is cut at once), or
drops them once small. A huge context is first cut by its size alone (counting the tokens of
a megabyte costs ~0.2 s), then by token counts; after MAX_ROUNDS the context is cut as one
text. When even the service's own text leaves no room for an answer, the request is refused
with `context_length_exceeded`: a prompt over the window is never sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from llm_consumer.errors import PermanentFailure
from llm_consumer.prompts.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    TokenCounter,
    counter_for,
    estimate,
)

KEY_FIELDS = frozenset({
    "name", "race", "species", "class", "subclass", "level", "background", "alignment",
    "title", "summary", "setting", "theme", "current_theme", "target_theme", "elements",
    "location", "npcs", "situation", "item", "type", "rarity",
})
KEY_THEME_FIELDS = frozenset({"preset", "genre", "tone", "style"})
CONTEXT, THEME = "context", "theme"
MIN_ANSWER_TOKENS = 256
SAFETY_TOKENS = 64
DROP_BELOW_CHARS = 48
MAX_ROUNDS = 100
# No tokenizer puts more characters than this in a token of ordinary text: shrinking by size to
# `limit * COARSE_CHARS_PER_TOKEN` characters never cuts what exact counting would keep.
COARSE_CHARS_PER_TOKEN = 8
ELLIPSIS = " […] "
_SPACES = re.compile(r"\s+")
_ESCAPES = ((b"&", b"\\u0026"), (b"<", b"\\u003c"), (b">", b"\\u003e"))

Path = tuple[Any, ...]
Count = Callable[[str], int]


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


@dataclass(frozen=True, slots=True)
class Fitted:
    context: dict[str, Any]
    theme: dict[str, Any] | None
    report: FitReport


def serialize(data: Any) -> str:
    """`data` as compact JSON (sorted keys) with `&`, `<` and `>` written as `\\u0026`,
    `\\u003c`, `\\u003e`: the same JSON value, but text that can never form a tag such as
    `</context>`. JSON has these characters only inside strings, where the escapes are valid."""
    raw = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    for char, escaped in _ESCAPES:
        if char in raw:
            raw = raw.replace(char, escaped)
    return raw.decode()


def fit_context(context: dict[str, Any], *, fixed_text: str, budget: Budget,
                keep: frozenset[str] = frozenset()) -> tuple[dict[str, Any], FitReport]:
    """Shrink `context` until prompt (fixed text + context) leaves room for the answer."""
    fitted = fit_data(context, None, fixed_text=fixed_text, budget=budget, keep=keep)
    return fitted.context, fitted.report


def fit_data(context: dict[str, Any], theme: dict[str, Any] | None, *, fixed_text: str,
             budget: Budget, keep: frozenset[str] = frozenset()) -> Fitted:
    """Shrink `context` and `theme` together until the prompt (fixed text + both, as
    `serialize` writes them) leaves room for the answer. Raises PermanentFailure
    `context_length_exceeded` when the fixed text alone leaves none."""
    root: dict[str, Any] = {CONTEXT: context} if theme is None else {CONTEXT: context,
                                                                     THEME: theme}
    if budget.counter.exact and (fits := _fits_by_size(root, fixed_text, budget)):
        return Fitted(context, theme, fits)
    count = budget.counter.count
    fixed = count(fixed_text) + 2 * MESSAGE_OVERHEAD_TOKENS + SAFETY_TOKENS
    if fixed + MIN_ANSWER_TOKENS > budget.window:
        raise _too_long(f"the service's own prompt needs {fixed} tokens", budget.window)
    answer = min(budget.desired_answer, max(MIN_ANSWER_TOKENS, budget.window // 4))
    limit = max(budget.window - fixed - answer, 0)
    text = serialize(root)
    # Data its size alone shows to be over is not counted whole (a megabyte costs up to
    # seconds with the embedded model's tokenizer): its original size is reported as estimated.
    over_by_size = len(text) > limit * COARSE_CHARS_PER_TOKEN
    tokens = estimate(text) if over_by_size else count(text)
    report = FitReport(tokens + fixed, tokens + fixed, 0, budget.counter.exact)
    if over_by_size or tokens > limit:
        root, tokens = _shrink(root, limit, count, report,
                               _protected(keep, with_theme=theme is not None))
    if tokens > limit:
        raise _too_long(f"the data still needs {tokens} tokens after fitting", budget.window)
    report.fitted_tokens = tokens + fixed
    report.max_tokens = max(MIN_ANSWER_TOKENS,
                            min(budget.desired_answer, budget.window - report.fitted_tokens))
    return Fitted(root[CONTEXT], root.get(THEME), report)


def _too_long(why: str, window: int) -> PermanentFailure:
    return PermanentFailure(f"the request does not fit the model's {window}-token window: {why}",
                            code="context_length_exceeded")


def _protected(keep: frozenset[str], *, with_theme: bool) -> frozenset[Path]:
    paths = {(CONTEXT, name) for name in KEY_FIELDS | keep}
    if with_theme:
        paths |= {(THEME, name) for name in KEY_THEME_FIELDS}
    return frozenset(paths)


def _shrink(root: dict[str, Any], limit: int, count: Count, report: FitReport,
            important: frozenset[Path]) -> tuple[dict[str, Any], int]:
    """(the shrunk copy of `root`, its token count): at most `limit` tokens when possible."""
    fitted: dict[str, Any] = _normalize(root)  # a new tree: the request's data stays as it is
    report.actions.append("collapsed whitespace")
    rounds = 0
    size_limit = limit * COARSE_CHARS_PER_TOKEN
    text = serialize(fitted)
    while rounds < MAX_ROUNDS and len(text) > size_limit:
        rounds += 1
        if not _shrink_round(fitted, text, important, len(text) - size_limit, report):
            break
        text = serialize(fitted)
    tokens = count(text)
    while rounds < MAX_ROUNDS and tokens > limit:
        rounds += 1
        excess_chars = math.ceil((tokens - limit) * len(text) / tokens)
        if not _shrink_round(fitted, text, important, excess_chars, report):
            break
        text = serialize(fitted)
        tokens = count(text)
    if tokens > limit:  # nothing left to trim but the structure itself
        tokens = _cut_as_text(fitted, limit, count, report)
    return fitted, tokens


def _cut_as_text(root: dict[str, Any], limit: int, count: Count, report: FitReport) -> int:
    """Replace the context by a prefix of its JSON text, shorter until the data fits; drop the
    theme when even an empty context does not leave it room."""
    text = serialize(root[CONTEXT])
    keep = min(len(text), limit * 2)
    while True:
        root[CONTEXT] = {"truncated_context": text[:keep]}
        tokens = count(serialize(root))
        if tokens <= limit or keep == 0:
            break
        keep = keep * limit // (tokens + 1)  # proportionally shorter, strictly decreasing
    report.actions.append(f"cut the whole context to {keep} characters")
    if tokens > limit and THEME in root:
        del root[THEME]
        report.actions.append("dropped the theme")
        tokens = count(serialize(root))
    return tokens


def _fits_by_size(root: dict[str, Any], fixed_text: str, budget: Budget) -> FitReport | None:
    """Every token of a byte-level BPE covers at least one byte, so the UTF-8 size bounds the
    exact count from above. When even that bound leaves the whole answer budget, nothing is
    cut and the tokenizer is not needed (nor loaded: it costs ~130 MB)."""
    upper = (len(fixed_text.encode()) + len(serialize(root).encode())
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


def _sized(node: Any, path: Path, open_: bool, protected: frozenset[Path],
           found: list[tuple[int, Path]], escapes: bool) -> int:
    """The size of `node` as `serialize` writes it (about: scalars and key quoting are
    approximate; `escapes` says whether any `<`, `>` or `&` is worth counting); collects
    (size, path) of every string, and every list of more than one item, not under a protected
    path. A one-item list is not a candidate: its item is."""
    open_ = open_ and path not in protected
    if isinstance(node, str):
        size = len(node) + 2
        if escapes:
            size += 5 * (node.count("<") + node.count(">") + node.count("&"))
    elif isinstance(node, dict):
        size = 2
        for key, value in node.items():
            size += len(key) + 4 + _sized(value, (*path, key), open_, protected, found, escapes)
        return size
    elif isinstance(node, list):
        size = 1
        for index, value in enumerate(node):
            size += 1 + _sized(value, (*path, index), open_, protected, found, escapes)
        if len(node) < 2:
            return size
    else:
        return len(str(node))
    if open_:
        found.append((size, path))
    return size


def _shrink_round(root: dict[str, Any], text: str, protected: frozenset[Path],
                  excess_chars: int, report: FitReport) -> bool:
    """Shorten (or drop, when small) the largest leaves outside `protected` until about
    `excess_chars` are freed; the protected ones only when nothing else is left. Only leaves at
    least half the size of the largest are touched in a round, so smaller ones (a theme's
    language patterns beside a megabyte of notes) are cut only once the large ones have come
    down to them. One walk of the tree per round: many small fields cost a few walks."""
    found: list[tuple[int, Path]] = []
    escapes = "\\u00" in text  # `text` is serialized: its `<`, `>`, `&` are escaped
    _sized(root, (), True, protected, found, escapes)
    if not found:
        _sized(root, (), True, frozenset(), found, escapes)
    if not found:
        return False
    found.sort(key=lambda item: item[0], reverse=True)
    tier = found[0][0] // 2
    top = sum(size for size, _ in found if size >= tier)
    if top < excess_chars // 2:
        tier = 0  # the largest leaves cannot make a dent: all take part, largest first
    # One leaf far above the rest (a megabyte of notes) is cut by what is needed at once.
    alone = top == found[0][0]
    chosen: list[tuple[Path, int, int]] = []  # (path, its size, characters to cut; 0: drop)
    freed = 0
    for size, path in found:
        if freed >= excess_chars or size < tier:
            break
        if size < DROP_BELOW_CHARS:
            chosen.append((path, size, 0))
            # A dropped object member frees its key too; a dropped list item its comma.
            key = path[-1]
            freed += size + (len(key) + 4 if isinstance(key, str) else 1)
        else:
            most = size * 7 // 8 if alone else size // 2
            cut = min(most, max(excess_chars - freed, DROP_BELOW_CHARS))
            chosen.append((path, size, cut))
            freed += cut
    # Descendants before ancestors and later list items before earlier ones: every path
    # still leads where it did when it was collected.
    chosen.sort(key=lambda item: item[0], reverse=True)
    shortened = dropped = 0
    for path, size, cut in chosen:
        parent: Any = root
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if cut:
            parent[last] = _shorten(parent[last], size, cut)
            shortened += 1
        else:
            del parent[last]
            dropped += 1
    largest = ".".join(str(p) for p in found[0][1])
    report.actions.append(f"shortened {shortened} and dropped {dropped} (largest: {largest})")
    return True


def _shorten(value: str | list[Any], size: int, cut: int) -> str | list[Any]:
    """`value` (of about `size` characters serialized) about `cut` characters shorter, and
    never empty: a string keeps its head and tail around an ellipsis, a list its first items.
    `size` and `cut` count serialized characters (an escaped `<` is six): the cut is scaled."""
    if isinstance(value, str):
        chars = math.ceil(cut * len(value) / max(size, 1))
        keep = max(len(value) - chars - len(ELLIPSIS), len(value) // 8)
        head = (keep * 2) // 3
        return value[:head] + ELLIPSIS + value[len(value) - (keep - head):]
    drop = math.ceil(len(value) * cut / max(size, 1))
    return value[: max(len(value) - drop, 1)]


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
