"""Where the service's CPU goes: py-spy on the service process, folded into a few groups.

Optional: `bench/run_all.py --profile` uses `py-spy` when it is on PATH, next to this Python
or named by $PY_SPY (`.venv/bin/pip install py-spy`). Shares are of the samples of the
service's main thread (the event loop), counted inclusively: a group is every sample with
that function anywhere on the stack, so groups overlap where they nest.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

MAIN_THREAD = "(llm_consumer/__main__.py"
GROUPS: tuple[tuple[str, str], ...] = (
    ("consumer task (one delivery, the handler aside)", "Consumer.on_message"),
    ("  intake (token, reply queue, parse, permission)", "Intake.take_in"),
    ("  token check (JWT)", "TokenVerifier.verify_header"),
    ("  envelope + data parsing", "parse (llm_consumer/events/parsing"),
    ("  job ledger claim alone (claim.lua; local single-flight followers)",
     "JobLedger.claim_now"),
    ("  job ledger finish on its own (failures)", "JobLedger.finish"),
    ("  events encoded for the ledger", "encode (llm_consumer/events/envelope"),
    ("  job.status publishes", "Consumer._status"),
    ("  every publish (results confirmed, notices not)", "Publisher.publish_event"),
    ("job task (admission + handler + provider call)", "run_admitted"),
    ("  admission plan (scopes, digest)", "plan_for"),
    ("  admission (admit.lua)", "admit_within"),
    ("  finish (finish.lua, with the ledger record)", "Admission.finish"),
    ("  prompt fitting (BPE token count)", "fit_context"),
    ("  OpenAI call: body built, sent, read and parsed", "OpenAITextProvider._call"),
    ("    HTTP request and response headers", "ChatEndpoint.post"),
    ("    response body read", "read (llm_consumer/providers/chat_http"),
    ("    answer parsed (chat_wire)", "completion_of"),
    ("restamp task (restamp.lua, alongside the call)", "Admission.restamp"),
    ("every Redis script call, anywhere", "AsyncScript.__call__"),
    ("AMQP frames in (aiormq reader)", "Connection.__reader"),
)
LINE = re.compile(r":\d+\)$")


def find_py_spy() -> str | None:
    named = os.environ.get("PY_SPY")
    beside = Path(sys.executable).with_name("py-spy")
    return named or shutil.which("py-spy") or (str(beside) if beside.exists() else None)


async def record(py_spy: str, pid: int, seconds: float, out: Path) -> bool:
    """Sample `pid` for `seconds` into py-spy's raw (collapsed) format."""
    process = await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
        "--format", "raw", "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await process.wait() == 0 and out.exists()


def summarize(raw: Path, top: int = 12) -> dict[str, object]:
    """Inclusive share per group and the top self-time frames, of main-thread samples."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if MAIN_THREAD not in stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [LINE.sub(")", frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    if not total:
        return {"samples": 0, "groups": [], "top_self": []}

    def share(prefix: str) -> float:
        return max((n for f, n in inclusive.items() if f.startswith(prefix)), default=0) / total

    return {
        "samples": total,
        "groups": [(label, round(share(prefix), 4)) for label, prefix in GROUPS],
        "top_self": [(frame, round(n / total, 4)) for frame, n in own.most_common(top)],
    }
