"""Redis-backed state: keys (every prefix in one place) and the job ledger (idempotency)."""
