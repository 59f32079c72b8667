"""Batch delivery: requests that opt in (`options.delivery: "batch"`) are admitted as usual, then
stored in Redis instead of being sent; a coordinator groups them into OpenAI Batch API batches,
polls them and publishes each answer as its own result (docs/text.md, "Batch delivery")."""

from __future__ import annotations

from llm_consumer.errors import ServiceError


class Batched(ServiceError):
    """Not a failure: the request's call waits in Redis for the next batch. The consumer
    answers it with job.status `batched` and acks the message."""

    def __init__(self, entry_id: str) -> None:
        super().__init__(f"stored for batch delivery as {entry_id}")
        self.entry_id = entry_id
