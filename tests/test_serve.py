"""`charrnn serve`: a live server on a free port, talked to with the real `openai` client and raw HTTP.

Seeded text equals Model.generate's, alone and beside 63 other requests; SSE framing; every bad input's status
and error shape; 429 at capacity; a disconnect freeing its slot (charrnn_active_streams); auth; the refused
public bind; SIGTERM with a stream in flight ending it with a final event and exit 0 within 5 s.
"""

from __future__ import annotations

import fcntl
import json
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import charrnn_cmd, cli, cli_env, wait_for_line

import charrnn

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


F_SETPIPE_SZ = 1031  # fcntl's F_SETPIPE_SZ (Linux): a pipe's capacity


class Server:
    """`charrnn serve ARGS --port 0` in a subprocess; its stderr is read all along (lines), so it never blocks."""

    def __init__(self, args, cwd, env=None) -> None:
        cmd = charrnn_cmd("serve", *args, "--port", "0", "--device", "cpu")
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=env or cli_env(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines = wait_for_line(self.proc, lambda line: line.startswith("listening on "), timeout=90)
        self.url = self.lines[-1].split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

    def post(self, path: str, body, **kw) -> httpx.Response:
        content = body if isinstance(body, bytes | str) else json.dumps(body)
        return httpx.post(self.url + path, content=content, **{"timeout": 30, **kw})

    def active(self) -> int:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return int(re.search(r"^charrnn_active_streams\{[^}]*\} (\d+)$", text, re.M).group(1))

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then (exit code, stdout)."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)  # stdout stays empty, so nothing can fill its pipe
        self._reader.join(timeout=5)  # stderr is the reader's alone: all of it is in lines
        return self.proc.returncode, self.proc.stdout.read()


@pytest.fixture(scope="module")
def model(trained_run):
    return charrnn.load(trained_run, device="cpu")


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    s = Server([trained_run, "--max-tokens", "2000"], cwd=tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()


# ---- the same text as Model.generate


def test_batch_rows_that_join_and_leave_keep_their_text(model):
    """The scheduler's Batch alone: streams join at different steps (the batch grows 1 -> 8), run past a block
    of uniforms, leave (it shrinks again, rows moved), and each gives Model.generate's text for its seed."""
    from charrnn.config.sample import SampleConfig
    from charrnn.serve.batch import Batch

    batch = Batch(model.net, model.device, "fp32")
    plan = {0: [(0, 300)], 5: [(1, 600), (2, 40)], 7: [(3, 500), (4, 30), (5, 700)], 400: [(6, 300)]}  # step: (id, n)
    lengths, texts, caps, step = {}, {}, [], 0
    while step in plan or any(len(texts[i]) < lengths[i] for i in texts):
        joiners = []
        for i, n in plan.get(step, []):
            prime = model.prime_ids("the "[: 1 + i % 4])
            cfg = SampleConfig(temperature=[1.0, 0.7, 0.0][i % 3], top_k=[None, 5][i % 2], seed=50 + i)
            priming = batch.priming([i], [prime])
            priming.advance(model.net, len(prime))
            joiners.append(Batch.joiner(i, priming.result(0), cfg))
            lengths[i], texts[i] = n, ""
        for i, token in batch.step(joiners):
            texts[i] += model.vocab[token]
            if len(texts[i]) == lengths[i]:
                batch.leave(i)
        caps.append(batch.cap)
        step += 1
    assert caps[0] == 1 and max(caps) == 8 and caps[-1] == 1  # it grew, and shrank back to one
    for i, text in texts.items():
        alone = model.generate(
            "the "[: 1 + i % 4], length=lengths[i], temperature=[1.0, 0.7, 0.0][i % 3], top_k=[None, 5][i % 2],
            seed=50 + i,
        )  # fmt: skip
        assert text == alone, i


def test_a_swapped_model_serves_new_requests_while_streams_in_flight_finish_on_the_old(trained_run):
    """Scheduler.swap (serve --watch's reload), driven step by step: a stream started before the swap gives the
    old model's text for its seed, one queued after it the new model's, and both batches empty out."""
    import asyncio

    import torch

    from charrnn.serve.metrics import Metrics
    from charrnn.serve.scheduler import Scheduler
    from charrnn.serve.stream import Job, Settings

    old, new = charrnn.load(trained_run, device="cpu"), charrnn.load(trained_run, device="cpu")
    with torch.no_grad():
        for p in new.net.parameters():
            p.mul_(1.5)  # other weights: another text for the same seed
    sched = Scheduler("m", old, max_streams=8, max_queue=8, metrics=Metrics(["m"]))
    loop = asyncio.new_event_loop()  # never run: no handler waits, so nothing is woken
    before = Job("m", "the ", [Settings(0.8, None, None, 300, 7)], loop)
    after = Job("m", "the ", [Settings(0.8, None, None, 300, 7)], loop)
    assert sched.submit(before)
    for _ in range(20):
        sched._iteration([*sched.inbox])
        sched.inbox.clear()
    swapped = sched.swap(new)
    assert sched.submit(after)
    texts = {before: "", after: ""}
    for _ in range(400):
        work = [*sched.inbox]
        sched.inbox.clear()
        sched._iteration(work)
        for job in texts:
            texts[job] += job.streams[0].take()[0]
    assert swapped.done() and sched.model is new and sched.retiring == [] and sched.active == 0
    assert texts[before] == old.generate("the ", length=300, temperature=0.8, seed=7)
    assert texts[after] == new.generate("the ", length=300, temperature=0.8, seed=7)
    assert texts[before] != texts[after]
    loop.close()


def _drive(sched, jobs, iterations):
    """Run the scheduler's loop by hand; each job's text, and which jobs got characters at each iteration."""
    texts, got = {job: "" for job in jobs}, []
    for _ in range(iterations):
        work = [*sched.inbox]
        sched.inbox.clear()
        sched._iteration(work)
        new = {job: job.streams[0].take()[0] for job in jobs}
        for job, text in new.items():
            texts[job] += text
        got.append({job for job, text in new.items() if text})
    return texts, got


def test_a_long_prompt_is_primed_a_piece_at_a_time_while_the_batch_goes_on(model):
    """A 2,000-character prompt is primed PRIME_BUDGET characters between two steps: the stream already in the
    batch gets a character at every iteration meanwhile, and the long prompt's text is still generate()'s."""
    import asyncio

    from charrnn.serve.metrics import Metrics
    from charrnn.serve.scheduler import PRIME_BUDGET, Scheduler
    from charrnn.serve.stream import Job, Settings

    sched = Scheduler("m", model, max_streams=8, max_queue=8, metrics=Metrics(["m"]))
    loop = asyncio.new_event_loop()
    chars = [c for c in model.vocab if c.isprintable()]
    long_prompt = "".join(chars[(i * 7) % len(chars)] for i in range(2000))
    running = Job("m", "the ", [Settings(0.8, None, None, 100, 3)], loop)
    late = Job("m", long_prompt, [Settings(0.8, None, None, 50, 4)], loop)
    assert sched.submit(running)
    _drive(sched, [running], 2)
    assert sched.submit(late)
    texts, got = _drive(sched, [running, late], 60)
    pieces = -(-len(long_prompt) // PRIME_BUDGET)  # iterations that prime it
    assert all(running in g for g in got[:pieces])  # the running stream never waited for the long prompt
    assert all(late not in g for g in got[: pieces - 1]) and late in got[pieces - 1]
    assert texts[late] == model.generate(long_prompt, length=50, temperature=0.8, seed=4)
    loop.close()


def test_prompts_of_one_length_are_primed_together_and_keep_their_text(model):
    import asyncio

    from charrnn.serve.metrics import Metrics
    from charrnn.serve.scheduler import Scheduler
    from charrnn.serve.stream import Job, Settings

    sched = Scheduler("m", model, max_streams=16, max_queue=16, metrics=Metrics(["m"]))
    loop = asyncio.new_event_loop()
    prompts = ["the ", "and ", "to t", "a do", "the", "an"]
    jobs = [Job("m", p, [Settings(0.8, None, None, 80, 20 + i)], loop) for i, p in enumerate(prompts)]
    groups = []
    priming = sched.batch.priming
    sched.batch.priming = lambda keys, ids: groups.append(len(keys)) or priming(keys, ids)  # type: ignore[method-assign]
    for job in jobs:
        assert sched.submit(job)
    texts, _ = _drive(sched, jobs, 100)
    assert sorted(groups) == [1, 1, 4]  # four prompts of 4 characters as one batch, then the 3 and the 2
    for i, (job, p) in enumerate(zip(jobs, prompts, strict=True)):
        assert texts[job] == model.generate(p, length=80, temperature=0.8, seed=20 + i), p
    loop.close()


def test_stop_matcher_holds_back_what_may_become_a_stop():
    from charrnn.serve.stream import StopMatcher

    m = StopMatcher(("abc", "bd"))
    out = [m.feed(c) for c in "xabxab"]
    assert out == [("x", False), ("", False), ("", False), ("abx", False), ("", False), ("", False)]
    assert m.feed("d") == ("a", True)  # "ab" + "d": the stop "bd" begins at b
    m = StopMatcher(("abc",))
    assert [m.feed(c)[0] for c in "xab"] == ["x", "", ""] and m.flush() == "ab"


def _paced_job(interval: float):
    """A Job of one stream whose handler has just taken (its next take is `interval` away), and its loop."""
    import asyncio

    from charrnn.serve.stream import Job, Settings

    loop = asyncio.new_event_loop()
    job = Job("m", "\n", [Settings(0.8, None, None, 10, 0)], loop)
    job.streams[0].put("a")
    loop.run_until_complete(job.news_after(interval))  # the first take goes out at once
    assert job.streams[0].take() == ("a", None)
    return job, loop


def _from_the_scheduler(job, puts: str, finish: bool) -> None:
    """What the scheduler's thread does a step: characters into the stream, maybe its end, then wake_all."""
    from charrnn.serve.stream import wake_all

    time.sleep(0.1)  # the handler is waiting out its interval by now
    for ch in puts:
        job.streams[0].put(ch)
    if finish:
        job.streams[0].finish("length")
    wake_all({job})


def test_a_streams_end_is_not_held_back_to_the_next_interval():
    job, loop = _paced_job(interval=10.0)
    threading.Thread(target=_from_the_scheduler, args=(job, "bc", True)).start()
    start = time.perf_counter()
    loop.run_until_complete(job.news_after(10.0))
    assert time.perf_counter() - start < 5  # woken by the end, not by the 10 s interval
    assert job.streams[0].take() == ("bc", "length")
    assert not job.ending and not job.pacing
    loop.close()


def test_characters_without_an_end_wait_for_the_interval():
    job, loop = _paced_job(interval=0.5)
    threading.Thread(target=_from_the_scheduler, args=(job, "bc", False)).start()
    start = time.perf_counter()
    loop.run_until_complete(job.news_after(0.5))
    assert time.perf_counter() - start >= 0.45  # characters alone are paced: a few to an event
    assert job.streams[0].take() == ("bc", None)
    loop.close()


def test_completion_is_generates_text_for_its_seed(server, model, trained_run):
    client = server.client()
    r = client.completions.create(
        model=trained_run.name, prompt="the ", max_tokens=120, temperature=0.8, top_p=0.9, seed=11, n=2
    )
    texts = model.generate("the ", length=120, temperature=0.8, top_p=0.9, seed=11, num_samples=2)
    assert [c.text for c in r.choices] == texts  # choice i is stream seed + i, as --num-samples
    assert [c.finish_reason for c in r.choices] == ["length", "length"]
    assert r.object == "text_completion" and r.model == trained_run.name and r.id.startswith("cmpl-")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (4, 240, 244)


def test_streamed_completion_is_the_same_text(server, model):
    client = server.client()
    events = list(
        client.completions.create(model=server_model(server), prompt="a ", max_tokens=2000, temperature=0, stream=True)
    )
    assert len(events) > 1  # pieces as they come (a few characters to an event, FLUSH_INTERVAL_S apart)
    assert "".join(e.choices[0].text for e in events) == model.generate("a ", length=2000, temperature=0.0)
    assert [e.choices[0].finish_reason for e in events][-1] == "length"


def test_model_may_be_left_out_when_one_is_loaded(server, model):
    r = server.post("/v1/completions", {"prompt": "dog", "max_tokens": 50, "seed": 4, "top_k": 5})
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == model.generate("dog", length=50, temperature=1.0, top_k=5, seed=4)


def test_stop_strings_cut_the_text_before_them(server, model):
    full = model.generate("the ", length=300, temperature=1.0, seed=2)
    stop = full[40:42]
    r = server.post("/v1/completions", {"prompt": "the ", "max_tokens": 300, "seed": 2, "stop": [stop, "zzzz"]})
    choice = r.json()["choices"][0]
    assert choice["text"] == full[: full.index(stop)] and choice["finish_reason"] == "stop"
    streamed = raw_events(server, {"prompt": "the ", "max_tokens": 300, "seed": 2, "stop": stop, "stream": True})
    assert "".join(e["choices"][0]["text"] for e in streamed) == full[: full.index(stop)]


def raw_events(server, body) -> list:
    """The SSE stream read as bytes, framing checked: every event `data: ...` and a blank line, [DONE] last."""
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(r.iter_bytes()).decode()
    assert raw.endswith("data: [DONE]\n\n")
    blocks = raw.split("\n\n")[:-1]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks)
    return [json.loads(b[6:]) for b in blocks[:-1]]


def test_sse_framing_as_curl_sees_it(server, model):
    events = raw_events(server, {"prompt": "the ", "max_tokens": 60, "seed": 9, "stream": True, "n": 2,
                                 "stream_options": {"include_usage": True}})  # fmt: skip
    usage = events.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 120
    texts = model.generate("the ", length=60, temperature=1.0, seed=9, num_samples=2)
    for i in (0, 1):
        mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == i]
        assert "".join(c["text"] for c in mine) == texts[i]
        assert [c["finish_reason"] for c in mine][-1] == "length"
        assert all(c["finish_reason"] is None for c in mine[:-1])


def test_64_requests_at_once_each_give_their_text_alone(server, model):
    """Beside 63 others, with different settings in one batch, each request's text is its text alone."""
    name = server_model(server)
    temperatures, top_ks = [1.0, 0.8, 0.0, 0.5], [None, 6]

    def one(i):
        extra = {"top_k": top_ks[i % 2]} if top_ks[i % 2] else None
        pieces = server.client().completions.create(
            model=name, prompt="the "[: 1 + i % 4], max_tokens=80 + i, seed=100 + i, temperature=temperatures[i % 4],
            stream=True, extra_body=extra,
        )  # fmt: skip
        return "".join(p.choices[0].text for p in pieces)

    with ThreadPoolExecutor(64) as pool:
        got = list(pool.map(one, range(64)))
    for i, text in enumerate(got):
        alone = model.generate(
            "the "[: 1 + i % 4], length=80 + i, seed=100 + i, temperature=temperatures[i % 4], top_k=top_ks[i % 2]
        )
        assert len(text) == 80 + i
        assert text == alone, i


def server_model(server) -> str:
    return httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]


