"""What one chat completions call costs the service's process: the OpenAI SDK's client (as the
provider called it until it moved to providers/chat_http) against ChatEndpoint, the same body
to the same fake provider (a process of its own, so only the caller's CPU is counted).

    .venv/bin/python bench/provider_call_cost.py [--rounds 8] [--calls 500] [--in-flight 50]

Rounds alternate which client goes first; prints each client's median CPU per call (µs) and
the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
import openai
import orjson

from llm_consumer.providers.chat_http import ChatEndpoint, read

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-test"  # the fake provider's
BODY = orjson.dumps({"model": "bench", "max_tokens": 300, "messages": [
    {"role": "system", "content": "You write D&D backstories. " * 30},
    {"role": "user", "content": "A dwarf cleric who lost her clan. " * 8}]})
Call = Callable[[], Awaitable[bytes]]


async def cpu_per_call(call: Call, calls: int, in_flight: int) -> float:
    started = time.process_time()
    for _ in range(calls // in_flight):
        await asyncio.gather(*(call() for _ in range(in_flight)))
    return (time.process_time() - started) / calls * 1e6


async def main(rounds: int, calls: int, in_flight: int) -> None:
    with tempfile.TemporaryDirectory() as work:
        port_file = Path(work) / "port"
        provider = subprocess.Popen([sys.executable, str(ROOT / "bench/fake_provider.py"),
                                     "--port-file", str(port_file)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not port_file.exists() or not port_file.read_text():
                await asyncio.sleep(0.1)
            base_url = f"http://127.0.0.1:{port_file.read_text()}/v1"
            await compare(base_url, rounds, calls, in_flight)
        finally:
            provider.terminate()
            provider.wait()


async def compare(base_url: str, rounds: int, calls: int, in_flight: int) -> None:
    sdk = openai.AsyncOpenAI(api_key=API_KEY, base_url=base_url, timeout=30, max_retries=0,
                             http_client=openai.DefaultAioHttpClient(timeout=30))
    endpoint = ChatEndpoint(API_KEY, base_url, timeout_s=30)

    async def through_sdk() -> bytes:
        answer = await sdk.post("/chat/completions", cast_to=httpx2.Response, content=BODY,
                                options={"headers": {"Content-Type": "application/json"}})
        return answer.content

    async def through_endpoint() -> bytes:
        response = await endpoint.post(BODY, {})
        try:
            return await read(response)
        finally:
            response.release()

    clients: dict[str, Call] = {"OpenAI SDK client": through_sdk,
                                "ChatEndpoint (aiohttp)": through_endpoint}
    found: dict[str, list[float]] = {name: [] for name in clients}
    for call in clients.values():  # connections opened, lazy imports done
        await cpu_per_call(call, in_flight, in_flight)
    for index in range(rounds):
        order = list(clients.items()) if index % 2 == 0 else list(reversed(clients.items()))
        for name, call in order:
            found[name].append(await cpu_per_call(call, calls, in_flight))
    await sdk.close()
    await endpoint.aclose()
    medians = {name: statistics.median(values) for name, values in found.items()}
    for name, values in found.items():
        print(f"{name:24} {medians[name]:7.0f} µs CPU per call (median of {rounds} rounds of "
              f"{calls}, {in_flight} in flight; each round: "
              f"{', '.join(f'{v:.0f}' for v in values)})")
    sdk_us, ours_us = medians.values()
    print(f"ChatEndpoint / SDK: {ours_us / sdk_us:.2f} ({sdk_us - ours_us:.0f} µs less per call)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=50)
    opts = parser.parse_args()
    asyncio.run(main(opts.rounds, opts.calls, opts.in_flight))
