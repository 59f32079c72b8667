"""A worker serving text does not load Pillow, jsonschema or httpx2 (about 2.5, 2 and 3 MB of RSS
per process): the first image, the first chat request naming a `response_schema` and the first
source image fetched do. A chat history whose size shows it fits is not counted, so OpenAI's
tokenizer (about 140 MB) is not loaded for it either."""

from __future__ import annotations

import textwrap

from tests.fresh_process import printed_lines

PROGRAM = textwrap.dedent("""
    import asyncio, sys
    from llm_consumer.app import build_image_service, build_text_provider
    from llm_consumer.auth import Principal
    from llm_consumer.errors import PermanentFailure
    from llm_consumer.events.envelope import Envelope
    from llm_consumer.events.requests import ImageRequested
    from llm_consumer.handlers.base import Deps, Request
    from llm_consumer.handlers.image import handle_image
    from llm_consumer.settings import Settings

    def loaded(name):
        module = sys.modules.get(name)
        return module is not None and type(module).__name__ != "_LazyModule"

    async def main() -> None:
        settings = Settings(openai_api_key="sk-test", secret_key="s" * 64,
                            openai_base_url="http://127.0.0.1:9/v1")
        text = build_text_provider(settings)
        images = build_image_service(settings)
        print("start", loaded("PIL.Image"), loaded("jsonschema"), loaded("httpx2"))
        print("fetcher", type(images.fetcher.client).__name__, loaded("httpx2"))

        # The image handler loads Pillow first, on this thread, so that no image thread reads
        # it half-built (LazyLoader before Python 3.12); here it then finds no image service.
        async def emit(event_type, data):
            return None

        request = Request(
            envelope=Envelope(specversion="1.0", id="r-1", source="/peer",
                              type="image.requested", data={}),
            data=ImageRequested.model_validate({"kind": "portrait", "prompt": "a dwarf"}),
            principal=Principal("alice", frozenset({"llm:image"})), attempt=0, emit=emit)
        try:
            await handle_image(request, Deps(text=None))
        except PermanentFailure as refused:
            print("handler", refused.code, loaded("PIL.Image"), loaded("PIL.ImageColor"),
                  loaded("PIL.ImageStat"))

        from llm_consumer.images.processing import decode, resized
        from tests.fakes.pictures import png  # Pillow draws the picture
        from llm_consumer.images.visual_themes import parse_colour
        picture = decode(png(320, 240))
        print("image", loaded("PIL.Image"), picture.width, picture.height,
              resized(picture.image, (64, 48)).size, parse_colour("ember red"))

        from llm_consumer.handlers.chat import _validator
        validator = _validator('{"type": "object", "required": ["name"]}')
        print("schema", loaded("jsonschema"), validator.is_valid({"name": "Ash"}),
              validator.is_valid({}))
        for closing in (text, images):
            await closing.aclose()

    asyncio.run(main())
""")


def test_pillow_jsonschema_and_httpx2_load_on_first_use() -> None:
    assert printed_lines(PROGRAM) == [
        "start False False False",
        "fetcher AsyncClient True",
        "handler no_provider True True True",
        "image True 320 240 (64, 48) (255, 0, 0)",
        "schema True True False",
    ]


CHAT_PROGRAM = textwrap.dedent("""
    import sys
    from llm_consumer.app import build_text_provider, context_windows
    from llm_consumer.events.requests import ContentRequested
    from llm_consumer.handlers.base import Deps
    from llm_consumer.handlers.chat import chat_job
    from llm_consumer.settings import Settings

    settings = Settings(openai_api_key="sk-test", secret_key="s" * 64,
                        openai_base_url="http://127.0.0.1:9/v1")
    text = build_text_provider(settings)
    deps = Deps(text=text, windows=context_windows(settings, text))

    def chat(*said):
        return ContentRequested.model_validate({"kind": "chat.completion", "messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": words}
            for i, words in enumerate(said)]})

    short = chat_job(chat("Tell the tale of the Hollow Keep.", "It fell.", "Why?"), deps)
    print("short", len(short.messages), "bpe_openai" in sys.modules)
    long = chat_job(chat(*(["rain " * 400] * 8), "And now?"), deps)
    print("long", len(long.messages), "bpe_openai" in sys.modules)
""")


def test_a_short_chat_is_fitted_without_loading_the_tokenizer() -> None:
    # about 140 MB of RSS saved; a history whose size alone does not settle it is counted
    # exactly (and kept whole: its 16 KB are about 3,200 tokens of an 8k window)
    assert printed_lines(CHAT_PROGRAM) == ["short 3 False", "long 9 True"]
