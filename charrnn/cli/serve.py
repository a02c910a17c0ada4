"""`charrnn serve`: trained models over an OpenAI-compatible HTTP API, for other programs (charrnn/serve/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn.cli import heap
from charrnn.cli.console import say
from charrnn.cli.options import resolve_checkpoint
from charrnn.cli.sample import SampleDevice
from charrnn.cli.signals import user_errors

SERVE_EPILOG = """Examples:\n
  charrnn serve checkpoints/notes           (http://127.0.0.1:8000/v1, the model named "notes")\n
  charrnn serve checkpoints/notes --watch   (open http://127.0.0.1:8000/ for the playground page; it follows the run)\n
  curl -N localhost:8000/v1/completions -d '{"prompt": "ROMEO:", "max_tokens": 200, "stream": true}'\n
  CHARRNN_API_KEY=secret charrnn serve --host 0.0.0.0 checkpoints/a checkpoints/b"""

ServeCheckpoints = Annotated[
    Optional[list[Path]],
    typer.Argument(
        metavar="CHECKPOINT",
        help="Models to serve, each a checkpoint or run directory, named by its run directory (or file stem) "
        "\\[default: the newest run under ./checkpoints].",
        show_default=False,
    ),
]
ServeHost = Annotated[str, typer.Option(help="Address to listen on; one other machines can reach needs --api-key.")]
ServePort = Annotated[int, typer.Option(help="Port to listen on (0: any free one; the log line says which).")]
ServeApiKey = Annotated[
    Optional[str],
    typer.Option(
        envvar="CHARRNN_API_KEY",
        help="Every /v1/ request must send 'Authorization: Bearer KEY' (or set CHARRNN_API_KEY).",
        show_default=False,
        show_envvar=False,
    ),
]
ServeNoAuth = Annotated[bool, typer.Option("--no-auth", help="Serve a non-loopback --host without an API key.")]
ServeCors = Annotated[
    Optional[list[str]],
    typer.Option("--cors-origin", help="Let web pages from this origin call the API (repeatable).", show_default=False),
]
ServePrecision = Annotated[
    str, typer.Option(help="fp32 (exact), int8 (CPU), bf16 or auto, as for charrnn sample (docs/sampling.md).")
]
ServeMaxStreams = Annotated[int, typer.Option(help="Streams stepped together in one model's batch at most.")]
ServeMaxQueue = Annotated[int, typer.Option(help="Streams waiting for a place in the batch; past both, 429.")]
ServeMaxTokens = Annotated[int, typer.Option(help="The most characters (max_tokens) a request may ask for.")]
ServeWatch = Annotated[
    bool,
    typer.Option(
        "--watch", help="Reload a model when its checkpoint changes (a training run's new best.pt), between requests."
    ),
]


def serve(
    checkpoints: ServeCheckpoints = None,
    host: ServeHost = "127.0.0.1",
    port: ServePort = 8000,
    api_key: ServeApiKey = None,
    no_auth: ServeNoAuth = False,
    cors_origin: ServeCors = None,
    device: SampleDevice = "auto",
    precision: ServePrecision = "fp32",
    max_streams: ServeMaxStreams = 256,
    max_queue: ServeMaxQueue = 256,
    max_tokens: ServeMaxTokens = 4096,
    watch: ServeWatch = False,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API (completions, streamed or not), batching every request; the
    page at / is a playground: generate, score a text, see the run's curve."""
    with user_errors():
        from charrnn.serve.server import ServeConfig, model_names, require_http

        require_http()
        cfg = ServeConfig(
            host, port, api_key, no_auth, list(cors_origin or []), max_streams, max_queue, max_tokens, watch
        )
        cfg.validate()  # before the models load: a refused bind is said at once

        from charrnn import api
        from charrnn.serve.log import LogLines
        from charrnn.serve.server import serve as run

        paths = list(checkpoints or [])
        names = model_names(paths) if paths else None
        files = [resolve_checkpoint(p) for p in paths] if paths else [resolve_checkpoint(None)]
        if names is None:
            names = model_names([files[0].parent])
        models = {}
        for name, path in zip(names, files, strict=True):
            models[name] = api.load(path, device=device, precision=precision)
            say(f"model {name}: {path}")
        heap.release()
        log = LogLines(say)  # a stderr nobody reads must not stop the server (serve/log.py)
        try:
            run(models, cfg, log)
        finally:
            log.close()
