"""Context fitting: oversized contexts shrink to the window, least important parts first."""

from __future__ import annotations

import random

from llm_consumer.prompts.fitting import Budget, ContextWindows, fit_context, serialize
from llm_consumer.prompts.tokens import BpeCounter, EstimatedCounter, counter_for

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
