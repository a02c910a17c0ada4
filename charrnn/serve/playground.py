"""The playground: the page at `/` (static/index.html, its script and its style, shipped in the package) and the
run endpoint it draws a model's training curve from.

    GET /                       the page; it holds no data, so it needs no key (it says whether the API needs
                                one, so the page asks for it at once, and again on a 401; and whether --watch
                                may reload the models, so the page polls /v1/models)
    GET /static/playground.js   its script, GET /static/playground.css  its style
    GET /v1/models/{id}/run     the model's run: evaluations and previews (run_info), with the API key

The page only calls the server's own API (completions, models, score, run), so everything it shows a user can
also get with curl. Its files are read once and sent with headers that keep a browser to them alone: a
Content-Security-Policy that allows only same-origin scripts, styles and requests (no inline script, so model
text the page shows can never run even if it were ever put into markup), nosniff, and no framing.
"""

from __future__ import annotations

import asyncio
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from charrnn.serve import protocol
from charrnn.serve.run_info import run_info

if TYPE_CHECKING:
    from charrnn.serve.app import ServerState

ASSETS = {  # what the page is made of: the only files served, each by a fixed name
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
    "/static/playground.css": ("playground.css", "text/css; charset=utf-8"),
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a newer charrnn's page is picked up at the next load
}


@cache
def asset(name: str) -> bytes:
    """A file of the page, read from the package once."""
    # joinpath takes one name a call on Python 3.10
    return resources.files("charrnn.serve").joinpath("static").joinpath(name).read_bytes()


async def page(request: Request, state: ServerState) -> Response:
    """The page, its script or its style, by the request's path (one of ASSETS)."""
    name, media_type = ASSETS[request.url.path]
    body = asset(name)
    if name == "index.html":
        body = page_for(body, key=state.api_key is not None, watch=state.watch)
    return Response(body, media_type=media_type, headers=PAGE_HEADERS)


def page_for(html: bytes, key: bool, watch: bool) -> bytes:
    """The page with what it needs to know of this server: whether the API needs a key (so the page asks for it
    before any request is refused), and whether models may be reloaded (--watch: the page asks for them again
    every few seconds; otherwise once, and the server's log holds no line every few seconds)."""
    if key:
        html = html.replace(b'data-auth="none"', b'data-auth="key"', 1)
    if watch:
        html = html.replace(b'data-watch="no"', b'data-watch="yes"', 1)
    return html


async def model_run(request: Request, state: ServerState) -> Response:
    """The run of the model named in the path: read from its checkpoint's own directory, off the event loop."""
    name = protocol.model_name({"model": request.path_params["model"]}, list(state.models))  # 404 if unknown
    model = state.models[name]
    body = await asyncio.to_thread(run_info, model.path)
    return JSONResponse({**body, "model": name})
