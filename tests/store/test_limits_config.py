"""Rate strings and model limits: parsed by table, refused with a one-line reason."""

from __future__ import annotations

import pytest

from llm_consumer.settings import SettingsError, load_settings
from llm_consumer.store.limits_config import ModelRates, Rate, parse_model_rates, parse_rate


@pytest.mark.parametrize(("text", "expected"), [
    ("10000/minute", Rate(10000, 60.0)),
    ("50/second", Rate(50, 1.0)),
    ("3/hour", Rate(3, 3600.0)),
    ("7/30s", Rate(7, 30.0)),
    ("2/1.5s", Rate(2, 1.5)),
    (" 5 / min ", Rate(5, 60.0)),
    ("100/MINUTE", Rate(100, 60.0)),
    ("1/s", Rate(1, 1.0)),
    ("off", None),
    ("none", None),
])
def test_rates_parse(text: str, expected: Rate | None) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "100", "100/", "/minute", "100/fortnight", "0/minute",
                                  "10/0s", "-1/minute", "ten/minute", "1.5/minute"])
def test_bad_rates_are_refused_with_the_format(text: str) -> None:
    with pytest.raises(ValueError, match="N/"):
        parse_rate(text)


def test_model_rates_take_a_string_or_requests_and_tokens() -> None:
    parsed = parse_model_rates({"gpt-5-nano": "1000/minute",
                                "gpt-4-turbo": {"requests": "200/minute", "tokens": "40000/minute"},
                                "local": {"tokens": "off"}})
    assert parsed == {
        "gpt-5-nano": ModelRates(requests=Rate(1000, 60.0)),
        "gpt-4-turbo": ModelRates(requests=Rate(200, 60.0), tokens=Rate(40000, 60.0)),
        "local": ModelRates(tokens=None),
    }
    with pytest.raises(ValueError, match="requests"):
        parse_model_rates({"m": {"rpm": "1/s"}})


@pytest.mark.parametrize(("variable", "value", "fragment"), [
    ("RATE_LIMIT_TEXT", "100/minit", "RATE_LIMIT_TEXT '100/minit': unknown unit"),
    ("RATE_LIMIT_USER", "lots", "RATE_LIMIT_USER 'lots' must look like N/second"),
    ("RATE_LIMIT_MODELS", '{"m": 5}', "RATE_LIMIT_MODELS"),
    ("RATE_LIMIT_MODELS", "{not json", "RATE_LIMIT_MODELS is not valid JSON"),
    ("CACHE_TTLS", '{"character.bio": 60}', "CACHE_TTLS needs known kinds"),
    ("PRICES", '{"m": {"prompt": 1}}', "PRICES 'm' needs prompt and completion prices"),
])
def test_settings_name_the_bad_variable(monkeypatch: pytest.MonkeyPatch, variable: str,
                                        value: str, fragment: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(need_secret=False)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_defaults_follow_the_integration_guide() -> None:
    settings = load_settings(need_secret=False)
    assert [parse_rate(getattr(settings, name)) for name in (
        "rate_limit_global", "rate_limit_user", "rate_limit_text", "rate_limit_theme",
        "rate_limit_validation", "rate_limit_image_text_to_image", "rate_limit_image_to_image",
        "rate_limit_image",
    )] == [Rate(10000, 60.0), Rate(1000, 60.0), Rate(100, 60.0), Rate(50, 60.0),
           Rate(100, 60.0), Rate(50, 60.0), Rate(50, 60.0), Rate(50, 60.0)]
    assert parse_model_rates(settings.rate_limit_models) == {
        "gpt-5-nano": ModelRates(Rate(1000, 60.0)),
        "gpt-4-turbo": ModelRates(Rate(200, 60.0)), "gpt-3.5-turbo": ModelRates(Rate(500, 60.0))}
