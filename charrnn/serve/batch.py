"""The Batch: every active stream of one model stepped as one batch, streams joining and leaving between steps.

It is generate()'s loop (sample.py) with rows that come and go, built from the same pieces, so a seeded stream
gives Model.generate's text: the prime runs through the fused model as sample.run_prime runs it (Priming), the
Stepper steps the batch, and sample.Sampler turns logits into ids with the stream's own uniforms
(sample.stream_generator and sample.draw_uniforms, UNIFORM_BLOCK at a time; character t uses uniform t, the
first one from the prime's logits). As with --num-samples, a batch differs from a stream alone only by float
rounding in the logits.

    slots:   [ s3 | s0 | -- | s7 ]    cap = 4, a power of two >= the active streams: a Stepper per cap, kept
    hs, cs:  (cap, L*H)               row b is slot b's state; a free row is stepped too, and ignored
    ublock:  (cap, UNIFORM_BLOCK)     row b holds slot b's current block of uniforms, rotated so that every row's
                                      next uniform is in the same column, t % UNIFORM_BLOCK: a view, no gather

One step: resize (grow to fit, or shrink at a quarter full, moving rows), step the rows (if any sampled last
time), put the joiners' prime state and logits into free rows, refill the rows whose block ran out, sample every
row (one Sampler call per distinct temperature / top-k / top-p), and hand back each slot's id. The per-stream
work in Python is one list comprehension a step: at 64 streams anything more shows in the rate. Runs on the
scheduler's thread only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from charrnn.generation.sample import (
    UNIFORM_BLOCK,
    SampleConfig,
    Sampler,
    check_prime,
    choose_precision,
    draw_uniforms,
    stream_generator,
)
from charrnn.generation.stepper import Stepper
from charrnn.model import CharRNN, State

MAX_SAMPLERS = 256  # (settings, size) samplers kept; past it the cache starts again (a Sampler is cheap to make)


class Primed(NamedTuple):
    """A stream ready to join: its prime's logits (1, V) and state ((L, 1, H) tensors), and its generator."""

    stream: Any
    logits: torch.Tensor
    state: State
    gen: torch.Generator
    key: tuple[float, int | None, float | None]  # (temperature, top_k, top_p)


class Priming:
    """Prompts of one length run through the fused model together (one forward of (k, t) instead of k), at most
    a given number of characters an iteration, so a long prompt delays the others' next character by about one
    PRIME_BUDGET's run (scheduler.py), not by its whole length. Alone (k == 1) it is run_prime's computation,
    chunk by chunk."""

    def __init__(self, keys: list[Any], prompts: list[list[int]], device: torch.device) -> None:
        self.keys = keys  # what each row primes (a Job); row i is keys[i]'s
        # Padded to a power of two with copies of the last prompt: oneDNN keeps memory for every batch shape it
        # has run, so a server seeing every k from 1 to 64 grew ~15 MB more than one seeing 1, 2, 4 ... 64.
        rows = prompts + [prompts[-1]] * (bucket(len(prompts)) - len(prompts))
        self.ids = torch.tensor(rows, dtype=torch.int64, device=device)  # (bucket(k), T)
        self.pos = 0
        self.state: State | None = None
        self.logits: torch.Tensor | None = None  # (k, V) once done

    @property
    def remaining(self) -> int:
        return self.ids.shape[1] - self.pos

    def advance(self, model: CharRNN, chars: int) -> int:
        """Run up to `chars` more characters of every row; how many it ran."""
        take = min(chars, self.remaining)
        with torch.inference_mode():
            logits, self.state = model(self.ids[:, self.pos : self.pos + take], self.state)  # (k, take, V)
        self.pos += take
        if not self.remaining:
            self.logits = logits[:, -1].float()  # (k, V)
        return take

    def result(self, row: int) -> tuple[torch.Tensor, State]:
        """Row `row`'s prime as Batch.prime gives it: logits (1, V) and the state ((L, 1, H) tensors)."""
        assert self.logits is not None and self.state is not None
        return self.logits[row : row + 1], tuple(s[:, row : row + 1].float() for s in self.state)


def bucket(n: int) -> int:
    """The batch size that holds n streams: the next power of two."""
    return 1 << max(0, n - 1).bit_length()


