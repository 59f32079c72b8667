"""The garbage collector set up for a serving process (`run`).

A request waits seconds on its provider, so its objects (a few hundred) are alive at every
collection of that time. With CPython's defaults a worker holding 400 requests ran 13 young
collections a second, each promoting what it found, and a full collection walked them all every
second or two (125-290 ms). So the start-up heap is frozen (about 140,000 objects the collector
never needs to look at again) and collections are scheduled by time:

- CPython starts a young collection when allocations minus deallocations pass a threshold, and
  the deallocation of an old object counts too. At a steady rate the requests that end (old by
  then) cancel the ones that start, so the count hardly moves while the young generation keeps
  growing: at the platform rate (167 requests a second, 835 waiting on a 5 s provider) a worker
  went 8-10 s between young collections, and each walked 150,000-220,000 objects and stopped
  the event loop for 130-250 ms (gc.callbacks timings; p99 of the added latency 237-256 ms).
- Collected every YOUNG_EVERY_S instead, the young generation holds about 11,000 objects and
  stops the loop for 8 ms at most (p99 46-59 ms in the same runs), for 0.3-0.7% more of a core.
  The middle generation (the requests still waiting) is collected every MIDDLE_EVERY young
  collections (30 s, about 110 ms for 170,000 objects) and everything every FULL_EVERY (5 min),
  so cyclic garbage is freed within 30 s (little of a request's garbage is cyclic: reference
  counting frees it). The allocation threshold stays as a backstop for bursts.
"""

from __future__ import annotations

import asyncio
import gc

# Tracked objects allocated (net) between young collections, as a backstop; CPython's is 700.
YOUNG_GC_THRESHOLD = 25_000
YOUNG_EVERY_S = 0.25
MIDDLE_EVERY = 120  # young collections between two of the middle generation (30 s)
FULL_EVERY = 1200  # young collections between two full ones (5 min)


def tune_collector() -> None:
    """Collect once and freeze what is left (modules, clients, schemas, settings: live for the
    whole run; frozen objects are still freed by reference counting, only the collector stops
    looking at them), and raise the young generation's allocation threshold to
    YOUNG_GC_THRESHOLD: `collect_by_time` does the regular collections."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


async def collect_by_time(every_s: float = YOUNG_EVERY_S, *, middle_every: int = MIDDLE_EVERY,
                          full_every: int = FULL_EVERY) -> None:
    """Until cancelled: the young generation every `every_s`, the middle one every
    `middle_every` of those, everything every `full_every`."""
    ticks = 0
    while True:
        await asyncio.sleep(every_s)
        ticks += 1
        gc.collect(2 if ticks % full_every == 0 else 1 if ticks % middle_every == 0 else 0)
