"""docs/configuration.md and .env.example are what the settings model generates (like
tests/events/test_schemas.py for schemas/), and .env.example's values are valid settings."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from llm_consumer import config_docs
from llm_consumer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_files_match_the_settings_model() -> None:
    drift = config_docs.drift(ROOT)
    assert not drift, (
        f"{', '.join(map(str, drift))} out of date with src/llm_consumer/settings.py: run "
        f"`{config_docs.REGENERATE}` from the repository's root and commit the result")


def test_every_setting_says_what_it_is_for() -> None:
    bare = [name.upper() for name, field in Settings.model_fields.items()
            if not (field.description or "").strip()]
    assert not bare, (f"give these settings a Field(description=...) in settings.py, then "
                      f"run `{config_docs.REGENERATE}`: {', '.join(bare)}")


def test_every_variable_is_in_both_files() -> None:
    markdown = (ROOT / config_docs.MARKDOWN).read_text("utf-8")
    example = (ROOT / config_docs.ENV_EXAMPLE).read_text("utf-8")
    for name in Settings.model_fields:
        assert f"| `{name.upper()}` |" in markdown
        assert f"\n# {name.upper()}=" in example


def test_the_example_defaults_load_as_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncommenting every line of .env.example changes nothing: its values are the defaults,
    spelled as the environment takes them."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for line in (ROOT / config_docs.ENV_EXAMPLE).read_text("utf-8").splitlines():
        if line.startswith("# ") and "=" in line and line[2:].split("=")[0].isupper():
            name, _, value = line[2:].partition("=")
            [unquoted] = shlex.split(value) or [""]
            monkeypatch.setenv(name, unquoted)
    loaded, defaults = Settings(), Settings()
    for name in Settings.model_fields:
        if name != "instance_id":  # a new one each start
            assert getattr(loaded, name) == getattr(defaults, name), name
    monkeypatch.setenv("RATE_LIMIT_TEXT", "7/minute")
    assert Settings().rate_limit_text == "7/minute", "the check reads the environment"


def test_config_check_tells_how_to_regenerate(tmp_path: Path) -> None:
    checked = subprocess.run([sys.executable, "-m", "llm_consumer", "config", "--check",
                              "--root", str(tmp_path)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 1
    assert "run `llm-consumer config --write` to regenerate" in checked.stderr
    written = subprocess.run([sys.executable, "-m", "llm_consumer", "config", "--write",
                              "--root", str(tmp_path)], capture_output=True, text=True,
                             timeout=60)
    assert written.returncode == 0, written.stderr
    assert config_docs.drift(tmp_path) == []
