"""`inject --batch`: a request sent for batch delivery, followed until its batched answer."""

from __future__ import annotations

import json
from typing import Any

from tests.cli.test_dlq import cli_env
from tests.cli.test_inject import run_cli
from tests.conftest import SECRET, Service


async def test_inject_batch_waits_for_the_batched_answer(openai_service: Any,
                                                         fake_openai: Any) -> None:
    service: Service = await openai_service(batch_window_s=0.3, batch_poll_s=0.2)
    env = {**cli_env(service.settings), "SECRET_KEY": SECRET}
    code, stdout, stderr = await run_cli(
        env, "inject", "character.backstory", "--batch", "--json",
        "--context", json.dumps({"name": "Mira"}), timeout_s=60)
    assert code == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["data"]["state"] for e in events if e["type"] == "job.status"] == [
        "running", "batched", "completed"]
    assert events[-1]["type"] == "content.generated"
    assert fake_openai.chat_requests == []
    assert [b["status"] for b in fake_openai.batches.values()] == ["completed"]
