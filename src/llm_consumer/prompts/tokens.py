"""Token counting: exact where a tokenizer is available offline (OpenAI's, shipped by
`bpe-openai`; the embedded model's own vocabulary), a calibrated over-estimate otherwise.

The estimate counts by character class: letters at 3 per token, each digit, each space before
a digit, each symbol as a token, non-ASCII characters at 1.6 tokens, plus 10%. Calibrated in
`tests/prompts/test_tokens.py` to stay above o200k, cl100k and SmolLM2's tokenizer on prose,
JSON sheets, number lists, non-Latin names and symbol runs (SmolLM2 splits digits one by one,
which is why digits count fully).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

LETTERS_PER_TOKEN = 3.0
NON_ASCII_TOKENS = 1.6
ESTIMATE_MARGIN = 1.1
MESSAGE_OVERHEAD_TOKENS = 4  # role markers around each chat message
# bpe_openai refuses to encode more than 200,000 tokens at once. A character is at most 4 UTF-8
# bytes and a token at least one byte, so a piece of this many characters is always below it.
COUNT_PIECE_CHARS = 40_000
SPLIT_LOOKBACK_CHARS = 2_000
_LETTER = re.compile(r"[A-Za-z]")
_ONE_TOKEN = re.compile(r"\d|\s(?=\d)|[^\sA-Za-z\d\x80-\U0010ffff]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")

O200K_PREFIXES = ("gpt-5", "gpt-4o", "gpt-4.1", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")
CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35")


class TokenCounter(Protocol):
    @property
    def exact(self) -> bool: ...

    def count(self, text: str) -> int: ...


@dataclass(frozen=True, slots=True)
class EstimatedCounter:
    exact: bool = False

    def count(self, text: str) -> int:
        tokens = (len(_LETTER.findall(text)) / LETTERS_PER_TOKEN
                  + len(_ONE_TOKEN.findall(text))
                  + len(_NON_ASCII.findall(text)) * NON_ASCII_TOKENS)
        return math.ceil(tokens * ESTIMATE_MARGIN)


ESTIMATOR = EstimatedCounter()


def estimate(text: str) -> int:
    """The service's one token estimate where no exact count is worth its cost: admission's
    budget before the prompt exists, the rate limits' charge, and the size a too-large context
    is reported with. It stays above the real tokenizers (see the module's docstring)."""
    return ESTIMATOR.count(text)


def pieces(text: str, size: int = COUNT_PIECE_CHARS) -> list[str]:
    """`text` in pieces of at most `size` characters, cut before whitespace when there is some
    near the end of a piece (so a word is not split and the counts add up as for the whole)."""
    out: list[str] = []
    start = 0
    while len(text) - start > size:
        end = start + size
        space = max(text.rfind(" ", end - SPLIT_LOOKBACK_CHARS, end),
                    text.rfind("\n", end - SPLIT_LOOKBACK_CHARS, end))
        end = space if space > start else end
        out.append(text[start:end])
        start = end
    out.append(text[start:])
    return out


class BpeCounter:
    """OpenAI's tokenizer, loaded at the first count (it costs ~130 MB of memory, and most
    prompts fit without one: see fitting._fits_by_size). Long texts are counted in pieces:
    the tokenizer refuses inputs of more than 200,000 tokens."""

    exact = True

    def __init__(self, encoding_name: str) -> None:
        self._name = encoding_name
        self._encoding: Any = None

    def count(self, text: str) -> int:
        if self._encoding is None:
            import bpe_openai  # type: ignore[import-untyped]

            self._encoding = bpe_openai.get_encoding(self._name)
        if len(text) <= COUNT_PIECE_CHARS:
            return len(self._encoding.encode_ordinary(text))
        return sum(len(self._encoding.encode_ordinary(piece)) for piece in pieces(text))


@cache
def _bpe(encoding_name: str) -> BpeCounter:
    return BpeCounter(encoding_name)


def counter_for(model: str) -> TokenCounter:
    name = model.lower().split("/")[-1]
    if name.startswith(O200K_PREFIXES):
        return _bpe("o200k_base")
    if name.startswith(CL100K_PREFIXES):
        return _bpe("cl100k_base")
    return EstimatedCounter()
