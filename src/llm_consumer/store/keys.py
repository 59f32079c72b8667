"""Every Redis key the service uses, built in one place, hash-tagged by what must be atomic.

A Redis Cluster runs a script only when all its keys are in one slot; the slot of a key with a
`{tag}` is the tag's. So the keys of each script share one tag:
- a request's job record and cancel marker: `{<request key>}` (claim.lua);
- a cache entry and its single-flight claim: `{<request digest>}` (lookup.lua, store.lua);
- every rate-limit log, token sum, notice throttle and provider budget: `{limits}`
  (limits.lua, restamp.lua, feedback): one tag, so one admission's check over the global, user,
  operation and model scopes stays one atomic script, and exact across replicas. It puts the
  limiter on one shard: a few small keys per active user and model, one script per admission.
Keys used on their own (cache generations, usage per day, instance liveness, invalidation
marks) carry no tag. A REDIS_PREFIX with a `{tag}` of its own puts every key in that one slot
(what one shard with a prefix tag gave before): correct, but nothing is spread.
"""

from __future__ import annotations

from dataclasses import dataclass

LIMITS_TAG = "{limits}"


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
        return f"{self.prefix}cache:{kind}:{{{digest}}}"

    def cache_pattern(self, kind: str | None = None) -> str:
        return f"{self.prefix}cache:{kind or '*'}:*"

    def cache_generations(self) -> str:
        return f"{self.prefix}cachegen"

    def control_refused(self, digest: str) -> str:
        """Marks a refused control event answered (by its body's digest: every replica gets
        the same copy)."""
        return f"{self.prefix}ctlrefused:{{{digest}}}"

    def cache_invalidated_by(self, event_id: str) -> str:
        return f"{self.prefix}cacheinv:{event_id}"

    def flight(self, digest: str) -> str:
        return f"{self.prefix}flight:{{{digest}}}"

    # rate limits: sliding-window log (zset), its token sum, notice throttles

    def rate_log(self, scope: str, key: str) -> str:
        return f"{self.prefix}rl:{LIMITS_TAG}:{scope}:{key}"

    def rate_sum(self, scope: str, key: str) -> str:
        return f"{self.prefix}rls:{LIMITS_TAG}:{scope}:{key}"

    def rate_notice(self, event: str, scope: str, key: str) -> str:
        return f"{self.prefix}rln:{LIMITS_TAG}:{event}:{scope}:{key}"

    # provider capabilities proven by any process (store/capabilities.py)

    def capabilities(self, scope_digest: str) -> str:
        return f"{self.prefix}caps:{scope_digest}"

    # usage analytics, one hash per UTC day

    def usage_day(self, day: str) -> str:
        return f"{self.prefix}usage:{day}"
