"""A process serving text does not load the OpenAI SDK (about 19 MB of RSS): chat calls go
through chat_http, and the Batch and Images clients import it on their first call."""

from __future__ import annotations

import textwrap

from tests.fresh_process import printed_lines

PROGRAM = textwrap.dedent("""
    import asyncio, sys
    from llm_consumer.app import build_image_service, build_text_provider
    from llm_consumer.providers.openai_batch import OpenAIBatchClient
    from llm_consumer.settings import Settings

    async def main() -> None:
        settings = Settings(openai_api_key="sk-test", secret_key="s" * 64,
                            openai_base_url="http://127.0.0.1:9/v1")
        text = build_text_provider(settings)
        images = build_image_service(settings)
        batch = OpenAIBatchClient("sk-test", base_url=None, timeout_s=5.0)
        print("before", "openai" in sys.modules, "openai" in images.providers)
        batch._client  # the first batch call makes the client
        print("after", "openai" in sys.modules)
        for closing in (text, images, batch):
            await closing.aclose()

    asyncio.run(main())
""")


def test_the_sdk_is_loaded_only_by_a_batch_or_image_call() -> None:
    assert " ".join(printed_lines(PROGRAM)).split() == [
        "before", "False", "True", "after", "True"]
