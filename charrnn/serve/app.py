"""The HTTP side (Starlette): routes, the API key, the body limit, Server-Sent Events, one log line per request.

    POST /v1/completions   OpenAI completions, streamed (text/event-stream) or whole
    GET  /v1/models        the loaded models, with charrnn's facts as extra fields
    POST /v1/score         charrnn's own: nats/char, bits/char, perplexity, per line and per character when asked
    GET  /                 the playground page (playground.py), GET /v1/models/{id}/run  the curve it draws
    GET  /health           200 while serving (no key needed), GET /metrics  Prometheus text

It runs on the event loop and never runs torch: a completion is a Job handed to its model's Scheduler, whose
thread wakes the loop once a step; a score is a future the scheduler completes between steps.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from charrnn.api import Model
from charrnn.errors import CharRNNError
from charrnn.generation.heatmap import CharScore
from charrnn.serve import playground, protocol
from charrnn.serve.metrics import Metrics
from charrnn.serve.protocol import ApiError, CompletionRequest
from charrnn.serve.scheduler import Scheduler, Stopping
from charrnn.serve.stream import Job

RETRY_AFTER_S = 1  # what a 429 tells the client to wait
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may buffer the stream
ROUTES = ("/v1/completions", "/v1/models", "/v1/score", "/health", "/metrics", *playground.ASSETS)


@dataclass
class ServerState:
    models: dict[str, Model]
    schedulers: dict[str, Scheduler]
    metrics: Metrics
    api_key: str | None
    max_tokens: int
    max_n: int
    log: Callable[[str], None]
    created: dict[str, int] = field(default_factory=dict)  # model -> its checkpoint's mtime
    watch: bool = False  # --watch: models may be reloaded (serve/watch.py), so the page asks for them again
    stopping: bool = False


def build_app(state: ServerState, cors_origins: list[str]) -> Starlette:
    routes = [
        Route("/v1/completions", _endpoint(state, completions), methods=["POST"]),
        Route("/v1/models", _endpoint(state, list_models), methods=["GET"]),
        Route("/v1/score", _endpoint(state, score), methods=["POST"]),
        Route("/health", _endpoint(state, health, auth=False), methods=["GET"]),
        Route("/metrics", _endpoint(state, metrics, auth=False), methods=["GET"]),
        Route("/v1/models/{model}/run", _endpoint(state, playground.model_run), methods=["GET"]),
        *(Route(path, _endpoint(state, playground.page, auth=False), methods=["GET"]) for path in playground.ASSETS),
    ]
    middleware = [Middleware(RequestLog, state=state)]
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    handlers = {HTTPException: _http_error, ApiError: _api_error, Exception: _server_error}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)


def _endpoint(state: ServerState, handler, auth: bool = True):
    async def endpoint(request: Request) -> Response:
        if auth:
            authorize(request, state.api_key)
        if state.stopping and request.url.path != "/health":
            raise shutting_down()
        return await handler(request, state)

    return endpoint


def authorize(request: Request, key: str | None) -> None:
    """`Authorization: Bearer KEY`, compared in constant time, when the server has a key."""
    if key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "a valid API key is needed: send 'Authorization: Bearer KEY'.", code="invalid_api_key")


async def read_body(request: Request) -> bytes:
    """The body, refused (413) past MAX_BODY_BYTES, whether or not the client said its length."""
    too_big = ApiError(413, f"the request body is over {protocol.MAX_BODY_BYTES:,} bytes.", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > protocol.MAX_BODY_BYTES:
        raise too_big
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > protocol.MAX_BODY_BYTES:
            raise too_big
        parts.append(part)
    return b"".join(parts)


# ---- routes


async def health(request: Request, state: ServerState) -> Response:
    status = 503 if state.stopping else 200
    return JSONResponse({"status": "stopping" if state.stopping else "ok", "models": list(state.models)}, status)


async def metrics(request: Request, state: ServerState) -> Response:
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def list_models(request: Request, state: ServerState) -> Response:
    data = []
    for name, model in state.models.items():
        c, info = model.config, model.info
        data.append({
            "id": name, "object": "model", "created": state.created.get(name, 0), "owned_by": "charrnn",
            "model_type": c.model, "vocab_size": c.vocab_size, "num_layers": c.num_layers,
            "hidden_size": c.hidden_size, "steps": info.get("step"), "val_loss": info.get("val_loss"),
            "best_val_loss": info.get("best_val_loss"), "corpus_name": info.get("corpus_name"),
            "precision": model.precision, "device": str(model.device),
        })  # fmt: skip
    return JSONResponse({"object": "list", "data": data})


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down.", code="shutting_down", type="server_error")


async def score(request: Request, state: ServerState) -> Response:
    req = protocol.parse_score(protocol.parse_json(await read_body(request)), list(state.models))

    def scored(model: Model) -> tuple[Any, list[CharScore] | None]:
        result = model.score(req.text, per_line=req.per_line)
        return result, model.char_scores(req.text) if req.per_char else None

    try:
        result, chars = await asyncio.wrap_future(state.schedulers[req.model].call(scored))
    except CharRNNError as e:
        raise ApiError(400, str(e), param="text", code="invalid_value") from None
    except Stopping:
        raise shutting_down() from None
    body: dict[str, Any] = {"object": "score", "model": req.model}
    if req.per_line:
        body["lines"] = [
            {"text": line.text, "nats": line.nats, "chars": line.chars, "nats_per_char": _finite(line.nats_per_char),
             "bits_per_char": _finite(line.bits_per_char), "perplexity": _finite(line.perplexity)}
            for line in result
        ]  # fmt: skip
    else:
        body.update(result.to_dict())
    if chars is not None:
        body["per_char"] = [protocol.char_score(c) for c in chars]
    return JSONResponse(body)


def _finite(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


async def completions(request: Request, state: ServerState) -> Response:
    models = state.models
    body = protocol.parse_json(await read_body(request))
    req = protocol.parse_completion(
        body, list(models), lambda name: models[name].bundle.vocab, state.max_tokens, state.max_n
    )
    job = Job(req.model, req.prompt, req.settings, asyncio.get_running_loop())
    if not state.schedulers[req.model].submit(job):
        raise ApiError(
            429, "the server is at capacity (--max-streams and its queue are full); retry shortly.",
            code="server_busy", type="rate_limit_error", headers={"Retry-After": str(RETRY_AFTER_S)},
        )  # fmt: skip
    log = request.scope.setdefault("charrnn", {})
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        return StreamingResponse(
            _events(job, req, cid, created, log), media_type="text/event-stream", headers=SSE_HEADERS
        )
    texts = await _collect(job, request)
    if texts is None:  # the client went away: its streams are freed, and nobody reads an answer
        return Response(status_code=499)
    log["chars"] = sum(len(t) for t in texts)
    choices = [(t, s.finish_reason) for t, s in zip(texts, job.streams, strict=True)]
    return JSONResponse(protocol.completion(cid, created, req.model, len(req.prompt), choices))


async def _collect(job: Job, request: Request) -> list[str] | None:
    """Every choice's whole text, or None when the client disconnects first (the job is then cancelled)."""
    parts: list[list[str]] = [[] for _ in job.streams]

    async def drain() -> None:
        while True:
            await job.news_after()  # the whole text is wanted: no need to wake at every step
            over = True
            for s, p in zip(job.streams, parts, strict=True):
                text, finish = s.take()
                p.append(text)
                over = over and finish is not None
            if over:
                return

    done, gone = asyncio.ensure_future(drain()), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (done, gone):
            task.cancel()
        job.cancel()
    return ["".join(p) for p in parts] if done.done() and not done.cancelled() else None


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read, so only that message is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _events(job: Job, req: CompletionRequest, cid: str, created: int, log: dict) -> AsyncIterator[bytes]:
    """The stream's Server-Sent Events: a chunk per choice with news at each wake-up, each choice's last with its
    finish_reason, the usage if asked, then [DONE]. Cancelled (the client left) or not, the job ends here."""
    sent = [False] * len(job.streams)  # the choice's final chunk is out
    try:
        while not all(sent):
            await job.news_after()
            out = []
            for s in job.streams:
                if sent[s.index]:
                    continue
                text, finish = s.take()
                if text or finish:
                    out.append(protocol.sse(protocol.chunk(cid, created, req.model, s.index, text, finish)))
                sent[s.index] = finish is not None
            if out:
                yield b"".join(out)
        if req.include_usage:
            usage = protocol.usage(len(req.prompt), sum(s.sent for s in job.streams))
            yield protocol.sse({"id": cid, "object": "text_completion", "created": created, "model": req.model,
                                "choices": [], "usage": usage})  # fmt: skip
        yield protocol.sse("[DONE]")
    finally:
        job.cancel()
        log["chars"] = sum(s.sent for s in job.streams)


