"""Running the server: ServeConfig, the models loaded by name, the refused public bind, and uvicorn on a socket
bound here (so --port 0 works and a taken port is one sentence), stopped by SIGINT/SIGTERM within seconds.

Every model's scheduler runs on the main thread (scheduler.run_all: torch runs on no other thread, which would
slow every step) and uvicorn's event loop on a thread of its own. A signal stops accepting connections, ends every
in-flight stream with a final event (finish_reason "abort"), lets those responses finish, and returns
normally: the command exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charrnn.api import Model
from charrnn.errors import CharRNNError, UsageError
from charrnn.serve.protocol import MAX_N

INSTALL = "charrnn serve needs Starlette and uvicorn: pip install 'charrnn[serve]'."
GRACE_S = 3.0  # after a signal, how long responses in flight get to finish (they end at the next step)
MAX_STREAMS = 1024  # --max-streams at most: a Sampler and a generator per stream


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    no_auth: bool = False
    cors_origins: list[str] = field(default_factory=list)
    max_streams: int = 256  # streams in one model's batch
    max_queue: int = 256  # streams waiting for a place; past both, 429
    max_tokens: int = 4096  # max_tokens a request may ask for
    watch: bool = False  # reload a model when its checkpoint file changes (serve/watch.py)

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be between 0 and 65535, not {self.port}.")
        if not 1 <= self.max_streams <= MAX_STREAMS:
            raise UsageError(f"--max-streams must be between 1 and {MAX_STREAMS}, not {self.max_streams}.")
        if self.max_queue < 0:
            raise UsageError(f"--max-queue must be at least 0, not {self.max_queue}.")
        if self.max_tokens < 1:
            raise UsageError(f"--max-tokens must be at least 1, not {self.max_tokens}.")
        if self.api_key is not None and not self.api_key.strip():
            raise UsageError("--api-key (or CHARRNN_API_KEY) is empty; give a key, or leave it unset.")
        if self.api_key is None and not self.no_auth and not is_loopback(self.host):
            raise UsageError(
                f"--host {self.host} can be reached from other machines, so it needs --api-key KEY (or "
                "CHARRNN_API_KEY); pass --no-auth to serve it to anyone who can reach it."
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def require_http() -> None:
    """CharRNNError in one sentence when the optional `serve` extra is not installed."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise CharRNNError(INSTALL) from None


def model_names(paths: list[Path]) -> list[str]:
    """Each checkpoint's name: its run directory's, or the file's stem; two alike are refused."""
    names = [p.resolve().name if p.is_dir() else p.stem for p in paths]
    seen: set[str] = set()
    for name, path in zip(names, paths, strict=True):
        if name in seen:
            raise UsageError(
                f"two models would both be named {name!r} ({path}); serve them from differently named places."
            )
        seen.add(name)
    return names


def serve(models: dict[str, Model], cfg: ServeConfig, log: Callable[[str], None]) -> None:
    """Serve `models` until SIGINT or SIGTERM. `log` hears every line for stderr: listening, one per request."""
    import uvicorn

    from charrnn.serve.app import build_app
    from charrnn.serve.scheduler import run_all

    cfg.validate()
    state = _state(models, cfg, log)
    if cfg.watch:
        from charrnn.serve.watch import Watcher

        state.watch = True
        Watcher(state, log).start()  # a daemon thread: it ends when state.stopping does, or with the process
    schedulers = state.schedulers
    sock = _bind(cfg.host, cfg.port)
    config = uvicorn.Config(
        build_app(state, cfg.cors_origins), log_config=None, access_log=False, lifespan="off",
        timeout_graceful_shutdown=int(GRACE_S), ws="none",
    )  # fmt: skip
    _quiet_uvicorn()
    server = _server(config, lambda: log(f"listening on {_url(sock)}"))

    def stop_all() -> None:
        state.stopping = True
        for scheduler in schedulers.values():
            scheduler.stop()

    def on_signal(signum: int, frame) -> None:
        if not state.stopping:
            log(f"{signal.Signals(signum).name}: stopping; streams in flight end now")
        server.force_exit = server.should_exit  # a second signal: stop waiting for anything
        server.should_exit = True
        stop_all()

    def http() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        finally:
            stop_all()  # however the loop ended, the schedulers end too

    # torch runs on this thread only (scheduler.py says why): every model's scheduler runs here, in turn, and the
    # event loop in a thread that never runs torch.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    loop_thread = threading.Thread(target=http, name="charrnn-http", daemon=True)
    loop_thread.start()
    try:
        run_all(list(schedulers.values()))
        loop_thread.join(GRACE_S + 2)
    finally:
        for s_, handler in previous.items():
            signal.signal(s_, handler)
        stop_all()
        sock.close()


def _state(models: dict[str, Model], cfg: ServeConfig, log: Callable[[str], None]):
    """The app's ServerState: the metrics and a Scheduler per model."""
    from charrnn.serve.app import ServerState
    from charrnn.serve.metrics import Metrics
    from charrnn.serve.scheduler import Scheduler

    metrics = Metrics(list(models))
    cond = threading.Condition()  # one for every model: their schedulers share the main thread (run_all)
    schedulers = {
        name: Scheduler(name, model, cfg.max_streams, cfg.max_queue, metrics, on_error=log, cond=cond)
        for name, model in models.items()
    }
    return ServerState(
        models, schedulers, metrics, cfg.api_key, cfg.max_tokens, min(MAX_N, cfg.max_streams), log,
        created={name: _mtime(m.path) for name, m in models.items()},
    )  # fmt: skip


def _server(config, on_listening: Callable[[], None]) -> Any:
    """uvicorn.Server that says when it listens and leaves signals to serve(): in its thread it installs none,
    and it never raises a signal again on the way out (uvicorn's own would turn a clean stop into exit 143)."""
    import uvicorn

    # The class is made here, where uvicorn (an optional extra) is known to be importable.
    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit:
                on_listening()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it (Linux): without it, a response written as headers then body waited for the
    # client's delayed ACK, and every request after the first on a kept-alive connection took 40 ms more.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise CharRNNError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host."
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _mtime(path: Path) -> int:
    try:
        return int(path.stat().st_mtime)
    except OSError:
        return 0


def _quiet_uvicorn() -> None:
    """uvicorn logs nothing of its own: the server's lines are charrnn's (RequestLog), on stderr through `log`."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [logging.NullHandler()]
        logger.propagate = False