def test_every_models_scheduler_steps_on_one_thread_and_keeps_its_text(trained_run):
    """run_all: two models' schedulers on one thread (torch on a second thread would slow both), streams of
    both at once each giving their text alone; both stop, and the loop returns."""
    import asyncio

    import torch

    from charrnn.serve.metrics import Metrics
    from charrnn.serve.scheduler import Scheduler, run_all

    a, b = charrnn.load(trained_run, device="cpu"), charrnn.load(trained_run, device="cpu")
    with torch.no_grad():
        for p in b.net.parameters():
            p.mul_(1.5)  # another model: another text for the same seed
    cond, metrics = threading.Condition(), Metrics(["a", "b"])
    scheds = [Scheduler(n, m, 8, 8, metrics, cond=cond) for n, m in (("a", a), ("b", b))]
    with pytest.raises(ValueError, match="share one"):
        run_all([scheds[0], Scheduler("c", a, 8, 8, metrics)])
    loop = asyncio.new_event_loop()  # never run: nothing waits to be woken
    jobs = {s: [_job(s.name, 90, seed, loop) for seed in (3, 4)] for s in scheds}
    for s in scheds:
        assert all(s.submit(job) for job in jobs[s])
    runner = threading.Thread(target=run_all, args=(scheds,))
    runner.start()
    threads = {s.call(lambda model: threading.get_ident()).result(30) for s in scheds}
    deadline = time.monotonic() + 60
    while not all(job.done for js in jobs.values() for job in js) and time.monotonic() < deadline:
        time.sleep(0.01)
    for s in scheds:
        s.stop()
    runner.join(10)
    assert threads == {runner.ident} and not runner.is_alive()
    for s, model in zip(scheds, (a, b), strict=True):
        for job, seed in zip(jobs[s], (3, 4), strict=True):
            assert job.streams[0].take()[0] == model.generate("the ", length=90, temperature=0.8, seed=seed)
    loop.close()


