"""A provider's internals (file paths, line numbers, stack frames) never reach an event, and a
server's request-validation 500 is one permanent failure, not five attempts."""

from __future__ import annotations

from typing import Any

from llm_consumer.events import catalog
from tests.conftest import Service
from tests.fakes.openai_server import ErrorReply, llama_cpp_validation_error

SHEET = {"context": {"name": "Mira Thornvale", "race": "Half-Elf", "class": "Rogue"}}
VLLM_LIKE = ErrorReply(
    400,
    'Traceback (most recent call last):\n  File "/usr/lib/python3/dist-packages/vllm/'
    'entrypoints/openai/serving_chat.py", line 212, in create_chat_completion\n    raise '
    "ValueError(msg)\nValueError: 'messages' must not be empty (see /opt/vllm/docs/x.md:3)",
    "BadRequestError",
)


async def test_a_providers_stack_trace_stays_out_of_the_failure_event(
        openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service()
    fake_openai.script(VLLM_LIKE)
    result = await service.request("world.location", SHEET)
    failed = result.final
    assert failed["type"] == catalog.GENERATION_FAILED
    error = failed["data"]["error"]
    assert error == {"code": "invalid_request", "retryable": False, "message": (
        "openai 400: ValueError: 'messages' must not be empty (see <path>)")}
    assert failed["data"]["attempts"] == 1 and len(fake_openai.chat_requests) == 1


async def test_a_validation_500_with_a_pinned_mode_fails_once_without_internals(
        openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service(openai_structured_output="json_schema")
    fake_openai.responder = lambda body: llama_cpp_validation_error()
    result = await service.request("world.location", SHEET)
    failed = result.final
    assert failed["type"] == catalog.GENERATION_FAILED
    message = failed["data"]["error"]["message"]
    assert failed["data"]["error"]["code"] == "invalid_request"
    assert "app.py" not in message and "line" not in message and "/srv" not in message
    assert "Input should be 'text' or 'json_object'" in message
    assert failed["data"]["error"]["retryable"] is False and failed["data"]["attempts"] == 1
    assert len(fake_openai.chat_requests) == 1, "not retried"
