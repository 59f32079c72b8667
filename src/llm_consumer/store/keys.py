"""Every Redis key the service uses, built in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "llm:"

    # A request's keys are named by its caller-scoped key (identity.RequestOwner.key), never by
    # the bare event id, and share one hash tag: the claim script touches both together.

    def job(self, request_key: str) -> str:
        return f"{self.prefix}job:{{{request_key}}}"

    def cancelled(self, request_key: str) -> str:
        return f"{self.prefix}cancel:{{{request_key}}}"

    def instance_prefix(self) -> str:
        return f"{self.prefix}instance:"

    def instance(self, instance_id: str) -> str:
        return f"{self.instance_prefix()}{instance_id}"

    # response cache and single-flight (digest: sha256 of the request's canonical form)

    def cache_entry(self, kind: str, digest: str) -> str:
        return f"{self.prefix}cache:{kind}:{digest}"

    def cache_pattern(self, kind: str | None = None) -> str:
        return f"{self.prefix}cache:{kind or '*'}:*"

    def cache_generations(self) -> str:
        return f"{self.prefix}cachegen"

    def cache_invalidated_by(self, event_id: str) -> str:
        return f"{self.prefix}cacheinv:{event_id}"

    def flight(self, digest: str) -> str:
        return f"{self.prefix}flight:{digest}"

    # rate limits: sliding-window log (zset), its token sum, notice throttles

    def rate_log(self, scope: str, key: str) -> str:
        return f"{self.prefix}rl:{scope}:{key}"

    def rate_sum(self, scope: str, key: str) -> str:
        return f"{self.prefix}rls:{scope}:{key}"

    def rate_notice(self, event: str, scope: str, key: str) -> str:
        return f"{self.prefix}rln:{event}:{scope}:{key}"

    # usage analytics, one hash per UTC day

    def usage_day(self, day: str) -> str:
        return f"{self.prefix}usage:{day}"
