"""`llm-consumer cache {warm,invalidate,stats}` and `llm-consumer usage` as processes, against
the real Redis, with the fake OpenAI server as the configured provider."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from llm_consumer.settings import Settings
from tests.bus.test_cache_e2e import SHEET, result_of
from tests.conftest import Service

LOCATION = {"kind": "world.location", **SHEET}
BACKSTORY = {"kind": "character.backstory", **SHEET}


async def cli(settings: Settings, fake_openai: Any, *args: str,
              ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SECRET_"))}
    env.update({"REDIS_URL": settings.redis_url, "REDIS_PREFIX": settings.redis_prefix,
                "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url,
                "COLUMNS": "200", "LOG_LEVEL": "WARNING"})
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "llm_consumer", *args], env=env,
        capture_output=True, text=True, timeout=120)


def jsonl(path: Path, *items: dict[str, Any]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(item) for item in items) + b"\n")
    return path


async def test_warm_then_the_service_answers_from_the_cache(
        openai_service: Any, fake_openai: Any, tmp_path: Path) -> None:
    service: Service = await openai_service()
    warmed = await cli(service.settings, fake_openai, "cache", "warm",
                       str(jsonl(tmp_path / "w.jsonl", BACKSTORY, LOCATION, BACKSTORY)))
    assert warmed.returncode == 0, warmed.stderr
    assert "3 request(s): 2 generated, 1 already cached, 0 failed" in warmed.stdout
    assert "warming the cache" in warmed.stdout and "3/3" in warmed.stdout
    assert len(fake_openai.chat_requests) == 2
    assert result_of(await service.request("world.location", SHEET))["cached"] is True
    again = await cli(service.settings, fake_openai, "cache", "warm",
                      str(tmp_path / "w.jsonl"))
    assert "0 generated, 3 already cached" in again.stdout
    refreshed = await cli(service.settings, fake_openai, "cache", "warm", "--refresh",
                          str(tmp_path / "w.jsonl"))
    assert "2 generated, 1 already cached" in refreshed.stdout or (
        "3 generated, 0 already cached" in refreshed.stdout)
    assert len(fake_openai.chat_requests) in (4, 5)


async def test_invalidate_and_stats(openai_service: Any, fake_openai: Any,
                                    tmp_path: Path) -> None:
    service: Service = await openai_service()
    await cli(service.settings, fake_openai, "cache", "warm",
              str(jsonl(tmp_path / "w.jsonl", BACKSTORY, LOCATION)))
    stats = await cli(service.settings, fake_openai, "cache", "stats")
    assert stats.returncode == 0, stats.stderr
    assert "character.backstory" in stats.stdout and "world.location" in stats.stdout
    as_json = await cli(service.settings, fake_openai, "cache", "stats", "--json")
    rows = {row["kind"]: row for row in map(orjson.loads, as_json.stdout.splitlines())}
    assert rows["world.location"]["entries"] == 1 and rows["character.backstory"]["entries"] == 1
    dropped = await cli(service.settings, fake_openai, "cache", "invalidate", "--kind",
                        "world.location")
    assert dropped.returncode == 0, dropped.stderr
    assert "invalidated world.location: 1 cached answer(s) removed" in dropped.stdout
    assert result_of(await service.request("world.location", SHEET))["cached"] is False
    assert result_of(await service.request("character.backstory", SHEET))["cached"] is True
    everything = await cli(service.settings, fake_openai, "cache", "invalidate")
    assert "invalidated every kind: 2 cached answer(s) removed" in everything.stdout
    unknown = await cli(service.settings, fake_openai, "cache", "invalidate", "--kind", "poem")
    assert unknown.returncode == 2 and "unknown kind 'poem'" in unknown.stderr


async def test_usage_table(openai_service: Any, fake_openai: Any, tmp_path: Path) -> None:
    service: Service = await openai_service()
    await cli(service.settings, fake_openai, "cache", "warm",
              str(jsonl(tmp_path / "w.jsonl", BACKSTORY, LOCATION)))
    for _ in range(2):
        await service.request("world.location", SHEET)
    table = await cli(service.settings, fake_openai, "usage")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    row = next(line for line in lines if "world.location" in line and "tester" in line)
    assert "gpt-5-nano" in row and row.split("│")[-2].strip() == "2", "two cache hits"
    assert any("cache-warm" in line and "character.backstory" in line for line in lines)
    assert any("total" in line for line in lines) and "$0.0" in table.stdout
    lines = (await cli(service.settings, fake_openai, "usage", "--json")).stdout.splitlines()
    rows = [orjson.loads(line) for line in lines]  # JSON Lines: one row each
    [hits] = [r for r in rows if r["kind"] == "world.location" and r["user"] == "tester"]
    assert hits["cache_hits"] == 2 and hits["model"] == "gpt-5-nano"
    mine = await cli(service.settings, fake_openai, "usage", "--user", "tester", "--days", "7")
    assert "cache-warm" not in mine.stdout and "tester" in mine.stdout
    none = await cli(service.settings, fake_openai, "usage", "--model", "gpt-4-turbo")
    assert "no usage recorded" in none.stdout
    bad = await cli(service.settings, fake_openai, "usage", "--day", "yesterday")
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr


async def test_a_bad_line_stops_warming_before_anything_is_paid(
        settings_factory: Any, fake_openai: Any, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(orjson.dumps(LOCATION).decode() + "\n{oops\n"
                    + orjson.dumps({"kind": "poem", "context": {}}).decode() + "\n")
    result = await cli(settings_factory(), fake_openai, "cache", "warm", str(path))
    assert result.returncode == 2
    assert "line 2" in result.stderr and "line 3" in result.stderr
    assert fake_openai.chat_requests == []
