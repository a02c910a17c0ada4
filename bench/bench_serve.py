"""Benchmark `charrnn serve`: streaming clients' characters per second against generate() in the same run.

    .venv/bin/python bench/bench_serve.py [--hidden-size 512 --num-layers 2 --length 2000 --clients 1,8,64]
    .venv/bin/python bench/bench_serve.py --quick      (a small model and short streams: a smoke test, seconds)
    .venv/bin/python bench/bench_serve.py --clients 64 --churn 10000   (then 10,000 requests, one in ten leaving)

A seeded, untrained model (speed does not depend on the weights) is exported to a temporary .safetensors and
served by `charrnn serve` in a subprocess on a free port. For each client count N, N clients stream a
completion of --length characters at once over raw SSE (httpx; one event loop, in this process), and then
generate(num_samples=N) runs here while the server is idle. Prints one JSON object per client count: aggregate
chars/s, generate()'s, their ratio, time to first character p50/p99 (ms, as the clients see it) and the
server's resident memory. Best of --repeats for the rates; never asserts. --churn then sends that many
requests from 64 clients, one in ten hanging up halfway, and counts errors, completed texts that are short or
differ from their seed's text alone, active streams afterwards, and the server's memory after the first 1000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_model_args, model_fields, untrained_model  # noqa: E402

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny-shakespeare's 65


def export_model(args, directory: Path) -> Path:
    from charrnn.checkpoint.files import export_bundle
    from charrnn.checkpoint.state import ModelBundle
    from charrnn.text.vocab import Vocab

    model = untrained_model(args, len(CHARS))
    return export_bundle(ModelBundle.of(model, Vocab(CHARS)), directory / "bench.safetensors")


def start_server(path: Path, args) -> tuple[subprocess.Popen, str]:
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "charrnn", "serve", str(path), "--port", "0", "--device", "cpu",
           "--precision", args.precision, "--max-tokens", str(args.length), "--max-queue", "1024"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(repo))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("listening on "):
            url = line.split()[-1]
            break
    else:
        raise SystemExit(f"the server did not start: {proc.wait()}")
    # Its request log is read all along by a thread: a full stderr pipe would block the server's log writes
    # (10,000 requests write ~600 KB of log lines; a pipe holds 64 KB).
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, url


async def sse_texts(url: str, body: dict) -> AsyncIterator[str]:
    """Each event's text of one streamed completion, over a bare asyncio connection: HTTP/1.1 by hand, the
    chunked body parsed as it comes. On these 2 cores the clients share the CPU with the server, and httpx's
    per-event cost took ~10 % of the server's rate; this client costs a fraction of that. Leaving the loop
    early closes the connection (a client hanging up mid-stream)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n" % host.encode()
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload) + payload)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            status = head.split(b"\r\n", 1)[0].decode()
            raise RuntimeError(f"the server answered {status!r}")
        while size := int((await reader.readline()).strip() or b"0", 16):  # a chunk: whole SSE events
            data = await reader.readexactly(size + 2)
            for event in data[:-2].split(b"\n\n"):
                if event.startswith(b"data: {"):
                    yield json.loads(event[6:])["choices"][0]["text"]
    finally:
        writer.close()


async def one_stream(url: str, length: int, seed: int) -> tuple[int, float]:
    """(characters received, seconds to the first one) for one streamed completion."""
    body = {"prompt": "\n", "max_tokens": length, "temperature": 0.8, "seed": seed, "stream": True}
    start, first, chars = time.perf_counter(), None, 0
    async for text in sse_texts(url, body):
        if text and first is None:
            first = time.perf_counter() - start
        chars += len(text)
    return chars, first if first is not None else float("nan")


async def clients(url: str, n: int, length: int) -> tuple[float, list[float], int]:
    """(seconds for all n streams, their times to first character, characters received)."""
    start = time.perf_counter()
    results = await asyncio.gather(*(one_stream(url, length, seed) for seed in range(n)))
    seconds = time.perf_counter() - start
    return seconds, [t for _, t in results], sum(c for c, _ in results)


async def churn_stream(url: str, length: int, seed: int, leave: bool) -> str | None:
    """One streamed completion's text; with `leave`, the client hangs up halfway (None)."""
    body = {"prompt": "\n", "max_tokens": length, "temperature": 0.8, "seed": seed, "stream": True}
    parts: list[str] = []
    got = 0
    async for text in sse_texts(url, body):
        parts.append(text)
        got += len(text)
        if leave and got >= length // 2:
            return None  # leaving the loop closes the connection mid-stream
    return "".join(parts)


