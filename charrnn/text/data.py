"""Train/validation split and the batch iterator for truncated backprop through time.

The training text is cut into B contiguous streams (torch-rnn style). Batch j of an epoch holds characters
[j*T, j*T + T] of every stream, so consecutive batches continue each stream and the hidden state can be
carried across them. A position is two integers (epoch, batch index): that is all resume needs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from charrnn.errors import CorpusError


def split(ids: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """The last `val_frac` of the characters, contiguous, is validation (nanoGPT's shakespeare_char split)."""
    cut = int(len(ids) * (1.0 - val_frac))
    return ids[:cut], ids[cut:]


def min_train_chars(batch_size: int, seq_len: int) -> int:
    # Each stream needs seq_len inputs plus one target past them.
    return batch_size * (seq_len + 1) + 1


def min_corpus_chars(batch_size: int, seq_len: int, val_frac: float) -> int:
    """Smallest corpus that yields one training batch and a validation split of at least two characters.

    Solved in closed form, then corrected for float rounding by a few steps either way: counting up one at a
    time from the lower bound took minutes (or forever) for a --val-frac near 1 or a huge --seq-len."""
    need_train = min_train_chars(batch_size, seq_len)

    def enough(n: int) -> bool:
        cut = int(n * (1.0 - val_frac))
        return cut >= need_train and n - cut >= 2

    # Exactly, the split keeps floor(n (1 - f)) characters for training and ceil(n f) for validation, and both
    # grow with n: the answer is the larger of the two lower bounds, give or take float rounding.
    n = max(need_train + 2, math.floor(1 / val_frac) + 1, math.ceil(need_train / (1.0 - val_frac))) - 4
    n = max(n, 1)
    for _ in range(64):
        if enough(n):
            return n
        n += 1
    return n


class StreamBatcher:
    """Yields (x, y) int64 batches of shape (B, T) with y = x shifted by one, streams continuing across batches.

    Under data parallelism each rank takes its own B streams out of world_size * B, so ranks see disjoint text.
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
    ):
        total_streams = batch_size * world_size
        stream_len = (len(ids) - 1) // total_streams
        # Batch j reads columns j*T .. j*T+T of a stream row, so the last batch must end inside the row.
        self.batches_per_epoch = (stream_len - 1) // seq_len if stream_len > 0 else 0
        if self.batches_per_epoch < 1:
            raise CorpusError(
                f"the training text has {len(ids):,} characters, too few for one batch of --batch-size "
                f"{batch_size} x --seq-len {seq_len}{' per rank' if world_size > 1 else ''}; use a longer corpus "
                f"or a smaller --batch-size/--seq-len (needs at least {min_train_chars(total_streams, seq_len):,})."
            )
        self.batch_size, self.seq_len = batch_size, seq_len
        # A (B, stream_len) view of the memory map: no copy, rows are this rank's streams.
        rows = ids[: total_streams * stream_len].reshape(total_streams, stream_len)
        self._rows = rows[rank * batch_size : (rank + 1) * batch_size]
        # One preallocated buffer, refilled in place each step (no per-step allocation in the data path).
        self._buf = torch.empty((batch_size, seq_len + 1), dtype=torch.int64, pin_memory=pin_memory)
        self._np_buf = self._buf.numpy()

    @property
    def chars_per_epoch(self) -> int:
        return self.batches_per_epoch * self.batch_size * self.seq_len

    def fill(self, j: int) -> torch.Tensor:
        """Characters j*T .. j*T+T of every stream into the reused (B, T+1) int64 buffer."""
        start = j * self.seq_len
        np.copyto(self._np_buf, self._rows[:, start : start + self.seq_len + 1], casting="unsafe")
        return self._buf

    def batch(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch j of an epoch as views into the reused buffer: valid until the next call."""
        buf = self.fill(j)
        return buf[:, :-1], buf[:, 1:]  # (B, T), (B, T)


class DeviceFeeder:
    """Moves batches to the training device.

    On CUDA, batches are assembled in pinned host buffers and copied with non_blocking=True; two buffers
    alternate, and an event guards each so the host never overwrites a buffer whose copy is still in flight.
    On CPU the batcher's own buffer is used directly.
    """

    def __init__(
        self, ids: np.ndarray, batch_size: int, seq_len: int, device: torch.device, rank: int = 0, world_size: int = 1
    ):
        self.device = device
        cuda = device.type == "cuda"
        n = 2 if cuda else 1
        self._batchers = [StreamBatcher(ids, batch_size, seq_len, rank, world_size, pin_memory=cuda) for _ in range(n)]
        self._events: list[torch.cuda.Event | None] = [None] * n
        self._turn = 0
        self.batches_per_epoch = self._batchers[0].batches_per_epoch

    def batch(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type != "cuda":
            return self._batchers[0].batch(j)
        k = self._turn
        self._turn = 1 - k
        previous = self._events[k]
        if previous is not None:
            # The event was recorded after this buffer's copy two batches ago, so waiting on it keeps the host
            # at most two steps ahead of the GPU without a per-step device sync.
            previous.synchronize()
        # Copy the whole contiguous (B, T+1) pinned buffer and slice on the device: a strided view would be
        # staged through pageable memory and lose the asynchronous copy.
        on_device = self._batchers[k].fill(j).to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._events[k] = event
        return on_device[:, :-1], on_device[:, 1:]
