"""`llm-consumer inject chat.completion --messages-file chat.json`, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llm_consumer.cli.common import Exit
from tests.cli.test_dlq import cli_env
from tests.cli.test_inject import run_cli
from tests.conftest import SECRET, Service

TURNS = [{"role": "system", "content": "You are a terse dwarven smith."},
         {"role": "user", "content": "How much for the axe?"}]


async def test_inject_a_chat_from_a_messages_file(openai_service: Any, fake_openai: Any,
                                                  tmp_path: Path) -> None:
    service: Service = await openai_service(openai_model="gpt-4.1-mini")
    env = {**cli_env(service.settings), "SECRET_KEY": SECRET}
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps({"messages": TURNS, "model": {"top_p": 0.5}}), "utf-8")
    code, stdout, stderr = await run_cli(env, "inject", "chat.completion", "--json",
                                         "--messages-file", str(chat), timeout_s=120)
    assert code == 0, stderr
    final = [json.loads(line) for line in stdout.splitlines()][-1]
    assert final["type"] == "content.generated", final
    assert final["data"]["kind"] == "chat.completion"
    assert final["data"]["content"]["role"] == "assistant"
    [call] = fake_openai.chat_requests
    assert call.body["messages"][1:] == TURNS and call.body["top_p"] == 0.5

    bare = tmp_path / "turns.json"  # a plain list of turns is enough
    bare.write_text(json.dumps(TURNS[1:]), "utf-8")
    code, stdout, stderr = await run_cli(env, "inject", "chat.completion", "--json",
                                         "--messages-file", str(bare), timeout_s=120)
    assert code == 0, stderr
    assert json.loads(stdout.splitlines()[-1])["type"] == "content.generated"


async def test_a_messages_file_that_is_not_a_chat_is_one_line(settings_factory: Any,
                                                              tmp_path: Path) -> None:
    env = {**cli_env(settings_factory()), "SECRET_KEY": SECRET}
    wrong = tmp_path / "chat.json"
    wrong.write_text('{"turns": []}', "utf-8")
    code, _, stderr = await run_cli(env, "inject", "chat.completion", "--messages-file",
                                    str(wrong))
    assert code == Exit.USAGE
    assert "messages" in stderr and len(stderr.strip().splitlines()) == 1