class Batch:
    """The rows of one model's step. Streams are opaque keys here; the scheduler maps ids to characters."""

    # Made by the first _resize, for its cap:
    stepper: Stepper
    tok: torch.Tensor  # (cap, 1) int64: the last sampled ids, fed to the next step
    tok_flat: torch.Tensor  # (cap,) view of tok
    ublock: torch.Tensor  # (cap, UNIFORM_BLOCK)

    def __init__(self, model: CharRNN, device: torch.device, precision: str) -> None:
        self.model, self.device, self.precision = model, torch.device(device), precision
        self.vocab_size = model.config.vocab_size
        self.steppers: dict[int, Stepper] = {}  # cap -> its Stepper, made on first use
        self.packed: dict = {}  # the steppers' prepacked weights, one copy for every cap (stepper._Product)
        self.samplers: dict[tuple, Sampler] = {}
        self.cap = 0
        self.free = 0  # slots holding no stream
        self.slots: list[Any | None] = []
        self.keys: list[tuple | None] = []  # each slot's sampler key
        self.gens: list[torch.Generator | None] = []
        self.t = 0  # steps taken: this step's uniforms are column t % UNIFORM_BLOCK of every row
        self.start: list[int] = []  # each slot's column of its first uniform; its block runs out there again
        self.due: dict[int, set[int]] = {}  # column -> slots whose block runs out at it
        self.host_u = torch.empty(UNIFORM_BLOCK)  # (UNIFORM_BLOCK,) one stream's fresh block, drawn on the CPU

    @property
    def active(self) -> int:
        return self.cap - self.free

    # ---- joining and leaving

    def priming(self, keys: list[Any], prompts: list[list[int]]) -> Priming:
        """Prompts of one length (ids), to prime together a few characters at a time (Priming.advance)."""
        for ids in prompts:
            check_prime(ids, self.vocab_size)
        return Priming(keys, prompts, self.device)

    @staticmethod
    def joiner(stream: Any, primed: tuple[torch.Tensor, State], cfg: SampleConfig) -> Primed:
        """`stream` ready to join from its request's prime, with the generator of its seed."""
        key = (cfg.temperature, cfg.top_k, cfg.top_p)
        return Primed(stream, primed[0], primed[1], stream_generator(cfg.seed), key)

    def leave(self, stream: Any) -> None:
        b = self.slots.index(stream)
        self.slots[b], self.keys[b], self.gens[b] = None, None, None
        self.due[self.start[b]].discard(b)
        self.free += 1

    # ---- one step

    def step(self, joiners: list[Primed]) -> list[tuple[Any, int]]:
        """Advance every active stream one character and start the joiners: (stream, id) for each."""
        stepping = self.active > 0  # every active row sampled last step: its id is fed now
        self._fit(self.active + len(joiners))
        col = self.t % UNIFORM_BLOCK
        with torch.inference_mode():
            if stepping:
                self.stepper.step(self.tok_flat)  # (cap,) -> logits (cap, V)
            for b in self.due.get(col, ()):
                self._refill(b, col)  # UNIFORM_BLOCK uniforms used since it last drew: the next block
            for primed in joiners:
                self._join(primed, col)
            self._sample(self.ublock[:, col : col + 1])  # (cap, 1): each row's uniform t
            if self.free:
                self.tok.clamp_(0, self.vocab_size - 1)  # a free row's logits are garbage, but its id is fed
            ids = self.tok_flat.tolist()
        self.t += 1
        return [(stream, i) for stream, i in zip(self.slots, ids, strict=True) if stream is not None]

    def _join(self, primed: Primed, col: int) -> None:
        b = self.slots.index(None)
        L, H = self.model.config.num_layers, self.model.config.hidden_size
        self.stepper.hs.view(self.cap, L, H)[b].copy_(primed.state[0][:, 0])
        if self.stepper.cs is not None:
            self.stepper.cs.view(self.cap, L, H)[b].copy_(primed.state[1][:, 0])
        self.stepper.logits[b].copy_(primed.logits[0])  # character 0 comes from the prime's logits
        self.slots[b], self.keys[b], self.gens[b], self.start[b] = primed.stream, primed.key, primed.gen, col
        self.due.setdefault(col, set()).add(b)
        self.free -= 1
        self._refill(b, col)

    def _refill(self, b: int, col: int) -> None:
        """Row b's next UNIFORM_BLOCK uniforms from its stream's generator, the first one in column `col`."""
        gen = self.gens[b]
        assert gen is not None
        draw_uniforms(gen, self.host_u)
        k = UNIFORM_BLOCK - col
        with torch.inference_mode():
            self.ublock[b, col:].copy_(self.host_u[:k])
            self.ublock[b, :col].copy_(self.host_u[k:])

    def _sample(self, u: torch.Tensor) -> None:
        """tok <- ids sampled from logits with u (cap, 1): one Sampler call for each distinct setting."""
        logits = self.stepper.logits  # (cap, V)
        groups: dict[tuple, list[int]] = {}
        for b, key in enumerate(self.keys):
            if key is not None:
                groups.setdefault(key, []).append(b)
        if len(groups) == 1:  # the common case: every row through one call, free rows too (they are ignored)
            (key,) = groups
            self._sampler(key, self.cap)(logits, u, self.tok)
            return
        for key, rows in groups.items():
            index = torch.tensor(rows, dtype=torch.int64, device=self.device)  # (n,)
            out = torch.empty(len(rows), 1, dtype=torch.int64, device=self.device)  # (n, 1)
            self._sampler(key, len(rows))(logits.index_select(0, index), u.index_select(0, index), out)
            self.tok.index_copy_(0, index, out)

    def _sampler(self, key: tuple, size: int) -> Sampler:
        sampler = self.samplers.get((key, size))
        if sampler is None:
            if len(self.samplers) >= MAX_SAMPLERS:
                self.samplers.clear()
            temperature, top_k, top_p = key
            cfg = SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p)
            with torch.inference_mode(False):
                sampler = self.samplers[(key, size)] = Sampler(cfg, size, self.vocab_size, self.device)
        return sampler

    # ---- sizing

    def _fit(self, needed: int) -> None:
        """A cap that holds `needed` streams: grow past it, shrink once a quarter full (or down to one stream, which
        then steps as generate() steps one), carrying the rows over."""
        if needed == 0 or (self.cap >= needed and not (self.cap > 1 and needed <= max(1, self.cap // 4))):
            return
        self._resize(bucket(needed))

    def _resize(self, cap: int) -> None:
        kept = [b for b, s in enumerate(self.slots) if s is not None]
        stepper = self._stepper(cap)
        with torch.inference_mode(False):  # plain tensors, so that in-place updates work in any mode
            tok = torch.zeros(cap, 1, dtype=torch.int64, device=self.device)  # (cap, 1) last sampled ids
            ublock = torch.zeros(cap, UNIFORM_BLOCK, device=self.device)  # (cap, UNIFORM_BLOCK)
        if kept:
            with torch.inference_mode():
                old = torch.tensor(kept, dtype=torch.int64, device=self.device)
                n = len(kept)
                stepper.hs[:n].copy_(self.stepper.hs.index_select(0, old))
                if stepper.cs is not None and self.stepper.cs is not None:  # an LSTM's cell states
                    stepper.cs[:n].copy_(self.stepper.cs.index_select(0, old))
                tok[:n].copy_(self.tok.index_select(0, old))
                ublock[:n].copy_(self.ublock.index_select(0, old))
        free = cap - len(kept)
        self.slots = [self.slots[b] for b in kept] + [None] * free
        self.keys = [self.keys[b] for b in kept] + [None] * free
        self.gens = [self.gens[b] for b in kept] + [None] * free
        self.start = [self.start[b] for b in kept] + [0] * free
        self.due = {}
        for b in range(len(kept)):
            self.due.setdefault(self.start[b], set()).add(b)
        self.stepper, self.cap, self.free = stepper, cap, free
        self.tok, self.tok_flat, self.ublock = tok, tok.view(cap), ublock

    def _stepper(self, cap: int) -> Stepper:
        stepper = self.steppers.get(cap)
        if stepper is None:
            with torch.inference_mode(False):
                if self.precision == "auto":  # timed at this batch size, as generate() does for its batch
                    stepper = choose_precision(self.model, cap, self.device, self.packed).stepper
                else:
                    stepper = Stepper(self.model, cap, self.device, precision=self.precision, packed=self.packed)
            self.steppers[cap] = stepper
        return stepper
