"""OpenAI's Batch API through the SDK: upload a JSONL file of chat-completions calls (purpose
`batch`), create a batch over it (`/v1/chat/completions`, a 24 h window), read its status, cancel
it, download its output and error files.

Errors are translated at this boundary (openai_errors), as for realtime calls: the coordinator
only sees the service's error tree. The SDK is imported when a client is made (BATCH_ENABLED).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson

from llm_consumer.errors import ServiceError
from llm_consumer.providers.openai_errors import translate_error
from llm_consumer.providers.openai_sdk import LazyClient

if TYPE_CHECKING:
    import openai

ENDPOINT: Final = "/v1/chat/completions"
COMPLETION_WINDOW: Final = "24h"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True, slots=True)
class BatchState:
    """What the API says about a batch, as far as the coordinator needs it."""

    id: str
    status: str  # validating, in_progress, finalizing, completed, failed, expired, cancelling,
    # cancelled
    output_file_id: str | None
    error_file_id: str | None
    errors: tuple[str, ...]  # a failed batch's reasons (validation of the input file)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def jsonl(lines: Iterable[tuple[str, Mapping[str, Any]]]) -> bytes:
    """The input file: one `{custom_id, method, url, body}` line per call."""
    return b"".join(orjson.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT,
                                  "body": body}) + b"\n" for custom_id, body in lines)


def read_lines(content: bytes) -> dict[str, dict[str, Any]]:
    """An output or error file's lines by `custom_id` (lines without one are skipped)."""
    found: dict[str, dict[str, Any]] = {}
    for raw in content.splitlines():
        if not raw.strip():
            continue
        line = orjson.loads(raw)
        if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
            found[line["custom_id"]] = line
    return found


class OpenAIBatchClient:
    def __init__(self, api_key: str, *, base_url: str | None, timeout_s: float) -> None:
        self._sdk = LazyClient(api_key, base_url, timeout_s)

    @property
    def _client(self) -> openai.AsyncOpenAI:
        return self._sdk.get()

    async def submit(self, lines: Iterable[tuple[str, Mapping[str, Any]]], *,
                     metadata: Mapping[str, str]) -> tuple[str, str]:
        """Upload the input file and create the batch: (file id, batch id)."""
        import openai

        try:
            uploaded = await self._client.files.create(
                file=("batch.jsonl", jsonl(lines), "application/jsonl"), purpose="batch")
            batch = await self._client.batches.create(
                input_file_id=uploaded.id, endpoint=ENDPOINT,
                completion_window=COMPLETION_WINDOW, metadata=dict(metadata))
        except openai.OpenAIError as err:
            raise _translated(err) from err
        return uploaded.id, batch.id

    async def state(self, batch_id: str) -> BatchState:
        import openai

        try:
            batch = await self._client.batches.retrieve(batch_id)
        except openai.OpenAIError as err:
            raise _translated(err) from err
        errors = tuple(f"{e.code}: {e.message}" for e in (batch.errors.data or ())
                       ) if batch.errors is not None else ()
        return BatchState(batch.id, batch.status, batch.output_file_id, batch.error_file_id,
                          errors)

    async def cancel(self, batch_id: str) -> None:
        import openai

        try:
            await self._client.batches.cancel(batch_id)
        except openai.OpenAIError as err:
            raise _translated(err) from err

    async def lines(self, file_id: str | None) -> dict[str, dict[str, Any]]:
        """An output or error file's lines by custom_id (none for no file)."""
        if not file_id:
            return {}
        import openai

        try:
            content = await self._client.files.content(file_id)
        except openai.OpenAIError as err:
            raise _translated(err) from err
        return read_lines(content.content)

    async def aclose(self) -> None:
        await self._sdk.aclose()


def _translated(err: openai.OpenAIError) -> ServiceError:
    return translate_error(err, "batch")
