"""The OpenAI SDK's client, for the APIs the service still calls through it (Batch, Images),
made on first use: importing the SDK costs about 19 MB of RSS per process, which a process
serving text only (chat calls go through chat_http) never needs to pay."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import openai


@dataclass
class LazyClient:
    api_key: str
    base_url: str | None
    timeout_s: float
    _made: openai.AsyncOpenAI | None = field(default=None, init=False, repr=False)

    def get(self) -> openai.AsyncOpenAI:
        """The client (no retries of its own: the service decides what is retried)."""
        if self._made is None:
            import openai

            self._made = openai.AsyncOpenAI(api_key=self.api_key, base_url=self.base_url,
                                            timeout=self.timeout_s, max_retries=0)
        return self._made

    async def aclose(self) -> None:
        if self._made is not None:
            await self._made.close()
