"""Context fitting: oversized contexts shrink to the window, least important parts first."""

from __future__ import annotations

import random
import time

import pytest

from llm_consumer.errors import PermanentFailure
from llm_consumer.prompts.fitting import (
    Budget,
    ContextWindows,
    Fitted,
    fit_context,
    fit_data,
    serialize,
)
from llm_consumer.prompts.tokens import BpeCounter, EstimatedCounter, TokenCounter, counter_for

O200K = counter_for("gpt-5-nano")


def sheet_with_notes(chars: int) -> dict[str, object]:
    rng = random.Random(7)
    words = ["dragon", "tavern", "oath", "shadow", "blade", "river", "crown", "ember", "vault"]
    notes = " ".join(rng.choice(words) for _ in range(chars // 6))[:chars]
    return {
        "name": "Mira Thornvale", "race": "Half-Elf", "class": "Rogue", "level": 3,
        "background": "Urchin",
        "session_notes": notes,
        "inventory": [f"item {i}: a trinket of note" for i in range(400)],
        "relationships": {"mentor": "Old Garr, a retired thief " * 50, "rival": "Sela"},
    }


def test_small_context_is_left_alone() -> None:
    context = {"name": "Mira", "class": "Rogue"}
    fitted, report = fit_context(context, fixed_text="system prompt",
                                 budget=Budget(8192, O200K, 900))
    assert fitted == context
    assert report.actions == [] and report.saved_tokens == 0
    assert report.max_tokens == 900


def test_200k_characters_fit_an_8k_window_keeping_the_identity_fields() -> None:
    context = sheet_with_notes(200_000)
    fixed = "x " * 500
    fitted, report = fit_context(context, fixed_text=fixed, budget=Budget(8192, O200K, 900))
    prompt_tokens = O200K.count(fixed) + O200K.count(serialize(fitted))
    assert prompt_tokens + report.max_tokens <= 8192
    assert report.max_tokens == 900, "the answer keeps its full budget"
    for key in ("name", "race", "class", "level", "background"):
        assert fitted[key] == context[key]
    assert "session_notes" in fitted or "inventory" in fitted, "trimmed, not wiped"
    assert report.original_tokens > 30_000 and report.saved_tokens > 25_000
    assert report.exact_count


def test_required_fields_are_trimmed_last() -> None:
    context = {"text": "The knight rode into town. " * 4000, "notes": "aside " * 4000}
    fitted, _ = fit_context(context, fixed_text="", budget=Budget(4096, O200K, 700),
                            keep=frozenset({"text"}))
    assert "notes" not in fitted, "the unimportant field went first"
    assert fitted["text"].startswith("The knight rode into town.")


def test_window_of_a_chain_is_its_smallest() -> None:
    windows = ContextWindows({"big": 128_000, "small": 4096}, default=8192)
    assert windows.budget_for(("big", "small"), 500).window == 4096
    assert windows.budget_for(("unknown",), 500).window == 8192


def test_unknown_models_use_the_calibrated_estimate() -> None:
    counter = counter_for("llama-3-8b-instruct")
    assert isinstance(counter, EstimatedCounter) and not counter.exact
    assert counter_for("gpt-5-nano").exact and counter_for("gpt-4").exact


def test_a_prompt_that_fits_by_its_size_never_loads_the_tokenizer() -> None:
    counter = BpeCounter("o200k_base")  # a fresh one: the shared O200K may be loaded already
    context = {"name": "Mira Thornvale", "class": "Rogue", "notes": "an oath to a river " * 100}
    fitted, report = fit_context(context, fixed_text="system prompt",
                                 budget=Budget(8192, counter, 900))
    assert fitted == context and report.max_tokens == 900
    assert counter._encoding is None, "the UTF-8 size settled it"
    # The same prompt in a window too small for that bound is counted exactly.
    fitted, report = fit_context(context, fixed_text="system prompt",
                                 budget=Budget(1500, counter, 900))
    assert counter._encoding is not None and report.exact_count


_RNG = random.Random(3)
WORDS = ["".join(_RNG.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_RNG.randint(2, 9)))
         for _ in range(4000)]


def varied_words(chars: int, seed: int = 3) -> str:
    """Text that compresses like prose: a few thousand distinct made-up words."""
    rng = random.Random(seed)
    return " ".join(rng.choices(WORDS, k=chars // 5))[:chars]


FULL_THEME = {"preset": "dark-fantasy", "genre": "g" * 200, "tone": "t" * 200,
              "style": "s" * 200, "language_patterns": [" ".join(["pattern"] * 25)] * 20}


def data_tokens(counter: TokenCounter, fitted: Fitted) -> int:
    theme = counter.count(serialize(fitted.theme)) if fitted.theme is not None else 0
    return counter.count(serialize(fitted.context)) + theme


def test_theme_and_context_are_fitted_together() -> None:
    context = {"name": "Mira", "class": "Rogue", "notes": varied_words(40_000)}
    fixed = "x " * 300
    fitted = fit_data(context, FULL_THEME, fixed_text=fixed, budget=Budget(4096, O200K, 700))
    assert fitted.theme is not None
    assert O200K.count(fixed) + data_tokens(O200K, fitted) + fitted.report.max_tokens <= 4096
    assert fitted.report.max_tokens == 700
    for key in ("preset", "genre", "tone", "style"):
        assert fitted.theme[key] == FULL_THEME[key], "the theme's key fields are kept"
    assert fitted.context["name"] == "Mira" and fitted.context["class"] == "Rogue"
    # A window that cannot hold the whole theme next to the sheet trims the theme too.
    small = fit_data({"name": "Mira"}, FULL_THEME, fixed_text=fixed,
                     budget=Budget(1024, O200K, 700))
    assert small.theme is not None and small.theme != FULL_THEME
    assert O200K.count(fixed) + data_tokens(O200K, small) + small.report.max_tokens <= 1024
    assert small.context == {"name": "Mira"} and small.theme["tone"] == FULL_THEME["tone"]


def test_escaped_characters_are_counted_as_sent() -> None:
    # Each "<" is sent as "\u003c": six characters. The fit counts the escaped text.
    context = {"name": "Mira", "notes": "<>&" * 20_000}
    for counter in (O200K, EstimatedCounter()):
        fitted = fit_data(context, None, fixed_text="rules", budget=Budget(8192, counter, 900))
        assert counter.count("rules") + data_tokens(counter, fitted) + 900 <= 8192
        assert "notes" in fitted.context, "trimmed, not wiped"


@pytest.mark.parametrize("counter", [O200K, EstimatedCounter()], ids=["o200k", "estimate"])
def test_a_megabyte_of_words_fits_quickly(counter: TokenCounter) -> None:
    context = {"name": "Mira", "notes": varied_words(900_000),
               "journal": [varied_words(300, seed=i) for i in range(300)]}
    started = time.perf_counter()
    fitted = fit_data(context, FULL_THEME, fixed_text="rules",
                      budget=Budget(8192, counter, 900))
    elapsed = time.perf_counter() - started
    assert fitted.report.original_tokens > 200_000
    assert counter.count("rules") + data_tokens(counter, fitted) + 900 <= 8192
    assert fitted.context["name"] == "Mira" and "notes" in fitted.context
    assert elapsed < 10, f"fitting took {elapsed:.1f}s"


def test_many_tiny_fields_fit_in_a_few_rounds() -> None:
    context = {"name": "Mira", **{f"k{i}": "v" for i in range(60_000)}}
    started = time.perf_counter()
    fitted = fit_data(context, None, fixed_text="rules", budget=Budget(2048, O200K, 500))
    assert time.perf_counter() - started < 5
    assert O200K.count("rules") + data_tokens(O200K, fitted) + 500 <= 2048
    assert fitted.context["name"] == "Mira" and len(fitted.context) > 10
    assert len(fitted.report.actions) < 10


def test_numbers_alone_are_cut_as_text() -> None:
    # Numbers are never halved or dropped one by one: the context is cut as one text.
    context = {f"k{i}": i for i in range(5_000)}
    fitted = fit_data(context, None, fixed_text="rules", budget=Budget(1024, O200K, 500))
    assert set(fitted.context) == {"truncated_context"}
    assert fitted.report.actions[-1].startswith("cut the whole context to ")
    assert O200K.count("rules") + data_tokens(O200K, fitted) + 256 <= 1024


def test_a_window_too_small_for_the_services_own_text_is_refused() -> None:
    with pytest.raises(PermanentFailure) as caught:
        fit_data({"name": "Mira"}, None, fixed_text="word " * 2000,
                 budget=Budget(1024, O200K, 500))
    assert caught.value.code == "context_length_exceeded"
    assert "1024-token window" in caught.value.message


@pytest.mark.parametrize("counter", [O200K, EstimatedCounter()], ids=["o200k", "estimate"])
@pytest.mark.parametrize("notes", ["<>&" * 300_000, varied_words(900_000)],
                         ids=["escapes", "words"])
def test_the_bulk_is_cut_and_the_rest_kept(counter: TokenCounter, notes: str) -> None:
    # A megabyte of notes beside a full theme: the notes shrink, the theme stays whole, and
    # the fit is close to the window (neither over nor far under it).
    fitted = fit_data({"name": "Mira", "notes": notes}, FULL_THEME, fixed_text="rules",
                      budget=Budget(8192, counter, 900))
    assert fitted.theme == FULL_THEME
    data = data_tokens(counter, fitted)
    limit = 8192 - 900 - counter.count("rules") - 2 * 4 - 64
    assert limit * 0.75 <= data <= limit, (data, limit)
    assert fitted.context["notes"].startswith(notes[:500])
    assert len(fitted.report.actions) <= 8


def test_one_huge_list_is_cut_in_a_few_rounds() -> None:
    context = {"name": "Mira", "rolls": [[i] for i in range(150_000)]}
    fitted = fit_data(context, None, fixed_text="rules", budget=Budget(8192, O200K, 900))
    assert fitted.context["rolls"] == context["rolls"][: len(fitted.context["rolls"])]
    assert 100 < len(fitted.context["rolls"]) < 5_000
    assert len(fitted.report.actions) <= 6
