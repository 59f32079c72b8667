"""Fitting a chat history: the oldest user/assistant turns go first, the system turns and the
last user turn stay, and a history whose kept part alone is too big is refused."""

from __future__ import annotations

import pytest

from llm_consumer.errors import PermanentFailure
from llm_consumer.prompts.chat import chat_system_message, fit_turns
from llm_consumer.prompts.fitting import MIN_ANSWER_TOKENS, Budget
from llm_consumer.prompts.tokens import counter_for
from llm_consumer.providers.base import Turn

COUNTER = counter_for("gpt-4.1-mini")  # o200k: exact
SYSTEM = chat_system_message(with_schema=False)
PERSONA = Turn("system", "You are Brother Aldric.")


def history(turns: int, words: int = 100) -> list[Turn]:
    said = [Turn("user" if i % 2 == 0 else "assistant", f"turn {i}: " + "rain " * words)
            for i in range(turns)]
    return [PERSONA, *said[:-1], Turn("user", "And now?")]


def budget(window: int, answer: int = 300) -> Budget:
    return Budget(window=window, counter=COUNTER, desired_answer=answer)


def test_a_history_that_fits_is_sent_whole() -> None:
    turns = history(6)
    fitted = fit_turns(SYSTEM, turns, budget=budget(8192))
    assert fitted.turns == tuple(turns) and fitted.dropped == 0
    assert fitted.max_tokens == 300


@pytest.mark.parametrize("window", [1024, 2048, 4096])
def test_the_oldest_turns_go_first(window: int) -> None:
    turns = history(60)
    fitted = fit_turns(SYSTEM, turns, budget=budget(window))
    kept = fitted.turns
    assert kept[0] == PERSONA and kept[-1] == Turn("user", "And now?")
    assert 0 < fitted.dropped < len(turns) - 2
    assert list(kept[1:]) == turns[len(turns) - len(kept) + 1:], "a suffix of the history"
    # The count is exact: what is sent plus the answer fits the window.
    sent = COUNTER.count(SYSTEM) + sum(COUNTER.count(t.content) + 4 for t in kept) + 4
    assert sent + fitted.max_tokens <= window
    assert fitted.max_tokens >= min(300, MIN_ANSWER_TOKENS)


def test_system_turns_anywhere_are_kept() -> None:
    turns = history(40)
    turns.insert(20, Turn("system", "The party has just lost a friend."))
    kept = fit_turns(SYSTEM, turns, budget=budget(1024)).turns
    assert Turn("system", "The party has just lost a friend.") in kept


def test_a_last_turn_that_alone_does_not_fit_is_refused() -> None:
    turns = [PERSONA, Turn("user", "tell me of the keep " * 400)]
    with pytest.raises(PermanentFailure) as raised:
        fit_turns(SYSTEM, turns, budget=budget(1024))
    assert raised.value.code == "context_length_exceeded"
    assert "the last user turn" in raised.value.message


def test_a_history_far_below_the_window_is_kept_whole_without_the_tokenizer() -> None:
    counted: list[str] = []

    class Spy:
        exact = True

        def count(self, text: str) -> int:
            counted.append(text)
            return COUNTER.count(text)

    turns = history(6)
    roomy = Budget(window=400_000, counter=Spy(), desired_answer=300)
    fitted = fit_turns(SYSTEM, turns, budget=roomy)
    assert (fitted.turns, fitted.dropped, fitted.max_tokens) == (tuple(turns), 0, 300)
    assert counted == []  # the size alone shows it fits
    tight = Budget(window=1024, counter=Spy(), desired_answer=300)
    assert fit_turns(SYSTEM, history(60), budget=tight).dropped > 0
    assert counted  # near the window the turns are counted exactly
