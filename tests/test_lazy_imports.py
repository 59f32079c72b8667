"""A worker serving text does not load Pillow or jsonschema (about 2.5 and 2 MB of RSS per
process): the first image, and the first chat request naming a `response_schema`, do."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent("""
    import asyncio, sys
    from llm_consumer.app import build_image_service, build_text_provider
    from llm_consumer.settings import Settings

    def loaded(name):
        module = sys.modules.get(name)
        return module is not None and type(module).__name__ != "_LazyModule"

    async def main() -> None:
        settings = Settings(openai_api_key="sk-test", secret_key="s" * 64,
                            openai_base_url="http://127.0.0.1:9/v1")
        text = build_text_provider(settings)
        images = build_image_service(settings)
        print("start", loaded("PIL.Image"), loaded("jsonschema"))

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


def test_pillow_and_jsonschema_load_on_first_use() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          timeout=60)

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "start False False",
        "image True 320 240 (64, 48) (255, 0, 0)",
        "schema True True False",
    ]
