"""The estimate used for models without an offline tokenizer never under-counts.

Checked against o200k (OpenAI) and SmolLM2's own tokenizer (the embedded model), on the text
types a request carries: prose, a JSON character sheet, lists and numbers, non-English names.
"""

from __future__ import annotations

import json
import random

import pytest

from llm_consumer.prompts.tokens import (
    COUNT_PIECE_CHARS,
    EstimatedCounter,
    counter_for,
    pieces,
)

SAMPLES = {
    "prose": "Mira Thornvale grew up in the alleys of Waterdeep, where she learned that a "
             "quick tongue and quicker fingers kept her fed. " * 20,
    "sheet": json.dumps({"name": "Mira", "class": "Rogue", "level": 3, "stats": {
        "str": 8, "dex": 17, "con": 12, "int": 13, "wis": 10, "cha": 14},
        "skills": ["stealth", "sleight of hand", "acrobatics", "deception"]} ),
    "numbers": " ".join(str(n * 37 % 1000) for n in range(400)),
    "names": "Ægir Þórsson, Zoë Ng'ombe, Łucja Wróbel, 黒田 雪, Ольга Ковалёва. " * 15,
    "symbols": "{[()]}<> -- ~~ ** :: ;; !! ?? " * 40,
}


@pytest.mark.parametrize("model", ["gpt-5-nano", "gpt-4"])
@pytest.mark.parametrize("sample", SAMPLES, ids=list(SAMPLES))
def test_estimate_is_an_upper_bound_of_openai_tokenizers(sample: str, model: str) -> None:
    text = SAMPLES[sample]
    exact = counter_for(model).count(text)
    assert exact <= EstimatedCounter().count(text) <= exact * 3


@pytest.mark.slow
@pytest.mark.parametrize("sample", SAMPLES, ids=list(SAMPLES))
def test_estimate_is_an_upper_bound_of_smollm2(sample: str) -> None:
    from llama_cpp import Llama

    from llm_consumer.providers.local import default_model_path

    vocab = Llama(default_model_path(), vocab_only=True, verbose=False)
    text = SAMPLES[sample]
    exact = len(vocab.tokenize(text.encode(), add_bos=False))
    assert EstimatedCounter().count(text) >= exact


def made_up_prose(chars: int) -> str:
    rng = random.Random(5)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(5000)]
    return " ".join(rng.choice(words) for _ in range(chars // 5))[:chars]


def test_texts_over_the_tokenizers_limit_are_counted_in_pieces() -> None:
    counter = counter_for("gpt-5-nano")
    text = made_up_prose(900_000)  # about 400,000 tokens: bpe_openai refuses 200,000 at once
    assert counter.count(text) > 200_000
    below = text[:300_000]  # counted in pieces, yet exactly as the tokenizer counts it whole
    assert len(pieces(below)) > 1
    assert counter.count(below) == len(counter._encoding.encode_ordinary(below))
    assert "".join(pieces(text)) == text
    assert all(len(piece) <= COUNT_PIECE_CHARS for piece in pieces("x" * 100_001))
