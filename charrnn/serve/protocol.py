"""The OpenAI completions protocol as charrnn speaks it: requests checked field by field, responses and stream
chunks in OpenAI's shape, and every refusal one ApiError in OpenAI's error shape,
{"error": {"message", "type", "param", "code"}}. A client's mistake is a 4xx naming the field, never a 500.

Lengths are in characters: `max_tokens` is new characters, and `usage` counts characters. No torch here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from charrnn.config.sample import MIN_TEMPERATURE
from charrnn.config.seed import MAX_SEED, MIN_SEED, draw_seed
from charrnn.serve.stream import Settings
from charrnn.text.vocab import Vocab, listed

if TYPE_CHECKING:
    from charrnn.generation.heatmap import CharScore

MAX_BODY_BYTES = 1 << 20  # a request body past 1 MiB is refused (413) before it is parsed
MAX_PER_CHAR = 100_000  # characters scored one by one (per_char): its answer is ~150 bytes a character
MAX_PROMPT_CHARS = 32_768  # a prompt is primed between two steps of everyone else's streams: keep it short
MAX_N = 64  # choices per request (each is a stream of the batch), and at most --max-streams
MAX_STOPS, MAX_STOP_CHARS = 4, 256  # OpenAI's limit on stop strings; their length, so matching stays cheap
MAX_TEMPERATURE = 2.0  # OpenAI's range is [0, 2]
DEFAULT_MAX_TOKENS = 256  # OpenAI's 16 tokens is a few words; 256 characters is a few lines
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default
UNSUPPORTED = {"echo": False, "logprobs": None, "suffix": None, "best_of": 1}  # accepted only at these values


class ApiError(Exception):
    """A refusal: an HTTP status and OpenAI's error object."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        type: str = "invalid_request_error", headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object (400 otherwise)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e}).", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object.", code="invalid_json")
    return body


# ---- field rules


def _int(body: dict, name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"{name} must be an integer, not {json.dumps(value)[:40]}.")
    if not lo <= value <= hi:
        raise bad(name, f"{name} must be between {lo:,} and {hi:,}, not {value:,}.")
    return value


def _number(body: dict, name: str, default: float | None, lo: float, hi: float) -> float | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(name, f"{name} must be a number, not {json.dumps(value)[:40]}.")
    if not lo <= value <= hi:
        raise bad(name, f"{name} must be between {lo:g} and {hi:g}, not {value:g}.")
    return float(value)


def _bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, f"{name} must be true or false, not {json.dumps(value)[:40]}.")
    return value


def _text(body: dict, name: str, vocab: Vocab | None, max_chars: int) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise bad(name, f"{name} must be a string, not {json.dumps(value)[:40]}.")
    if not value:
        raise bad(name, f"{name} must not be empty.")
    if len(value) > max_chars:
        raise bad(name, f"{name} has {len(value):,} characters; the limit is {max_chars:,}.")
    if vocab is not None:
        unknown = vocab.unknown(value)
        if unknown:
            raise ApiError(
                400, f"{name} has character(s) the model never saw: {listed(unknown, ' ')}.", param=name,
                code="unknown_characters",
            )  # fmt: skip
    return value


def model_name(body: dict, models: list[str]) -> str:
    """The model asked for: optional when one is loaded; 404 for one that is not."""
    name = body.get("model")
    if name is None and len(models) == 1:
        return models[0]
    if name is None:
        raise bad("model", f"model is needed when several are loaded: one of {', '.join(models)}.")
    if not isinstance(name, str):
        raise bad("model", f"model must be a string, not {json.dumps(name)[:40]}.")
    if name not in models:
        raise ApiError(
            404, f"the model {name[:80]!r} does not exist here; GET /v1/models lists {', '.join(models)}.",
            param="model", code="model_not_found",
        )  # fmt: skip
    return name


# ---- requests


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str
    settings: list[Settings]  # one per choice: stream i has seed + i
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage


