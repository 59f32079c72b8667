"""Admission tests run against the real local Redis under their own key prefix (the store
tests' fixtures), with no broker: requests are built in memory and handlers count calls."""

from __future__ import annotations

from tests.store.conftest import keys, redis  # noqa: F401 - fixtures shared with store tests
