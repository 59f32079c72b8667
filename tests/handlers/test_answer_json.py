"""Tolerant reading of JSON answers: the slips small models make, and what stays an error."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from llm_consumer.events.content import CombatAction, ContentValidation
from llm_consumer.events.results import TokenUsage
from llm_consumer.handlers.answer_json import read_answer, tidy
from llm_consumer.handlers.text_generation import problem_with
from llm_consumer.providers.base import TextCompletion

GOOD = {"name": "Shield Bash", "description": "She drives her shield into the ogre."}
TEXT = json.dumps(GOOD)


@pytest.mark.parametrize(("answer", "slips"), [
    (TEXT, ()),
    ("```json\n" + TEXT + "\n```", ("code_fence",)),
    ("```\n" + TEXT + "```", ("code_fence",)),
    ("Here is the JSON you asked for:\n" + TEXT + "\nI hope it helps!", ("prose",)),
    ('{"name": "Shield Bash", "description": "She drives her shield\ninto the\togre."}',
     ("control_chars",)),
    ('{"name": "Shield Bash", "description": "x",}', ("trailing_comma",)),
    ("\ufeff" + TEXT, ()),
    ('{"CombatAction": ' + TEXT + "}", ("wrapped",)),
    ('Sure! ```json\n{"properties": {"name": "Bash", "description": "x\n",},}\n``` Done.',
     ("code_fence", "control_chars", "trailing_comma", "wrapped")),
])
def test_slips_are_tidied(answer: str, slips: tuple[str, ...]) -> None:
    result = read_answer(answer, CombatAction)
    assert result.slips == slips
    assert result.content.name in ("Shield Bash", "Bash")


def test_python_literals_outside_strings_only() -> None:
    answer = '{"valid": True, "score": 0.5, "issues": [{"severity": "info", ' \
             '"message": "True to the None theme", "field": None}]}'
    result = read_answer(answer, ContentValidation)
    assert result.slips == ("python_literal",)
    assert result.content.valid is True
    assert result.content.issues[0].message == "True to the None theme"
    assert result.content.issues[0].field is None


def test_escaped_quotes_and_braces_inside_strings_survive() -> None:
    text = json.dumps({"name": 'The "}" rune', "description": "a \\ and a {brace"})
    assert tidy("note: " + text + " end")[0] == text
    assert read_answer(text, CombatAction).content.name == 'The "}" rune'


@pytest.mark.parametrize("answer", [
    '{"name": "Shield Bash", "description": "She drives',  # cut off
    '{"name": "Shield Bash"}',  # a field missing
    "I cannot write that.",
    '{"outer": {"name": 3}}',
])
def test_what_still_does_not_fit_is_a_validation_error(answer: str) -> None:
    with pytest.raises(ValidationError):
        read_answer(answer, CombatAction)


def test_problem_with_reads_tolerantly_and_names_a_cut_off() -> None:
    usage = TokenUsage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    fenced = TextCompletion(text="```json\n" + TEXT + "\n```", model_used="m", usage=usage)
    cut = TextCompletion(text=TEXT[:30], model_used="m", usage=usage, finish_reason="length")
    assert problem_with(fenced, CombatAction) is None
    assert problem_with(cut, CombatAction) == "the answer was cut off at the token limit"
