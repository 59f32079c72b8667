"""Redis-backed state: keys (every prefix in one place), the job ledger (idempotency), and the
guard in front of the provider: response cache, single-flight, rate limits, usage."""
