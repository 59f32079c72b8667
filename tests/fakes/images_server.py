"""A real HTTP server speaking GetImg.AI's and OpenAI's image APIs and answering with real images.

    async with FakeImages() as server:
        server.script("getimg", fail(402, "out of credits"))
        server.script("openai", *after(4, fail(503, "overloaded")))  # the 5th call fails
        # GETIMG_BASE_URL=server.base_url, OPENAI_BASE_URL=server.openai_base_url

OpenAI's edits take the source as one `image` file or as repeated `image[]` files (at most
16, each recorded in order in `Recorded.files`); anything else is refused as the real endpoint
refuses it. GetImg v2 takes several `images` (data URLs).

It runs on 127.0.0.1 with an ephemeral port inside the test's event loop (aiohttp AppRunner).
Pictures are painted from the prompt (`tests/fakes/pictures.py`): the hex colours in it colour
the picture, so the service's palette distance can be checked. Image-to-image tints the source;
a prompt asking for a "2x2 grid" gets four varied panels with white gutters; upscale resizes by
`scale`; face-fix sharpens. It also serves source images for URL tests (`add_source`,
`redirect_url`) and the temporary download URLs of GetImg's v2 API.
"""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlencode

from aiohttp import web
from PIL import Image, ImageFilter

from tests.fakes.pictures import encode, paint, tint

GETIMG_KEY = "key-test"
OPENAI_KEY = "sk-test"
Api = Literal["getimg", "openai", "download"]
_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
OPENAI_MAX_EDIT_IMAGES = 16
_V2_SIZES = {"1:1": (1024, 1024), "16:9": (1344, 768), "9:16": (768, 1344), "4:3": (1152, 864),
             "3:4": (864, 1152), "3:2": (1216, 832), "2:3": (832, 1216)}


# --------------------------------------------------------------------------- script entries


@dataclass(frozen=True, slots=True)
class Fail:
    """An HTTP error in the vendor's error shape."""

    status: int
    message: str
    code: str | None = None
    type: str = "invalid_request_error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Odd:
    """A 200 answer whose image is wrong: `blank` (one colour) or `garbage` (not an image)."""

    what: Literal["blank", "garbage"]


@dataclass(frozen=True, slots=True)
class Ok:
    """A normal answer: scripted before a Fail or Odd, it lets that one hit a later call."""


Scripted = Fail | Odd | Ok


def fail(status: int, message: str, code: str | None = None, **headers: str) -> Fail:
    return Fail(status, message, code, headers={k.replace("_", "-"): v for k, v in headers.items()})


def after(calls: int, entry: Scripted) -> list[Scripted]:
    """`entry` for the call after `calls` normal ones: `server.script(api, *after(4, fail(..)))`."""
    return [*[Ok()] * calls, entry]


def moderation_blocked() -> Fail:
    return Fail(400, "Your request was rejected by the safety system. If you believe this is an "
                "error, contact us at help.openai.com and include the request ID.",
                "moderation_blocked", "image_generation_user_error")


def _odd(entry: Odd, fmt: str) -> bytes:
    if entry.what == "blank":
        return encode(Image.new("RGB", (512, 512), (0, 0, 0)), fmt)
    return b"this is not an image" * 10


# --------------------------------------------------------------------------- the server


@dataclass(frozen=True, slots=True)
class Recorded:
    api: Api
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]  # JSON body, or the text fields of a multipart form
    files: list[tuple[str, str, bytes]]  # multipart files: (field, content type, bytes)


@dataclass
class _Source:
    data: bytes
    content_type: str
    declare_length: bool


