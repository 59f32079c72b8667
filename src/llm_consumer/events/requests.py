"""Requests and control events the service consumes (the `data` of each)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_PROMPT_CHARS = 4000
# Caller text that reaches a text prompt is bounded here; `context` is bounded by the message
# size (MAX_MESSAGE_BYTES), by MAX_JSON_DEPTH (enforced in events/parsing.py) and by fitting
# to the model's window.
MAX_THEME_PRESET_CHARS = 100
MAX_THEME_FIELD_CHARS = 200
MAX_LANGUAGE_PATTERNS = 20
MAX_LANGUAGE_PATTERN_CHARS = 200
MAX_JSON_DEPTH = 64
MAX_SOURCE_IMAGES = 4  # sources one transform may combine (OpenAI's edits take up to 16)
MAX_IMAGES = 4  # images one generation asks for
MAX_VARIATIONS = 8  # panels of a variations request: two grids of 2x2
# A chat history: turns beyond what the model's window holds are dropped (oldest first) before
# the call; these bound what a caller may send at all.
MAX_CHAT_TURNS = 64
MAX_CHAT_TURN_CHARS = 16_000
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
MAX_RESPONSE_SCHEMA_BYTES = 16_000


class _Inbound(BaseModel):
    # Peers may add fields (the contract allows it); unknown ones are ignored, not rejected.
    model_config = ConfigDict(extra="ignore", frozen=True)


class ContentKind(StrEnum):
    CHARACTER_BACKSTORY = "character.backstory"
    CHARACTER_COMBAT = "character.combat"
    CHARACTER_EQUIPMENT = "character.equipment"
    CAMPAIGN_PLOT = "campaign.plot"
    CAMPAIGN_QUEST = "campaign.quest"
    CAMPAIGN_EVENTS = "campaign.events"
    WORLD_LOCATION = "world.location"
    WORLD_NPC_DIALOGUE = "world.npc_dialogue"
    WORLD_ENVIRONMENT = "world.environment"
    THEME_APPLY = "theme.apply"
    THEME_ANALYZE = "theme.analyze"
    CONTENT_VALIDATE = "content.validate"
    CHAT_COMPLETION = "chat.completion"


# Kinds answered from a caller's `context` against the kind's own schema; the others (chat)
# answer a `messages` history.
CHAT_KINDS = frozenset({ContentKind.CHAT_COMPLETION})
STRUCTURED_KINDS = frozenset(ContentKind) - CHAT_KINDS


class ImageKind(StrEnum):
    PORTRAIT = "portrait"
    LOCATION = "location"
    ITEM = "item"
    TRANSFORM = "transform"
    ENHANCE = "enhance"
    VARIATIONS = "variations"


TEXT_TO_IMAGE_KINDS = frozenset({ImageKind.PORTRAIT, ImageKind.LOCATION, ImageKind.ITEM})


LanguagePattern = Annotated[str, Field(max_length=MAX_LANGUAGE_PATTERN_CHARS)]


class Theme(_Inbound):
    """A text theme: a named preset and/or explicit fields that override it. It reaches the
    model as quoted data describing the wanted style, never as instructions. Other fields are
    ignored: they reach no prompt."""

    preset: str | None = Field(None, max_length=MAX_THEME_PRESET_CHARS,
                               examples=["dark-fantasy"])
    genre: str | None = Field(None, max_length=MAX_THEME_FIELD_CHARS)
    tone: str | None = Field(None, max_length=MAX_THEME_FIELD_CHARS)
    style: str | None = Field(None, max_length=MAX_THEME_FIELD_CHARS)
    language_patterns: list[LanguagePattern] | None = Field(
        None, max_length=MAX_LANGUAGE_PATTERNS,
        description=f"at most {MAX_LANGUAGE_PATTERNS} items of at most "
                    f"{MAX_LANGUAGE_PATTERN_CHARS} characters each")


StopSequence = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class ModelOptions(_Inbound):
    """The model and its sampling parameters; `stop` is for kind chat.completion only."""

    name: str | None = Field(None, max_length=200)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=32_000)
    stop: StopSequence | list[StopSequence] | None = Field(
        None, description=f"chat.completion only: up to {MAX_STOP_SEQUENCES} sequences of at "
                          f"most {MAX_STOP_CHARS} characters that end the answer")

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and not 1 <= len(stop) <= MAX_STOP_SEQUENCES:
            raise ValueError(f"takes 1 to {MAX_STOP_SEQUENCES} stop sequences, got {len(stop)}")
        return stop

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatTurn(_Inbound):
    """One turn of a chat history. A `system` turn is the caller's persona for the assistant:
    it follows the service's own system message (the platform's rules), which it cannot
    override."""

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_CHAT_TURN_CHARS)


class ContentOptions(_Inbound):
    """How a text request is delivered."""

    delivery: Literal["realtime", "batch"] = Field(
        "realtime", description=(
            "batch: the request is admitted as usual, then sent with others through the "
            "provider's Batch API at half the price; it answers within the batch window "
            "(hours, at most 24 h) instead of seconds, with job.status `batched` meanwhile. "
            "Structured kinds on an OpenAI provider only (chat.completion, and a service "
            "without BATCH_ENABLED, answer in real time); `stream` is ignored"))


class ContentRequested(_Inbound):
    """`content.requested`: generate text of one kind (chat.completion: answer a history)."""

    model_config = ConfigDict(json_schema_extra={"allOf": [{
        "if": {"properties": {"kind": {"const": "chat.completion"}}, "required": ["kind"]},
        "then": {"required": ["messages"]},
        "else": {"required": ["context"]},
    }]})

    kind: ContentKind
    context: dict[str, Any] | None = Field(
        None,
        description="required by every kind but chat.completion: the inputs of the kind, "
                    "quoted to the model as data; bounded by the "
                    f"message size (MAX_MESSAGE_BYTES) and by {MAX_JSON_DEPTH} levels of JSON "
                    "nesting in the whole body; fitted to the model's context window (least "
                    "important parts trimmed first), else refused with context_length_exceeded")
    messages: list[ChatTurn] | None = Field(
        None, min_length=1, max_length=MAX_CHAT_TURNS, description=(
            f"chat.completion only (and required there): 1 to {MAX_CHAT_TURNS} turns of at "
            f"most {MAX_CHAT_TURN_CHARS} characters, the last one a user turn. Fitted to the "
            "model's window by dropping the oldest user/assistant turns first; system turns "
            "and the last user turn are always kept (else context_length_exceeded)"))
    response_schema: dict[str, Any] | None = Field(
        None, description=(
            "chat.completion only: a JSON Schema (an object schema, at most "
            f"{MAX_RESPONSE_SCHEMA_BYTES} bytes as JSON) the answer must match; the result's "
            "`content.parsed` then holds the parsed object. Absent: a free-text answer"))
    theme: Theme | None = None
    model: ModelOptions | None = None
    stream: bool = False
    cache: bool = True
    user_id: str | None = Field(None, max_length=200)
    options: ContentOptions | None = None

    @model_validator(mode="after")
    def _inputs_for_kind(self) -> ContentRequested:
        if self.kind in CHAT_KINDS:
            if not self.messages:
                raise ValueError(f"kind {self.kind.value} needs messages")
            if self.messages[-1].role != "user":
                raise ValueError("the last of messages must be a user turn")
            if self.context is not None or self.theme is not None:
                raise ValueError(f"kind {self.kind.value} takes messages, not context or theme")
            schema = self.response_schema
            if schema is not None:
                if len(orjson.dumps(schema)) > MAX_RESPONSE_SCHEMA_BYTES:
                    raise ValueError(f"response_schema is over {MAX_RESPONSE_SCHEMA_BYTES} bytes")
                if schema.get("type") != "object":
                    raise ValueError('response_schema must be an object schema '
                                     '({"type": "object", ...})')
            return self
        if self.context is None:
            raise ValueError(f"kind {self.kind.value} needs a context")
        if self.messages is not None or self.response_schema is not None:
            raise ValueError(f"messages and response_schema are for kind "
                             f"{ContentKind.CHAT_COMPLETION.value} only")
        if self.model is not None and self.model.stop is not None:
            raise ValueError(f"model.stop is for kind {ContentKind.CHAT_COMPLETION.value} only")
        return self

    @property
    def inputs(self) -> dict[str, Any]:
        """The context of a structured kind (empty for chat, which has none)."""
        return self.context if self.context is not None else {}


class SourceImage(_Inbound):
    """Exactly one of `url`, `data` (base64) or `ref` (a key this service stored)."""

    url: str | None = Field(None, max_length=4096)
    data: str | None = None
    ref: str | None = Field(None, max_length=1024, description=(
        "the `key` of an image this service stored for the same caller (token `sub`); "
        "`llm:admin` may name any caller's"))

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceImage:
        given = [name for name in ("url", "data", "ref") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("source_image needs exactly one of url, data or ref")
        return self


class VisualTheme(_Inbound):
    model_config = ConfigDict(extra="allow", frozen=True)

    preset: str | None = Field(None, max_length=100)
    art_style: str | None = Field(None, max_length=200)
    color_scheme: str | list[str] | None = None


class ImageOptions(_Inbound):
    provider: Literal["getimg", "openai"] | None = None
    model: str | None = Field(None, max_length=200)
    width: int | None = Field(None, ge=64, le=4096)
    height: int | None = Field(None, ge=64, le=4096)
    count: int = Field(1, ge=1, le=MAX_VARIATIONS, description=(
        f"images wanted: 1-{MAX_IMAGES}; kind variations 1-{MAX_VARIATIONS} (default 4; more "
        "than 4 are made as two grids, two provider generations)"))
    seed: int | None = Field(None, ge=0)
    output_format: Literal["png", "jpeg", "webp"] = "png"
    enhance: list[Literal["upscale", "face_fix"]] | None = Field(
        None, max_length=2, json_schema_extra={"uniqueItems": True},
        description="enhance steps, in order; each at most once")

    @field_validator("enhance")
    @classmethod
    def _steps_once(cls, steps: list[str] | None) -> list[str] | None:
        if steps and len(set(steps)) < len(steps):
            raise ValueError(f"lists a step twice ({', '.join(steps)}); each of upscale and "
                             "face_fix may appear once")
        return steps


class ImageRequested(_Inbound):
    """`image.requested`: generate, transform or enhance images."""

    kind: ImageKind
    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
    context: dict[str, Any] | None = None
    source_image: SourceImage | Annotated[
        list[SourceImage], Field(min_length=1, max_length=MAX_SOURCE_IMAGES)] | None = Field(
        None, description=(
            "one source image, or a list of 1 to "
            f"{MAX_SOURCE_IMAGES} (kind transform only: all go to one edit; OpenAI and GetImg "
            "v2 models combine them, GetImg v1 models take one); each is bounded and, as a "
            "`ref`, owned like a single one"))
    theme: VisualTheme | None = None
    options: ImageOptions = ImageOptions()
    cache: bool = True
    user_id: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _inputs_for_kind(self) -> ImageRequested:
        if self.kind in TEXT_TO_IMAGE_KINDS:
            if not self.prompt and not self.context:
                raise ValueError(f"kind {self.kind.value} needs a prompt or a context")
        elif self.source_image is None:
            raise ValueError(f"kind {self.kind.value} needs a source_image")
        elif len(self.sources) > 1 and self.kind != ImageKind.TRANSFORM:
            raise ValueError(f"kind {self.kind.value} takes one source_image, got "
                             f"{len(self.sources)}; only transform combines several")
        if self.options.count > MAX_IMAGES and self.kind != ImageKind.VARIATIONS:
            raise ValueError(f"options.count {self.options.count} is over {MAX_IMAGES} for kind "
                             f"{self.kind.value} (only variations takes up to {MAX_VARIATIONS})")
        return self

    @property
    def sources(self) -> tuple[SourceImage, ...]:
        """The source images, in order (none for the text-to-image kinds)."""
        if self.source_image is None:
            return ()
        if isinstance(self.source_image, SourceImage):
            return (self.source_image,)
        return tuple(self.source_image)


class JobCancel(_Inbound):
    """`job.cancel`: stop a queued or running request.

    A request is named by its caller's token `sub`, its `source` and its `id`: `source`
    defaults to this event's own source, `subject` to the sender's `sub`. Only a sender
    holding `llm:admin` may name another `subject`.
    """

    request_id: str = Field(min_length=1, max_length=200)
    source: str | None = Field(None, min_length=1, max_length=500,
                               description="the request's `source`; default: this event's")
    subject: str | None = Field(None, min_length=1, max_length=200,
                                description="the requester's token `sub` (llm:admin only)")


class CacheInvalidate(_Inbound):
    """`cache.invalidate`: drop cached results, all or of one kind."""

    kind: ContentKind | ImageKind | None = Field(
        None, description="one request kind; absent means every cached result")