def parse_completion(body: dict, models: list[str], vocab_of, max_tokens: int, max_n: int) -> CompletionRequest:
    """A completions request checked against the server's caps; vocab_of(model) is the model's Vocab."""
    model = model_name(body, models)
    prompt = _text(body, "prompt", vocab_of(model), MAX_PROMPT_CHARS)
    length = _int(body, "max_tokens", min(DEFAULT_MAX_TOKENS, max_tokens), 0, max_tokens)
    temperature = _number(body, "temperature", DEFAULT_TEMPERATURE, 0.0, MAX_TEMPERATURE)
    assert length is not None and temperature is not None
    if 0 < temperature < MIN_TEMPERATURE:
        raise bad("temperature", f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}.")
    top_p = _number(body, "top_p", None, 0.0, 1.0)
    if top_p is not None and top_p <= 0:
        raise bad("top_p", "top_p must be above 0 and at most 1.")
    top_k = _int(body, "top_k", None, 1, 1 << 31)
    n = _int(body, "n", 1, 1, max_n)
    assert n is not None
    seed = _int(body, "seed", None, MIN_SEED, MAX_SEED - (n - 1))
    stop = _stops(body.get("stop"))
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", 'stream_options must be an object, such as {"include_usage": true}.')
    include_usage = _bool(options or {}, "include_usage", False)
    for name, allowed in UNSUPPORTED.items():
        if body.get(name, allowed) not in (allowed, None):
            raise bad(name, f"{name} is not supported by charrnn serve; leave it out.")
    seed = draw_seed() if seed is None else seed
    top_p = None if top_p == 1.0 else top_p  # the whole distribution, as generate() reads it
    settings = [Settings(temperature, top_k, top_p, length, seed + i, stop) for i in range(n)]
    return CompletionRequest(model, prompt, settings, stream, include_usage)


def _stops(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return ()
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", "stop must be a string or a list of strings.")
    if len(stops) > MAX_STOPS:
        raise bad("stop", f"stop takes at most {MAX_STOPS} strings, not {len(stops)}.")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise bad("stop", f"each stop string must have 1 to {MAX_STOP_CHARS} characters.")
    return tuple(stops)


@dataclass(frozen=True)
class ScoreRequest:
    model: str
    text: str
    per_line: bool
    per_char: bool = False


def parse_score(body: dict, models: list[str]) -> ScoreRequest:
    model = model_name(body, models)
    per_char = _bool(body, "per_char", False)
    text = _text(body, "text", None, MAX_PER_CHAR if per_char else MAX_BODY_BYTES)
    return ScoreRequest(model, text, _bool(body, "per_line", False), per_char)


# ---- responses


def completion(
    id: str, created: int, model: str, prompt_chars: int, choices: list[tuple[str, str | None]]
) -> dict[str, Any]:
    """The whole response: choices [(text, finish_reason)] in index order."""
    completion_chars = sum(len(text) for text, _ in choices)
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"text": text, "index": i, "finish_reason": finish, "logprobs": None}
            for i, (text, finish) in enumerate(choices)
        ],
        "usage": usage(prompt_chars, completion_chars),
    }


def char_score(c: CharScore) -> dict[str, Any]:
    """One character of a per_char score: its surprise in bits (null for the first, which is context only), its
    probability (null for it and for a character the model never saw), and the model's top choices there."""
    bits = None if c.surprise is None else round(c.surprise, 4)
    prob = None if c.prob is None else round(c.prob, 6)
    top = [[ch, round(p, 6)] for ch, p in c.top]
    return {"char": c.char, "bits": bits, "prob": prob, "top": top, "known": c.known}


def chunk(id: str, created: int, model: str, index: int, text: str, finish: str | None) -> dict[str, Any]:
    """One streamed event: a piece of choice `index`'s text, and its finish_reason on the last."""
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"text": text, "index": index, "finish_reason": finish, "logprobs": None}],
    }


def usage(prompt_chars: int, completion_chars: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_chars,
        "completion_tokens": completion_chars,
        "total_tokens": prompt_chars + completion_chars,
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event: `data: {json}` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