async def churn(url: str, pid: int, requests: int, n: int, length: int, expected: list[str]) -> dict:
    """`requests` streamed completions from `n` clients, one in ten hanging up halfway: errors, completed texts
    that differ from their seed's text alone, and the server's memory after the first thousand and at the end."""
    import httpx

    counter = iter(range(requests))
    tally = {"completed": 0, "left": 0, "errors": 0, "mismatched": 0, "truncated": 0}
    rss: dict[int, float | None] = {}  # requests sent -> the server's resident MB then

    async def client_loop() -> None:
        for i in counter:
            seed = i % len(expected)
            try:
                text = await churn_stream(url, length, seed, leave=i % 10 == 9)
            except Exception:  # noqa: BLE001 - counted: the benchmark reports every kind of failure
                tally["errors"] += 1
                continue
            if text is None:
                tally["left"] += 1
            else:
                tally["completed"] += 1
                tally["truncated"] += len(text) != length
                tally["mismatched"] += text != expected[seed]
            if i % 1000 == 999:
                rss[i + 1] = rss_mb(pid)

    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(n)))
    await asyncio.sleep(0.5)  # the last hang-ups reach the scheduler
    async with httpx.AsyncClient(timeout=30) as client:
        metrics = (await client.get(url + "/metrics")).text
    active = re.search(r"^charrnn_active_streams\{[^}]*\} (\d+)$", metrics, re.M)
    return {
        **tally,
        "seconds": round(time.perf_counter() - start, 1),
        "active_streams_after": int(active.group(1)) if active else None,
        "rss_after_1000_mb": rss.get(1000),
        "rss_end_mb": rss_mb(pid),
        "rss_by_thousand_mb": [round(v, 1) if v else v for _, v in sorted(rss.items())],
    }


def generate_rate(model, n: int, length: int) -> float:
    start = time.perf_counter()
    texts = model.generate("\n", length=length, temperature=0.8, num_samples=n, seed=0)
    chars = sum(map(len, texts)) if isinstance(texts, list) else len(texts)
    return chars / (time.perf_counter() - start)


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(m.group(1)) / 1024 if m else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def churn_line(model, url: str, proc: subprocess.Popen, args) -> dict:
    length, clients_n = 200, 64
    expected = [model.generate("\n", length=length, temperature=0.8, seed=s) for s in range(16)]
    result = asyncio.run(churn(url, proc.pid, args.churn, clients_n, length, expected))
    return {"bench": "serve_churn", "requests": args.churn, "clients": clients_n, "precision": args.precision,
            **result, **model_fields(args, len(CHARS), length)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser, length=2000)
    parser.add_argument("--clients", default="1,8,64", help="comma-separated concurrent client counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", help="the server's and generate()'s --precision")
    parser.add_argument("--quick", action="store_true", help="a 1x64 model, 200 characters, 1 and 8 clients")
    parser.add_argument("--churn", type=int, default=0, help="then this many requests of 200 characters from 64 "
                        "clients, one in ten hanging up halfway (the issue's figure: 10000)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.hidden_size, args.num_layers, args.length, args.clients, args.repeats = 64, 1, 200, "1,8", 1
    import charrnn

    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(args, Path(tmp))
        model = charrnn.load(path, device="cpu", precision=args.precision)
        proc, url = start_server(path, args)
        try:
            for n in (int(c) for c in args.clients.split(",")):
                best, ttfc, received, base = 0.0, [], 0, 0.0
                for _ in range(args.repeats):  # interleaved: the server's run, then generate()'s
                    seconds, firsts, received = asyncio.run(clients(url, n, args.length))
                    if received / seconds > best:
                        best, ttfc = received / seconds, firsts
                    base = max(base, generate_rate(model, n, args.length))
                line = {
                    "bench": "serve",
                    "clients": n,
                    "precision": args.precision,
                    "chars_per_s": round(best),
                    "generate_chars_per_s": round(base),
                    "ratio": round(best / base, 3),
                    "ttfc_p50_ms": round(1000 * statistics.median(ttfc), 1),
                    "ttfc_p99_ms": round(1000 * percentile(ttfc, 0.99), 1),
                    "complete": received == n * args.length,
                    "server_rss_mb": rss_mb(proc.pid),
                    **model_fields(args, len(CHARS), args.length),
                }
                print(json.dumps(line), flush=True)
            if args.churn:
                print(json.dumps(churn_line(model, url, proc, args)), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
