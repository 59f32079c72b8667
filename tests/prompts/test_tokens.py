"""The estimate used for models without an offline tokenizer never under-counts.

Checked against o200k (OpenAI) and SmolLM2's own tokenizer (the embedded model), on the text
types a request carries: prose, a JSON character sheet, lists and numbers, non-English names.
"""

from __future__ import annotations

import json

import pytest

from llm_consumer.prompts.tokens import EstimatedCounter, counter_for

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