def _job(model: str, length: int, seed: int, loop):
    from charrnn.serve.stream import Job, Settings

    return Job(model, "the ", [Settings(0.8, None, None, length, seed)], loop)


def test_two_models_are_served_at_once_and_both_end_on_sigterm(trained_run, tmp_path):
    """Two checkpoints with different weights, one server (both schedulers on its main thread): each model
    answers, at the same time, with its own text for the seed; SIGTERM then ends a stream in flight on each with
    a final event, and the server exits 0."""
    other = _other_weights(trained_run, tmp_path / "other.safetensors")
    s = Server([trained_run, other, "--max-tokens", "10000000"], cwd=tmp_path)
    try:
        names = [m["id"] for m in httpx.get(s.url + "/v1/models", timeout=10).json()["data"]]
        assert sorted(names) == sorted(["other", trained_run.name])

        def one(name):
            pieces = s.client().completions.create(
                model=name, prompt="the ", max_tokens=300, seed=5, temperature=0.8, stream=True
            )
            return "".join(p.choices[0].text for p in pieces)

        with ThreadPoolExecutor(4) as pool:
            got = dict(zip(names * 2, pool.map(one, names * 2), strict=True))
        for name, path in ((trained_run.name, trained_run), ("other", other)):
            assert got[name] == charrnn.load(path, device="cpu").generate("the ", length=300, temperature=0.8, seed=5)
        assert got["other"] != got[trained_run.name]
        streams = [_long_stream(s, name) for name in names]
        assert all(started.wait(30) for _, started, _ in streams)
    finally:
        code, out = s.stop()
    assert code == 0 and out == ""
    for events, _, reader in streams:
        reader.join(timeout=5)
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "abort"


