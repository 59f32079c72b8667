"""Every Redis key the service uses, built in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "llm:"

    def job(self, request_id: str) -> str:
        return f"{self.prefix}job:{request_id}"

    def cancelled(self, request_id: str) -> str:
        return f"{self.prefix}cancel:{request_id}"

    def instance_prefix(self) -> str:
        return f"{self.prefix}instance:"

    def instance(self, instance_id: str) -> str:
        return f"{self.instance_prefix()}{instance_id}"
