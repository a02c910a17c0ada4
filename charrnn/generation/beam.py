"""Beam search (`charrnn sample --beam N`).

beam_search steps its N beams as one batch of the sampler's Stepper. Each step ranks every (beam, next id) pair by
summed log-probability, keeps the best N, and moves each kept beam's state to its row with `Stepper.reorder`. With
one result asked for, ids are yielded as soon as every beam agrees on them, so the text still streams. It runs in
fp32 only, so its scores are the model's own log-probabilities.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from charrnn.config.sample import MAX_HELD_CHARS, MAX_NUM_SAMPLES, SAMPLE_PRECISIONS
from charrnn.errors import UsageError
from charrnn.generation.sample import check_prime, run_prime
from charrnn.generation.stepper import Stepper, check_precision
from charrnn.model import CharRNN

MAX_BEAM_CANDIDATES = 1 << 24  # beam * V scores ranked per step: each (N, V) float32 temporary is 64 MiB at most


@dataclass
class BeamConfig:
    """`charrnn sample --beam N`: the N most likely continuations kept at each step, the best K returned."""

    beam_size: int = 1  # --beam: continuations kept at each step
    length: int = 2000  # --length: new characters
    num_results: int = 1  # --num-samples: the K best continuations returned, K <= beam_size
    precision: str = "fp32"  # fp32 only, which is also what "auto" picks (see validate)

    def validate(self) -> None:
        N, K = self.beam_size, self.num_results
        if N < 1:
            raise UsageError(f"--beam must be at least 1, not {N}.")
        if N > MAX_NUM_SAMPLES:
            raise UsageError(f"--beam must be at most {MAX_NUM_SAMPLES} (the beams step as one batch), not {N}.")
        if self.length < 0:
            raise UsageError(f"--length must be at least 0, not {self.length}.")
        if K < 1:
            raise UsageError(f"--num-samples must be at least 1, not {K}.")
        if K > N:
            raise UsageError(
                f"--num-samples {K} asks for more results than --beam {N} keeps; "
                f"use --num-samples at most {N} or a larger --beam."
            )
        if N * self.length > MAX_HELD_CHARS:
            raise UsageError(
                f"--beam {N} x --length {self.length} would hold {N * self.length:,} characters of beam history "
                f"in memory (the limit is {MAX_HELD_CHARS:,}); use a smaller --beam or --length."
            )
        check_precision(self.precision, SAMPLE_PRECISIONS)
        if self.precision not in ("fp32", "auto"):  # auto picks among what can run: for beams, fp32
            raise UsageError(
                f"--beam runs in fp32 only: its scores are the model's log-probabilities, which {self.precision} "
                "products would shift; drop --precision."
            )


def refuse_sampling_controls(temperature: float | None, top_k: int | None, top_p: float | None) -> None:
    """With --beam, refuse whichever sampling flags were given (None: not given), in one sentence."""
    flags = (("--temperature", temperature), ("--top-k", top_k), ("--top-p", top_p))
    given = [flag for flag, value in flags if value is not None]
    if given:
        raise UsageError(
            f"--beam cannot be combined with {' or '.join(given)}: beam search is deterministic and maximises "
            "likelihood, so sampling controls do not apply."
        )


@dataclass(frozen=True)
class BeamPiece:
    """Generated ids every live beam agrees on, following those already yielded: whichever beam wins starts with
    them. Yielded only when one result is asked for."""

    ids: list[int]


@dataclass(frozen=True)
class BeamResult:
    """One finished continuation; results come best first (rank 0)."""

    rank: int
    ids: list[int]  # the generated ids, prime excluded: `length` of them
    log_prob: float  # sum of the model's log-probabilities (nats) of these ids after the prime
    score: float  # log_prob / length: mean log-prob per generated character, the ranking key


BeamEvent = BeamPiece | BeamResult


def beam_search(model: CharRNN, prime_ids: list[int], cfg: BeamConfig, device: torch.device) -> Iterator[BeamEvent]:
    """The cfg.num_results most likely continuations of the prime under the model, cfg.length ids each, by beam
    search with cfg.beam_size beams stepped as one batch.

    num_results == 1: BeamPiece events as soon as every live beam agrees on the next ids, then a last BeamPiece
    with the rest of the winner (the pieces concatenate to its ids), then its BeamResult. num_results > 1: only
    the BeamResults, best first, when the search ends. Fewer results come when fewer distinct continuations
    exist (V ** length < num_results); length 0 yields nothing.

    Bad options raise UsageError here, at the call, not at the first next()."""
    cfg.validate()
    V = model.config.vocab_size
    check_prime(prime_ids, V)
    if cfg.beam_size * V > MAX_BEAM_CANDIDATES:
        raise UsageError(
            f"--beam {cfg.beam_size} over {V:,} characters would rank {cfg.beam_size * V:,} candidates a step "
            f"(the limit is {MAX_BEAM_CANDIDATES:,}); use --beam at most {MAX_BEAM_CANDIDATES // V}."
        )
    return _beam_search(model, list(prime_ids), cfg, torch.device(device))


def _beam_search(model: CharRNN, prime_ids: list[int], cfg: BeamConfig, device: torch.device) -> Iterator[BeamEvent]:
    if cfg.length == 0:
        return
    beams = _Beams(model, cfg.beam_size, cfg.length, device)  # buffers made in the caller's mode, as in generate
    stream = cfg.num_results == 1
    emitted = 0  # ids of the winner already yielded
    # Inference mode is entered per step and never held across a yield: it would leak into the caller's code.
    with torch.inference_mode():
        beams.start(model, prime_ids)
    for t in range(cfg.length):
        with torch.inference_mode():
            beams.advance(t)
        if stream and beams.settled > emitted:
            yield BeamPiece(beams.ids(emitted, beams.settled))
            emitted = beams.settled
    if stream and emitted < cfg.length:
        yield BeamPiece(beams.ids(emitted, cfg.length))
    yield from beams.results(cfg.num_results)


class _Beams:
    """N beams stepped as one batch: their states in a Stepper, their scores on the device, and for every step
    the parent each beam extended and the id it appended (back-pointers, on the host).

    Rows [0, live) are the live beams, best first after each step. live grows from 1 (the prime) to
    min(N, V ** (t + 1)) after step t; the rows past it are padding that the Stepper steps and nothing reads.
    The first `settled` positions hold the same ids in every live beam, and never change again.

    Memory: the Stepper's state and buffers for N rows, 2 * N * length int32 back-pointers, N * V float32 scores.
    Work per step beyond the Stepper's: a top-N over N * V scores and copying 2N ids to the host. A beam's ids
    are read back by following the pointers; agreement is checked by walking back to `settled`, each step while
    the unsettled stretch is short and then only when it doubles, so beams that never agree cost linear, not
    quadratic, time.
    """

    def __init__(self, model: CharRNN, beam_size: int, length: int, device: torch.device) -> None:
        N = self.beam_size = beam_size
        self.length, self.vocab_size = length, model.config.vocab_size
        self.stepper = Stepper(model, N, device)
        i64: dict[str, Any] = dict(device=device, dtype=torch.int64)
        self.scores = torch.zeros(N, device=device, dtype=torch.float32)  # (N,) summed log-probs of each beam
        self.parents = torch.zeros(N, **i64)  # (N,) the old beam each new beam extends; padding rows copy row 0
        self.tokens = torch.zeros(N, **i64)  # (N,) the id each new beam appended
        self.parent_at = np.zeros((length, N), dtype=np.int32)  # (length, N) back-pointers, step by step
        self.token_at = np.zeros((length, N), dtype=np.int32)  # (length, N) the id appended at each step
        self.live, self.settled, self.stepped = 1, 0, -1  # stepped: the latest position chosen
        self.logits = torch.zeros(1, self.vocab_size, device=device)  # (live, V) next-id logits of the live beams

    def start(self, model: CharRNN, prime_ids: list[int]) -> None:
        """Every row starts from the prime's state, but only row 0 is live: the first step then ranks one row's
        ids, rather than picking N copies of the same continuation."""
        prime_logits, prime_state = run_prime(model, prime_ids, self.stepper.device)
        self.stepper.set_state(tuple(s.expand(-1, self.beam_size, -1) for s in prime_state))
        self.logits = prime_logits  # (1, V)

    def advance(self, t: int) -> None:
        """Choose the ids at position t: rank every (live beam, next id) pair by its summed log-prob, keep the
        best N as the new beams, and step their states unless t is the last position."""
        N, V, live = self.beam_size, self.vocab_size, self.live
        logp = torch.log_softmax(self.logits[:live], dim=1)  # (live, V)
        candidates = (logp + self.scores[:live, None]).reshape(-1)  # (live * V,): beam b's id v at b * V + v
        kept = min(N, live * V)
        best, flat = torch.topk(candidates, kept)  # (kept,) each, sorted: row 0 is the best beam
        self.parents[:kept] = flat.div(V, rounding_mode="floor")
        self.tokens[:kept] = flat.remainder(V)
        self.scores[:kept] = best
        self.stepper.reorder(self.parents)
        self.live = kept
        if t + 1 < self.length:
            self.logits = self.stepper.step(self.tokens)  # (N, V); rows past `live` are padding
        # One device-to-host copy a step (on CUDA, one sync): the back-pointers and ids travel together.
        self.parent_at[t, :kept], self.token_at[t, :kept] = torch.stack((self.parents[:kept], self.tokens[:kept])).cpu()
        self.stepped = t
        self._settle(t)

    def _columns(self, rows: np.ndarray, t: int, start: int) -> np.ndarray:
        """(t + 1 - start, len(rows)) ids at positions [start, t] of the beams `rows`, as numbered after step t."""
        cols = np.empty((t + 1 - start, len(rows)), dtype=np.int32)
        for c in range(t, start - 1, -1):
            cols[c - start] = self.token_at[c, rows]
            rows = self.parent_at[c, rows]
        return cols

    def _settle(self, t: int) -> None:
        """Move `settled` over the positions up to t on which every live beam agrees. Agreement is final: every
        later beam descends from one of these, so it inherits their common prefix."""
        gap = t + 1 - self.settled
        if gap > 32 and gap & (gap - 1):  # a long stretch that still disagrees: look again when it doubles
            return
        cols = self._columns(np.arange(self.live), t, self.settled)  # (gap, live)
        agree = (cols == cols[:, :1]).all(axis=1)  # (gap,)
        self.settled += int(np.cumprod(agree).sum())  # the leading agreed positions

    def ids(self, start: int, stop: int) -> list[int]:
        """The best beam's ids at positions [start, stop); stop is at most the positions stepped so far. Rows are
        numbered after the latest step, so the walk starts there."""
        return self._columns(np.zeros(1, dtype=np.int64), self.stepped, start)[: stop - start, 0].tolist()

    def results(self, k: int) -> list[BeamResult]:
        """The k best beams, best first (fewer if fewer are live)."""
        n = min(k, self.live)
        ids = self._columns(np.arange(n), self.length - 1, 0).T.tolist()  # (n, length)
        log_probs = self.scores[:n].tolist()
        # Every candidate has `length` ids, so dividing by it leaves the ranking as it was: normalising only
        # matters when comparing continuations of different lengths. The mean is kept as the reported score.
        return [BeamResult(rank=i, ids=ids[i], log_prob=lp, score=lp / self.length) for i, lp in enumerate(log_probs)]