def _other_weights(run, path):
    """The run's model with other weights (another text for any seed), exported to `path`."""
    import torch

    from charrnn.checkpoint.files import export_bundle
    from charrnn.checkpoint.state import ModelBundle

    model = charrnn.load(run, device="cpu")
    with torch.no_grad():
        for p in model.net.parameters():
            p.mul_(1.5)
    return export_bundle(ModelBundle.of(model.net, model.bundle.vocab), path)


def _long_stream(server, model=None):
    """A stream that would run for hours, read on a thread: (its event lines, set at the first, the thread)."""
    events, started = [], threading.Event()

    def read():
        body = {"prompt": "the ", "max_tokens": 10_000_000, "stream": True, **({"model": model} if model else {})}
        with httpx.stream("POST", server.url + "/v1/completions", timeout=30, json=body) as r:
            for line in r.iter_lines():
                if line:
                    events.append(line)
                    started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return events, started, reader


def test_a_stopped_models_streams_and_scores_end_while_the_other_serves(trained_run):
    """run_all, one model stopped: its stream in the batch and the one queued behind it end "abort", a score
    waiting for it fails with Stopping (its request answers 503) and so does one asked for after; the other
    model, on the same thread, goes on and gives its text."""
    from charrnn.serve.scheduler import Stopping

    (sa, sb), _, loop, runner = _two_schedulers(trained_run, max_streams_a=1)
    running, queued, other = _job("a", 10**7, 1, loop), _job("a", 50, 2, loop), _job("b", 200, 3, loop)
    assert sa.submit(running) and sa.submit(queued) and sb.submit(other)
    runner.start()
    _until(lambda: running.first_char is not None)
    with sa.cond:  # held: the loop cannot run the score before stop() is seen
        waiting = sa.call(lambda model: 1)
        sa.stop()
    with pytest.raises(Stopping):
        waiting.result(30)
    with pytest.raises(Stopping):
        sa.call(lambda model: 1).result(0)
    _until(lambda: other.done)
    assert [running.streams[0].finish_reason, queued.streams[0].finish_reason] == ["abort", "abort"]
    assert other.streams[0].take()[0] == sb.model.generate("the ", length=200, temperature=0.8, seed=3)
    sb.stop()
    runner.join(10)
    assert not runner.is_alive() and sa.reserved == 0 and sb.reserved == 0
    loop.close()


