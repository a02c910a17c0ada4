"""The Scheduler: one model's thread. It owns the model: it primes new requests, steps the Batch, hands each
stream its character, and scores texts between steps. The HTTP side only submits and reads; it never runs torch.

    loop:  take new jobs ─▶ drop cancelled / stalled streams ─▶ prime queued ones into free places
           ─▶ one Batch.step ─▶ characters into their Streams ─▶ wake the event loop once

Capacity is counted when a request arrives (submit): the streams in the batch (max_streams) plus those waiting
(max_queue); a request past both is refused at once (429), so nothing waits unbounded.

Every model's scheduler runs on one thread, the main one (run_all: each model's iteration in turn). torch runs on
no other thread for as long as the server lives: each thread that runs torch gets an OpenMP pool of its own, and
once there are more OpenMP threads than cores, libgomp stops spin-waiting at its barriers and every thread's
steps slow down, the main one's included (bench/bench_threads.py, 2x512 LSTM, 2 cores: generate() on the main
thread beside an idle thread that had once run torch ran at 0.50-0.56x its speed at 1 stream and ~0.70x at 64,
and on a thread of its own at 0.53-0.56x and 0.70-0.73x).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import torch

from charrnn.api import Model
from charrnn.generation.sample import SampleConfig
from charrnn.serve.batch import Batch, Primed, Priming
from charrnn.serve.metrics import Metrics
from charrnn.serve.stream import ABORT, MAX_BUFFERED_CHARS, Job, Stream, wake_all

PRIME_BUDGET = 512  # prompt characters primed between two steps at most, so a long prompt delays the batch's
# next character by one 512-character run through the fused model (~50 ms at 2x512 on 2 cores), not its whole
# length; prompts of one length are primed together, as one batch


class Stopping(RuntimeError):
    """What a Task's future holds when the server stopped before the task ran."""


class Task:
    """Work on the model between two steps (a score): fn(model), its result or exception in `future`."""

    def __init__(self, fn: Callable[[Model], Any]) -> None:
        self.fn = fn
        self.future: Future = Future()