class FakeImages:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.downloads = 0
        self.source_hits: list[str] = []  # paths of /sources and /redirect requests
        self._scripts: dict[Api, deque[Scripted]] = {
            "getimg": deque(), "openai": deque(), "download": deque()}
        self._files: dict[str, tuple[bytes, str]] = {}
        self._sources: dict[str, _Source] = {}
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # -- knobs

    def script(self, api: Api, *entries: Scripted) -> None:
        self._scripts[api].extend(entries)

    def add_source(self, name: str, data: bytes, content_type: str = "image/png", *,
                   declare_length: bool = True) -> str:
        self._sources[name] = _Source(data, content_type, declare_length)
        return f"{self.base_url}/sources/{name}"

    def redirect_url(self, to: str) -> str:
        return f"{self.base_url}/redirect?{urlencode({'to': to})}"

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeImages is not running")
        return f"http://127.0.0.1:{self._port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def of(self, api: Api, path_part: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.api == api and path_part in r.path]

    # -- lifecycle

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", self._openai_generate)
        app.router.add_post("/v1/images/edits", self._openai_edit)
        app.router.add_post("/v1/enhancements/{op}", self._getimg_enhance)
        app.router.add_post("/v1/{family}/{mode}", self._getimg_v1)
        app.router.add_post("/v2/images/generations", self._getimg_v2)
        app.router.add_get("/files/{token}", self._download)
        app.router.add_get("/sources/{name}", self._source)
        app.router.add_get("/redirect", self._redirect)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- GetImg

    async def _getimg_call(self, request: web.Request,
                           ) -> tuple[dict[str, Any], str, web.Response | None]:
        """A GetImg call's body and output format, and the answer that ends it early when one
        is scripted (a refusal, an odd image)."""
        body = await self._json(request, "getimg")
        fmt = str(body.get("output_format", "jpeg"))
        if (refused := self._refusal(request, "getimg")) is not None:
            return body, fmt, refused
        if isinstance(entry := self._next("getimg"), Odd):
            return body, fmt, web.json_response(
                {"image": base64.b64encode(_odd(entry, fmt)).decode()})
        return body, fmt, None

    async def _getimg_v1(self, request: web.Request) -> web.Response:
        body, fmt, early = await self._getimg_call(request)
        if early is not None:
            return early
        prompt = str(body.get("prompt", ""))
        if request.match_info["mode"] == "image-to-image":
            picture = tint(_open_b64(body["image"]), prompt)
        else:
            picture = paint(prompt, int(body.get("width", 512)), int(body.get("height", 512)),
                            int(body.get("seed", 0)))
        return web.json_response({"image": base64.b64encode(encode(picture, fmt)).decode(),
                                  "seed": body.get("seed", 42), "cost": 0.0045})

    async def _getimg_enhance(self, request: web.Request) -> web.Response:
        body, fmt, early = await self._getimg_call(request)
        if early is not None:
            return early
        source = _open_b64(body["image"])
        if request.match_info["op"] == "upscale":
            scale = int(body.get("scale", 4))
            result = source.resize((source.width * scale, source.height * scale))
        else:
            result = source.convert("RGB").filter(ImageFilter.SHARPEN)
        return web.json_response({"image": base64.b64encode(encode(result, fmt)).decode(),
                                  "cost": 0.002})

    async def _getimg_v2(self, request: web.Request) -> web.Response:
        body = await self._json(request, "getimg")
        if (refused := self._refusal(request, "getimg")) is not None:
            return refused
        fmt = str(body.get("output_format", "png"))
        prompt = str(body.get("prompt", ""))
        entry = self._next("getimg")
        if isinstance(entry, Odd):
            data = _odd(entry, fmt)
        elif body.get("images"):
            data_url = str(body["images"][0])
            data = encode(tint(_open_b64(data_url.split(",", 1)[1]), prompt), fmt)
        else:
            data = encode(paint(prompt, *_V2_SIZES[str(body.get("aspect_ratio", "1:1"))]), fmt)
        token = secrets.token_hex(8)
        self._files[token] = (data, _MIME.get(fmt, "image/png"))
        width, height = (0, 0) if isinstance(entry, Odd) else Image.open(io.BytesIO(data)).size
        return web.json_response({
            "id": f"gen-{token}", "status": "completed", "model": body.get("model"),
            "data": [{"url": f"{self.base_url}/files/{token}?sig={secrets.token_hex(4)}",
                      "width": width, "height": height, "mime_type": _MIME.get(fmt)}],
            "usage": {"total_cost": 0.01}})

    async def _download(self, request: web.Request) -> web.Response:
        self.downloads += 1
        entry = self._next("download")
        if isinstance(entry, Fail):
            return web.json_response({"error": entry.message}, status=entry.status)
        if "authorization" in {k.lower() for k in request.headers}:
            return web.json_response({"error": "signed URLs take no API key"}, status=400)
        found = self._files.get(request.match_info["token"])
        if found is None:
            return web.json_response({"error": "expired"}, status=404)
        return web.Response(body=found[0], content_type=found[1])

    # -- OpenAI

    async def _openai_generate(self, request: web.Request) -> web.Response:
        body = await self._json(request, "openai")
        if (refused := self._refusal(request, "openai")) is not None:
            return refused
        width, height = _openai_size(str(body.get("size", "auto")), None)
        fmt = str(body.get("output_format", "png"))
        return self._openai_answer([
            encode(paint(str(body["prompt"]), width, height, seed=i), fmt)
            for i in range(int(body.get("n", 1)))], fmt)

    async def _openai_edit(self, request: web.Request) -> web.Response:
        form = await request.post()
        fields = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        files = [(name, value.content_type, value.file.read()) for name, value in form.items()
                 if isinstance(value, web.FileField)]
        self._record("openai", request, fields, files)
        if (refused := self._refusal(request, "openai")) is not None:
            return refused
        if (wrong := _edit_images_refusal(files)) is not None:
            return _error("openai", wrong)
        fmt = fields.get("output_format", "png")
        source = Image.open(io.BytesIO(files[0][2]))
        size = _openai_size(fields.get("size", "auto"), source.size)
        prompt = fields.get("prompt", "")
        return self._openai_answer([encode(tint(source, prompt, size), fmt)
                                    for _ in range(int(fields.get("n", "1")))], fmt)

    def _openai_answer(self, images: list[bytes], fmt: str) -> web.Response:
        entry = self._next("openai")
        if isinstance(entry, Odd):
            images = [_odd(entry, fmt) for _ in images]
        return web.json_response({
            "created": 1_700_000_000, "output_format": fmt,
            "data": [{"b64_json": base64.b64encode(data).decode()} for data in images],
            "usage": {"input_tokens": 50, "output_tokens": 1056, "total_tokens": 1106,
                      "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}})

    # -- sources for URL tests

    async def _source(self, request: web.Request) -> web.StreamResponse:
        self.source_hits.append(request.path)
        source = self._sources.get(request.match_info["name"])
        if source is None:
            return web.Response(status=404)
        if source.declare_length:
            return web.Response(body=source.data, headers={"Content-Type": source.content_type})
        response = web.StreamResponse(headers={"Content-Type": source.content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(source.data), 65536):
            await response.write(source.data[start:start + 65536])
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    async def _redirect(self, request: web.Request) -> web.Response:
        self.source_hits.append(request.path)
        raise web.HTTPFound(request.query["to"])

    # -- helpers

    def _next(self, api: Api) -> Scripted | None:
        return self._scripts[api].popleft() if self._scripts[api] else None

    def _refusal(self, request: web.Request, api: Api) -> web.Response | None:
        key = GETIMG_KEY if api == "getimg" else OPENAI_KEY
        if request.headers.get("Authorization") != f"Bearer {key}":
            return _error(api, Fail(401, "Invalid API key", "invalid_api_key"))
        script = self._scripts[api]
        if script and isinstance(script[0], Fail):
            return _error(api, script.popleft())  # type: ignore[arg-type]
        return None

    async def _json(self, request: web.Request, api: Api) -> dict[str, Any]:
        body = await request.json()
        self._record(api, request, body, [])
        return body if isinstance(body, dict) else {}

    def _record(self, api: Api, request: web.Request, body: dict[str, Any],
                files: list[tuple[str, str, bytes]]) -> None:
        self.requests.append(Recorded(api, request.method, request.path,
                                      {k.lower(): v for k, v in request.headers.items()},
                                      body, files))


def _error(api: Api, entry: Fail) -> web.Response:
    body: dict[str, Any]
    if api == "getimg":
        body = {"error": {"type": entry.type, "code": entry.code or "error",
                          "message": entry.message}}
    else:
        body = {"error": {"message": entry.message, "type": entry.type, "param": None,
                          "code": entry.code}}
    return web.json_response(body, status=entry.status, headers=entry.headers)


def _edit_images_refusal(files: list[tuple[str, str, bytes]]) -> Fail | None:
    """What the edits endpoint says of its image parts: `image` once, or `image[]` 1-16 times."""
    names = [name for name, _, _ in files if name != "mask"]
    if not names:
        return Fail(400, "Missing required parameter: 'image'.", "missing_required_parameter")
    if set(names) - {"image", "image[]"} or (names.count("image") > 1) or (
            "image" in names and "image[]" in names):
        return Fail(400, f"Unrecognized file parameters: {', '.join(sorted(set(names)))}; "
                    "send 'image' once or 'image[]' for each image.", "unknown_parameter")
    if len(names) > OPENAI_MAX_EDIT_IMAGES:
        return Fail(400, "Invalid 'image': array too long. Expected an array with maximum "
                    f"length {OPENAI_MAX_EDIT_IMAGES}, but got an array with length "
                    f"{len(names)} instead.", "array_above_max_length")
    return None


def _open_b64(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def _openai_size(size: str, source: tuple[int, int] | None) -> tuple[int, int]:
    if size == "auto":
        return source or (1024, 1024)
    width, height = size.split("x")
    return int(width), int(height)