def test_a_model_whose_streams_fail_to_end_does_not_stop_the_other(trained_run, monkeypatch):
    (sa, sb), errors, loop, runner = _two_schedulers(trained_run)

    def broken():
        raise RuntimeError("a bug")

    monkeypatch.setattr(sa, "_end_all", broken)
    other = _job("b", 200, 3, loop)
    assert sb.submit(other)
    runner.start()
    sa.stop()
    _until(lambda: other.done)
    assert other.streams[0].take()[0] == sb.model.generate("the ", length=200, temperature=0.8, seed=3)
    assert any("ending its streams: RuntimeError: a bug" in line for line in errors)
    sb.stop()
    runner.join(10)
    assert not runner.is_alive()
    loop.close()


def _two_schedulers(run, max_streams_a: int = 8):
    """Schedulers "a" and "b" sharing a condition, the list both log errors to, an event loop that is never run
    (nothing waits to be woken), and a thread ready to run_all them."""
    import asyncio

    from charrnn.serve.metrics import Metrics
    from charrnn.serve.scheduler import Scheduler, run_all

    a, b = charrnn.load(run, device="cpu"), charrnn.load(run, device="cpu")
    cond, metrics, errors = threading.Condition(), Metrics(["a", "b"]), []
    sa = Scheduler("a", a, max_streams_a, 8, metrics, on_error=errors.append, cond=cond)
    sb = Scheduler("b", b, 8, 8, metrics, on_error=errors.append, cond=cond)
    runner = threading.Thread(target=run_all, args=([sa, sb],), daemon=True)
    return (sa, sb), errors, asyncio.new_event_loop(), runner