class Scheduler:
    def __init__(
        self,
        name: str,
        model: Model,
        max_streams: int,
        max_queue: int,
        metrics: Metrics,
        on_error: Callable[[str], None] = lambda message: None,
        cond: threading.Condition | None = None,
    ) -> None:
        """`cond`: the condition its thread waits on; schedulers run together by run_all share one."""
        self.name, self.model = name, model
        self.max_streams, self.max_queue = max_streams, max_queue
        self.metrics, self.on_error = metrics, on_error
        self.batch = Batch(model.net, model.device, model.precision)
        self.chars = model.vocab
        self.retiring: list[tuple[Batch, list[str]]] = []  # batches of replaced models, stepped until empty
        self.cond = cond or threading.Condition()
        self.inbox: deque[Job | Task] = deque()
        self.reserved = 0  # streams queued or in the batch, under cond
        self.stopping = False
        self.queued: deque[Stream] = deque()  # the scheduler thread's own
        self.primes: dict[Job, tuple[torch.Tensor, Any]] = {}  # a job's prime, run once for its n streams
        self.priming: list[Priming] = []  # prompts being primed, oldest first

    # ---- the HTTP side

    def submit(self, job: Job) -> bool:
        """Queue `job`'s streams; False (refuse it: 429) when the batch and the queue are full."""
        n = len(job.streams)
        with self.cond:
            if self.stopping or self.reserved + n > self.max_streams + self.max_queue:
                return False
            self.reserved += n
            self.inbox.append(job)
            self.cond.notify()
        return True

    def call(self, fn: Callable[[Model], Any]) -> Future:
        """fn(model)'s result, computed on the scheduler's thread between two steps (torch stays on it)."""
        task = Task(fn)
        with self.cond:
            if self.stopping:
                task.future.set_exception(Stopping(f"{self.name} is stopping"))
                return task.future
            self.inbox.append(task)
            self.cond.notify()
        return task.future

    def swap(self, model: Model) -> Future:
        """Serve `model` from the next step on (a reloaded checkpoint): streams in flight finish on the weights
        they started with, in a batch of their own; queued ones and new requests use `model`. The future is
        done once the scheduler has switched."""
        return self.call(lambda old: self._swap(model))

    def stop(self) -> None:
        """End every stream with finish_reason "abort" (their clients get a final event) at run_all's next pass,
        and take no more work; returns at once (safe in a signal handler)."""
        with self.cond:
            self.stopping = True
            self.cond.notify()

    # ---- the scheduler's thread (run_all's)

    @property
    def has_work(self) -> bool:
        return bool(self.inbox or self.active or self.queued or self.stopping)

    def _take(self) -> list[Job | Task] | None:
        """Under cond: the inbox's new work, or None once stopping (what is left then is ended, not run)."""
        if self.stopping:
            return None
        work = list(self.inbox)
        self.inbox.clear()
        return work

    def _run_once(self, work: list[Job | Task]) -> None:
        try:
            self._iteration(work)
        except Exception as e:  # noqa: BLE001 - a bug must not leave clients hanging: end what is in flight
            self.on_error(f"scheduler of {self.name}: {type(e).__name__}: {e}")
            self._end_all_safely()

    def _end_all_safely(self) -> None:
        """_end_all, whose own failure is logged: the other models on this thread keep serving."""
        try:
            self._end_all()
        except Exception as e:  # noqa: BLE001 - one model's bug must not stop the thread every model steps on
            self.on_error(f"scheduler of {self.name}: ending its streams: {type(e).__name__}: {e}")

    def _iteration(self, work: list[Job | Task]) -> None:
        for item in work:
            if isinstance(item, Task):
                self._call(item)
            else:
                self.queued.extend(item.streams)
        touched: set[Job] = set()
        self._drop_gone(touched)
        joiners = self._admit(touched)
        stepped = 0
        if self.batch.active or joiners:
            results = self.batch.step(joiners)
            self._deliver(results, self.chars, touched)
            stepped = len(results)
        for batch, chars in self.retiring:  # a replaced model's streams, each still on its own weights
            if batch.active:
                old = batch.step([])
                self._deliver(old, chars, touched)
                stepped += len(old)
        self.retiring = [(b, c) for b, c in self.retiring if b.active]
        self._publish(stepped, stepped, touched)

    def _deliver(self, results: list[tuple[Any, int]], chars: list[str], touched: set[Job]) -> None:
        """Each stream's new character into its Stream; a stream that is done leaves its batch."""
        now = time.perf_counter()
        for stream, i in results:
            job = stream.job
            touched.add(job)
            if job.first_char is None:
                job.first_char = now
                self.metrics.first_char(self.name, now - job.received)
            if stream.cancelled:
                continue  # left at the top of the next iteration
            if stream.put(chars[i]):
                self._leave(stream)

    def _swap(self, model: Model) -> None:
        if self.batch.active:
            self.retiring.append((self.batch, self.chars))
        self.model, self.chars = model, model.vocab
        self.batch = Batch(model.net, model.device, model.precision)
        self.primes.clear()  # queued streams have not started: they are primed again, by the new model
        self.priming.clear()

    @property
    def active(self) -> int:
        """Streams with a place in a batch (the replaced models' included)."""
        return self.batch.active + sum(b.active for b, _ in self.retiring)

    def _in_flight(self) -> list[Any]:
        """Every stream with a place in a batch, the current model's and the replaced ones'."""
        batches = [self.batch, *(b for b, _ in self.retiring)]
        return [s for b in batches for s in b.slots if s is not None]

    def _drop_gone(self, touched: set[Job]) -> None:
        """Free the places of streams whose clients went away or stopped reading; forget cancelled queued ones."""
        for stream in [s for s in self._in_flight() if s.cancelled or len(s.chars) > MAX_BUFFERED_CHARS]:
            stream.finish(ABORT)
            touched.add(stream.job)
            self._leave(stream)
        gone = [s for s in self.queued if s.cancelled]
        for stream in gone:
            self.queued.remove(stream)
            self.primes.pop(stream.job, None)  # a job is cancelled whole: none of its streams needs it now
            stream.finish(ABORT)
            self._release(1)

    def _admit(self, touched: set[Job]) -> list[Primed]:
        """Queued streams whose prompts are primed into free places, in order; prompts advanced first."""
        joiners: list[Primed] = []
        if not self.queued:
            return joiners  # the usual step: nothing waits
        self._prime()
        if self.active >= self.max_streams:
            return joiners
        waiting: deque[Stream] = deque()
        for stream in self.queued:
            job = stream.job
            if job not in self.primes or self.active + len(joiners) >= self.max_streams:
                waiting.append(stream)
                continue
            s = stream.settings
            cfg = SampleConfig(s.temperature, s.top_k, s.top_p, s.length, 1, s.seed)
            if s.length == 0:  # nothing to sample: done before it starts
                stream.finish("length")
                touched.add(job)
                self._release(1)
            else:
                joiners.append(Batch.joiner(stream, self.primes[job], cfg))
            if stream is job.streams[-1]:
                del self.primes[job]  # every stream of the job has it now
        self.queued = waiting
        return joiners

    def _prime(self) -> None:
        """New prompts into Primings (those of one length together), then PRIME_BUDGET characters of priming,
        oldest first; a finished Priming's prompts are ready to join."""
        started = self.primes.keys() | {job for p in self.priming for job in p.keys}
        fresh: dict[int, list[tuple[Job, list[int]]]] = {}
        for stream in self.queued:
            job = stream.job
            if job not in started:
                started.add(job)
                ids = self.model.prime_ids(job.prompt)
                fresh.setdefault(len(ids), []).append((job, ids))
        for group in fresh.values():
            self.priming.append(self.batch.priming([job for job, _ in group], [ids for _, ids in group]))
        budget = PRIME_BUDGET
        while self.priming and budget > 0:
            priming = self.priming[0]
            budget -= priming.advance(self.model.net, budget)
            if priming.remaining:
                break
            self.priming.pop(0)
            for row, job in enumerate(priming.keys):
                if not job.streams[0].cancelled:
                    self.primes[job] = priming.result(row)

    def _leave(self, stream: Stream) -> None:
        batch = next(b for b in [self.batch, *(b for b, _ in self.retiring)] if stream in b.slots)
        batch.leave(stream)
        self._release(1)
        job = stream.job
        if job.done:
            self.metrics.completed(self.name, time.perf_counter() - job.received)

    def _release(self, n: int) -> None:
        with self.cond:
            self.reserved -= n

    def _publish(self, batch: int, chars: int, touched: set[Job]) -> None:
        if batch:
            self.metrics.step(self.name, batch, chars, self.active, len(self.queued))
        else:
            self.metrics.streams(self.name, self.active, len(self.queued))
        if touched:
            wake_all(touched)

    def _call(self, task: Task) -> None:
        if not task.future.set_running_or_notify_cancel():
            return
        try:
            task.future.set_result(task.fn(self.model))
        except Exception as e:  # noqa: BLE001 - handed to the request that asked, which answers for it
            task.future.set_exception(e)

    def _end_all(self) -> None:
        """Finish every stream in the batch and the queue with "abort" and tell their clients."""
        touched: set[Job] = set()
        for stream in self._in_flight():
            stream.finish(ABORT)
            touched.add(stream.job)
            self._leave(stream)
        with self.cond:
            pending = [item for item in self.inbox if isinstance(item, Job)]
            tasks = [item for item in self.inbox if isinstance(item, Task)]
            self.inbox.clear()
            if not self.stopping:  # ended after a failed step: scores still run, at the next iteration
                self.inbox.extend(tasks)
                tasks = []
        for task in tasks:  # a score asked for as the server stopped: its request answers 503, it does not hang
            if task.future.set_running_or_notify_cancel():
                task.future.set_exception(Stopping(f"{self.name} is stopping"))
        for stream in [*self.queued, *(s for job in pending for s in job.streams)]:
            stream.finish(ABORT)
            touched.add(stream.job)
            self._release(1)
        self.queued.clear()
        self.primes.clear()
        self.priming.clear()
        self._publish(0, 0, touched)


def run_all(schedulers: Sequence[Scheduler]) -> None:
    """Every scheduler's loop on the calling thread, one iteration of each model in turn, until each is stopped
    (its streams then end with "abort"). They share one condition, so new work for any of them wakes the
    thread. One thread for every model, not one each: see the module's docstring."""
    cond = schedulers[0].cond
    if any(s.cond is not cond for s in schedulers):
        raise ValueError("schedulers run together must share one threading.Condition (cond=)")
    torch.set_grad_enabled(False)
    live = list(schedulers)
    while live:
        with cond:
            while not any(s.has_work for s in live):
                cond.wait(0.5)  # a timeout, so a signal's handler runs soon on the main thread
            works = [s._take() for s in live]
        for scheduler, work in zip(live, works, strict=True):
            if work is None:
                scheduler._end_all_safely()
            elif work or scheduler.active or scheduler.queued:
                scheduler._run_once(work)
        live = [s for s, work in zip(live, works, strict=True) if work is not None]