# ---- errors, and the log line


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route: 404, wrong method: 405) in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    message = {404: f"there is no {request.url.path[:100]} here.", 405: f"{request.method} is not allowed here."}
    err = ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)), code="not_found")
    return JSONResponse(err.body(), exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    err = ApiError(500, "the server failed on this request; its log says why.", type="server_error")
    return JSONResponse(err.body(), 500)


def _route_label(path: str) -> str:
    """The path as /metrics counts it: a route's own path, the run route's template, or "other" (a client may
    send any path: counting each would let it grow the metrics without bound)."""
    if path in ROUTES:
        return path
    parts = path.split("/")
    if len(parts) == 5 and parts[:3] == ["", "v1", "models"] and parts[3] and parts[4] == "run":
        return "/v1/models/{model}/run"
    return "other"


class RequestLog:
    """ASGI middleware: one line per request on the server's log (method, path, status, characters, seconds),
    written when the response ends, and the request counted in /metrics."""

    def __init__(self, app, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, seen = time.perf_counter(), {"status": 500}

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as e:
            self.state.log(f"error in {scope['method']} {scope['path']}: {type(e).__name__}: {e}")
            raise
        finally:
            path = _route_label(scope["path"])
            status = seen["status"]
            self.state.metrics.request(scope["method"], path, status)
            chars = scope.get("charrnn", {}).get("chars")
            said = f" {chars} chars" if chars is not None else ""
            shown = json.dumps(scope["path"][:200])[1:-1]  # a path is the client's text: escaped, on one line
            self.state.log(f"{scope['method']} {shown} {status}{said} {time.perf_counter() - start:.3f}s")
