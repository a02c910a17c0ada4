"""A request as the scheduler sees it: a Job of n Streams, each one choice of a completion. No torch here.

The scheduler thread appends characters to a Stream and sets its finish; the HTTP side drains them. A deque
carries them across threads (append and popleft are atomic). The handler takes what is there at most every
FLUSH_INTERVAL_S (Job.news_after), so a fast stream's characters go out a few to an event rather than one event,
one JSON and one client parse a character; between takes it is not armed, and the scheduler wakes only armed
jobs, with one call to the event loop a step for all of them (wake_all). A stream's end is not held back: it
wakes a handler that is waiting out the interval.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

MAX_BUFFERED_CHARS = 1 << 16  # characters a stream holds for a client that stopped reading; past it, dropped
FLUSH_INTERVAL_S = 0.05  # a stream's events are at least this far apart (the first goes out at once): 20 a second
# reads as live text, and at 64 streams on 2 cores it gave 0.85-0.89x generate() where 20 ms gave 0.81-0.82x
ABORT = "abort"  # finish_reason of a stream the server ended (shutdown, or a client too slow), as vLLM says


@dataclass(frozen=True)
class Settings:
    """One choice's sampling settings: what Model.generate takes."""

    temperature: float
    top_k: int | None
    top_p: float | None
    length: int  # max_tokens: new characters at most
    seed: int
    stop: tuple[str, ...] = ()

    @property
    def sampler_key(self) -> tuple[float, int | None, float | None]:
        """Streams with equal keys share one sampler call a step."""
        return (self.temperature, self.top_k, self.top_p)


class StopMatcher:
    """Cuts a stream at the first of its stop strings, which is not part of the text (OpenAI's rule). A tail
    that could still become a stop string is held back, so a streamed client never sees half of one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held = ""

    def feed(self, ch: str) -> tuple[str, bool]:
        """(text now safe to send, whether a stop string was met)."""
        if not self.stops:
            return ch, False
        held = self.held + ch
        cut = min((i for i in (held.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            return held[:cut], True
        keep = 0  # the longest tail of `held` that begins some stop string
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(held)), keep, -1):
                if held.endswith(stop[:n]):
                    keep = n
                    break
        self.held = held[len(held) - keep :]
        return held[: len(held) - keep], False

    def flush(self) -> str:
        """What is held when the stream ends without meeting a stop string: it is text after all."""
        held, self.held = self.held, ""
        return held


class Stream:
    """One choice: its settings, the characters ready for the client, and how it ended."""

    def __init__(self, job: Job, index: int, settings: Settings) -> None:
        self.job, self.index, self.settings = job, index, settings
        self.chars: deque[str] = deque()  # ready for the client; the scheduler appends, the HTTP side pops
        self.sent = 0  # characters of text given to the client (completion_tokens)
        self.generated = 0  # characters sampled so far (the stop matcher may hold some back)
        self.finish_reason: str | None = None  # set last, after the final characters
        self.cancelled = False  # the client went away: the scheduler frees the slot at the next step
        self.closed = False  # take() has handed out the finish
        self.matcher = StopMatcher(settings.stop)
        self.length = settings.length

    def take(self) -> tuple[str, str | None]:
        """(the text ready now, the finish reason if the stream is over and all of its text is in that)."""
        finish = self.finish_reason  # read first: when set, every character is already in the deque
        parts = []
        while self.chars:
            parts.append(self.chars.popleft())
        text = "".join(parts)
        self.sent += len(text)
        if finish is not None and not self.closed:
            self.closed = True
            self.job.closed += 1
        return text, finish

    @property
    def has_news(self) -> bool:
        return bool(self.chars) or (self.finish_reason is not None and not self.closed)

    # ---- the scheduler's side

    def put(self, ch: str) -> bool:
        """One sampled character; True when the stream is over (its length reached or a stop string met)."""
        self.generated += 1
        text, stopped = self.matcher.feed(ch) if self.matcher.stops else (ch, False)  # runs for every stream a step
        if text:
            self.chars.append(text)
        if stopped:
            self.finish("stop")
        elif self.generated >= self.length:
            self.finish("length")
        return self.finish_reason is not None

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
            rest = self.matcher.flush() if reason != "stop" else ""
            if rest:
                self.chars.append(rest)
            self.finish_reason = reason
            self.job.finished += 1  # after finish_reason: a handler that sees the count sees the reason


class Job:
    """A completion request: n streams, the event loop to wake when they have news, and its timings."""

    def __init__(self, model: str, prompt: str, settings: list[Settings], loop: asyncio.AbstractEventLoop) -> None:
        self.model, self.prompt = model, prompt
        self.streams = [Stream(self, i, s) for i, s in enumerate(settings)]
        self.loop = loop
        self.news = asyncio.Event()  # set on the loop's thread only
        self.armed = False  # the handler waits on news: the scheduler must wake it
        self.pacing = False  # the handler waits out the interval: a stream's end must wake it
        self.finished = 0  # streams with a finish_reason (the scheduler counts them)
        self.closed = 0  # streams whose finish has been taken (the handler counts them)
        self.next_take = 0.0  # loop time before which the handler does not take again
        self.received = time.perf_counter()
        self.first_char: float | None = None  # when the first character was sampled

    @property
    def done(self) -> bool:
        return all(s.finish_reason is not None for s in self.streams)

    @property
    def ending(self) -> bool:
        """A stream has ended and its end is not yet taken: the news that is not held back to the interval."""
        return self.finished > self.closed

    async def news_after(self, interval: float = FLUSH_INTERVAL_S) -> None:
        """Returns when some stream has news, and not sooner than `interval` after the last return unless a
        stream has ended: the last characters go out at once, not up to an interval late (at 1000 characters
        a request, 50 ms late at the end was ~5 % of a stream's time, as its client sees it)."""
        loop = asyncio.get_running_loop()
        wait = self.next_take - loop.time()
        if wait > 0:
            self.pacing = True  # before looking: an end after this wakes us (wake_all)
            if not self.ending:
                timer = loop.call_later(wait, self.news.set)
                try:
                    await self.news.wait()
                finally:
                    timer.cancel()
            self.pacing = False
            self.news.clear()
        self.armed = True  # before looking: a character put after this is seen, or wakes us
        if not any(s.has_news for s in self.streams):
            await self.news.wait()
        self.armed = False
        self.news.clear()
        self.next_take = loop.time() + interval

    def cancel(self) -> None:
        """The client went away (or the response is over): nothing more is wanted from these streams."""
        for s in self.streams:
            s.cancelled = True


def wake(jobs: list[Job]) -> None:
    """On the event loop: tell each job's handler that its streams have news."""
    for job in jobs:
        job.news.set()


def wake_all(jobs: set[Job]) -> None:
    """From the scheduler thread: one call_soon_threadsafe per event loop for those of `jobs` whose handler
    waits for news, or waits out the interval while a stream has ended (the others look for themselves when
    they next take)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
    for job in jobs:
        if job.armed or (job.pacing and job.ending):
            job.armed = job.pacing = False
            by_loop.setdefault(job.loop, []).append(job)
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(wake, group)
        except RuntimeError:  # the loop is closed: the server is gone, nobody is waiting
            pass