def _until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_models_lists_charrnns_facts(server, model, trained_run):
    r = server.client().models.list()
    (m,) = r.data
    assert m.id == trained_run.name and m.object == "model"
    facts = m.model_dump()
    assert (facts["vocab_size"], facts["num_layers"], facts["hidden_size"]) == (len(model.vocab), 1, 32)
    assert facts["steps"] == 20 and facts["best_val_loss"] == pytest.approx(model.info["best_val_loss"])


def test_score_gives_model_scores_numbers(server, model):
    text = "the quick brown fox\nover a lazy dog\n"
    whole = server.post("/v1/score", {"text": text}).json()
    assert whole["bits_per_char"] == pytest.approx(model.score(text).bits_per_char)
    lines = server.post("/v1/score", {"text": text, "per_line": True}).json()["lines"]
    assert [line["nats"] for line in lines] == pytest.approx([s.nats for s in model.score(text, per_line=True)])


def test_score_per_char_gives_each_characters_surprise_and_top_choices(server, model):
    text = "the fox\u00e9 ran"  # \u00e9: a character the model never saw, marked and charged, not refused
    r = server.post("/v1/score", {"text": text, "per_char": True}).json()
    assert r["bits_per_char"] == pytest.approx(model.score(text).bits_per_char)
    chars, expected = r["per_char"], model.char_scores(text)
    assert "".join(c["char"] for c in chars) == text and len(chars) == len(expected)
    assert chars[0]["bits"] is None and chars[0]["prob"] is None  # the first is context only
    for got, want in zip(chars[1:], expected[1:], strict=True):
        assert got["known"] == want.known and got["bits"] == pytest.approx(want.surprise, abs=1e-3)
        assert [c for c, _ in got["top"]] == [c for c, _ in want.top] and len(got["top"]) == 5
    unknown = chars[text.index("\u00e9")]
    assert unknown["known"] is False and unknown["prob"] is None and unknown["bits"] > 0
    r = server.post("/v1/score", {"text": "t" * 100_001, "per_char": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "text"
    assert "100,000" in r.json()["error"]["message"]


def test_a_stderr_nobody_reads_does_not_stop_the_server(trained_run, tmp_path):
    """Past the listening line, stderr is never read again: its pipe fills with request lines, and the
    server still answers every request at once (before, the event loop blocked in the log write)."""
    proc = subprocess.Popen(
        charrnn_cmd("serve", trained_run, "--port", "0", "--device", "cpu"), cwd=tmp_path, env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = wait_for_line(proc, lambda line: line.startswith("listening on "), timeout=90)
        url = lines[-1].split()[-1]
        fcntl.fcntl(proc.stderr.fileno(), F_SETPIPE_SZ, 4096)  # the smallest pipe: full after ~120 lines
        with httpx.Client(timeout=10) as client:  # a hang would be a timeout here
            for _ in range(1000):  # ~35 bytes of log each: 35 KB
                assert client.get(url + "/v1/nothing").status_code == 404
            assert client.post(url + "/v1/completions", json={"prompt": "the ", "max_tokens": 20}).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=20)[1]  # reading at last: the writer catches up and says what it dropped
    assert proc.returncode == 0
    assert "GET /v1/nothing 404" in rest


def test_requests_on_a_kept_alive_connection_are_not_held_back(server):
    """The openai client keeps its connection: each request after the first waited 40 ms for a delayed ACK
    (Nagle) until the server set TCP_NODELAY. 100 requests take ~0.1 s; with the wait, over 4 s."""
    with httpx.Client(timeout=10) as client:
        client.get(server.url + "/health")
        start = time.perf_counter()
        for _ in range(100):
            assert client.get(server.url + "/health").status_code == 200
        assert time.perf_counter() - start < 2.5


def test_metrics_count_paths_by_route_so_clients_cannot_grow_them():
    from charrnn.serve.app import _route_label

    assert _route_label("/v1/completions") == "/v1/completions"
    assert _route_label("/v1/models/notes/run") == "/v1/models/{model}/run"
    assert _route_label("/v1/models//run") == _route_label("/v1/models/a/b/run") == _route_label("/x/1") == "other"


def test_health_and_metrics(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    for name in ("charrnn_requests_total", "charrnn_active_streams", "charrnn_queued_streams",
                 "charrnn_generated_chars_total", "charrnn_time_to_first_char_seconds_bucket",
                 "charrnn_request_duration_seconds_count", "charrnn_batch_size_bucket"):  # fmt: skip
        assert name in text


# ---- bad input: one OpenAI-shaped error naming the field


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        ({"max_tokens": 5}, 400, "prompt"),
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": 7}, 400, "prompt"),
        ({"prompt": "t" * 40_000}, 400, "prompt"),
        ({"prompt": "the", "max_tokens": "5"}, 400, "max_tokens"),
        ({"prompt": "the", "max_tokens": 2001}, 400, "max_tokens"),
        ({"prompt": "the", "max_tokens": True}, 400, "max_tokens"),
        ({"prompt": "the", "temperature": -1}, 400, "temperature"),
        ({"prompt": "the", "temperature": 3}, 400, "temperature"),
        ({"prompt": "the", "top_p": 0}, 400, "top_p"),
        ({"prompt": "the", "top_k": 0}, 400, "top_k"),
        ({"prompt": "the", "n": 0}, 400, "n"),
        ({"prompt": "the", "n": 65}, 400, "n"),
        ({"prompt": "the", "seed": -1}, 400, "seed"),
        ({"prompt": "the", "stop": 5}, 400, "stop"),
        ({"prompt": "the", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"prompt": "the", "stream": "yes"}, 400, "stream"),
        ({"prompt": "the", "echo": True}, 400, "echo"),
        ({"prompt": "the", "model": 3}, 400, "model"),
        ({"prompt": "the", "model": "nope"}, 404, "model"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(server, body, status, param):
    r = server.post("/v1/completions", body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert error["message"].endswith(".") and "Traceback" not in r.text


def test_unknown_characters_are_listed(server):
    r = server.post("/v1/completions", {"prompt": "thé€"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "prompt" and "'é' '€'" in r.json()["error"]["message"]


def test_a_body_over_1_mb_is_413_and_unknown_routes_404(server):
    r = server.post("/v1/completions", b'{"prompt": "' + b"t" * (1 << 20) + b'"}')
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = server.post("/v1/score", {"text": "t" * (1 << 20)})
    assert r.status_code == 413
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"].startswith("there is no")
    assert httpx.get(server.url + "/v1/completions").status_code == 405


def test_the_openai_client_sees_errors_as_its_exceptions(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().completions.create(model=server_model(server), prompt="the", max_tokens=-1)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="missing", prompt="the")


# ---- capacity, disconnects, auth, the public bind, signals


def test_429_at_capacity_and_a_disconnect_frees_its_slot(trained_run, tmp_path):
    s = Server([trained_run, "--max-streams", "1", "--max-queue", "0", "--max-tokens", "10000000"], cwd=tmp_path)
    try:
        with httpx.stream("POST", s.url + "/v1/completions", timeout=30,
                          json={"prompt": "the ", "max_tokens": 10_000_000, "stream": True}) as r:  # fmt: skip
            chunks = r.iter_bytes()  # held: a dropped iterator would close the response
            next(chunks)
            assert s.active() == 1
            busy = s.post("/v1/completions", {"prompt": "the ", "max_tokens": 5})
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["type"] == "rate_limit_error"
        deadline = time.monotonic() + 5
        while s.active() != 0:
            assert time.monotonic() < deadline, "the disconnected stream still holds its slot"
            time.sleep(0.05)
        assert s.post("/v1/completions", {"prompt": "the ", "max_tokens": 5}).status_code == 200
        # a whole (not streamed) request whose client leaves frees its slot too
        with pytest.raises(httpx.ReadTimeout):
            s.post("/v1/completions", {"prompt": "the ", "max_tokens": 10_000_000}, timeout=0.5)
        deadline = time.monotonic() + 5
        while s.active() != 0:
            assert time.monotonic() < deadline, "the departed client's stream still holds its slot"
            time.sleep(0.05)
    finally:
        s.stop()


def test_an_api_key_guards_v1_but_not_health(trained_run, tmp_path):
    env = dict(cli_env(tmp_path), CHARRNN_API_KEY="sesame")
    s = Server([trained_run, "--host", "0.0.0.0"], cwd=tmp_path, env=env)  # a key: a public bind is allowed
    try:
        url = f"http://127.0.0.1:{s.port}"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            r = httpx.post(url + "/v1/completions", json={"prompt": "the"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/health").status_code == 200
        client = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        assert len(client.completions.create(model=trained_run.name, prompt="the", max_tokens=7).choices[0].text) == 7
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
    finally:
        s.stop()


def test_a_public_host_without_a_key_is_refused(trained_run, tmp_path):
    proc = cli(["serve", trained_run, "--host", "0.0.0.0"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--api-key" in proc.stderr and "--no-auth" in proc.stderr and "Traceback" not in proc.stderr


def test_without_the_extra_it_says_what_to_install(trained_run, tmp_path):
    code = "import sys; sys.modules['uvicorn'] = None; from charrnn.cli.app import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, "serve", str(trained_run)], cwd=tmp_path,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    assert "pip install 'charrnn[serve]'" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_ends_a_stream_in_flight_and_exits_0(trained_run, tmp_path):
    s = Server([trained_run, "--max-tokens", "10000000"], cwd=tmp_path)
    events, started, reader = _long_stream(s)
    assert started.wait(30)
    start = time.monotonic()
    code, out = s.stop()
    assert time.monotonic() - start < 5 and code == 0 and out == ""
    reader.join(timeout=5)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "abort"
    log = "".join(s.lines)
    assert "SIGTERM: stopping" in log and re.search(r"^POST /v1/completions 200 \d+ chars ", log, re.M)


@pytest.mark.gpu
def test_the_cuda_path_gives_generates_text(trained_run, tmp_path):
    cuda_model = charrnn.load(trained_run, device="cuda")
    env = cli_env(tmp_path)
    proc = subprocess.Popen(charrnn_cmd("serve", trained_run, "--port", "0", "--device", "cuda"), cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = wait_for_line(proc, lambda line: line.startswith("listening on "))[-1].split()[-1]
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: client.completions.create(
                model=trained_run.name, prompt="the ", max_tokens=100, seed=i).choices[0].text, range(8)))  # fmt: skip
        assert got == [cuda_model.generate("the ", length=100, temperature=1.0, seed=i) for i in range(8)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
