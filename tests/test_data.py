import numpy as np
import pytest
import torch

from charrnn.errors import CorpusError
from charrnn.text.data import StreamBatcher, min_corpus_chars, split


def test_split_is_last_fraction_contiguous():
    ids = np.arange(1000)
    train, val = split(ids, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert train[-1] == 899 and val[0] == 900  # contiguous, validation at the end
    # nanoGPT's shakespeare_char split of 1,115,394 characters keeps 111,540 for validation
    assert len(split(np.zeros(1_115_394, np.uint8), 0.1)[1]) == 111_540


def test_targets_are_inputs_shifted_by_one():
    ids = np.arange(10_000, dtype=np.uint16)
    b = StreamBatcher(ids, batch_size=4, seq_len=8)
    x, y = b.batch(3)
    assert x.shape == (4, 8) and y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y, x + 1)  # ids are positions, so the next char is position + 1


def test_streams_continue_across_batches():
    ids = np.arange(10_000, dtype=np.uint32)
    b = StreamBatcher(ids, batch_size=4, seq_len=8)
    x0, y0 = (t.clone() for t in b.batch(0))
    x1, _ = b.batch(1)
    assert torch.equal(x1[:, 0], y0[:, -1])  # each stream picks up exactly where it stopped
    stream_len = (len(ids) - 1) // 4
    assert torch.equal(x0[:, 0], torch.arange(4) * stream_len)  # streams start at contiguous offsets
    # every training position of an epoch appears once as an input
    seen = torch.cat([b.batch(j)[0].reshape(-1).clone() for j in range(b.batches_per_epoch)])
    assert len(torch.unique(seen)) == len(seen) == b.chars_per_epoch


def test_batch_reuses_one_buffer():
    b = StreamBatcher(np.arange(5000, dtype=np.uint8), batch_size=2, seq_len=10)
    x0, _ = b.batch(0)
    ptr = x0.data_ptr()
    x1, _ = b.batch(1)
    assert x1.data_ptr() == ptr  # no per-step allocation in the data path


def test_ranks_get_disjoint_streams():
    ids = np.arange(20_000, dtype=np.uint32)
    a = StreamBatcher(ids, batch_size=3, seq_len=5, rank=0, world_size=2).batch(0)[0].clone()
    b = StreamBatcher(ids, batch_size=3, seq_len=5, rank=1, world_size=2).batch(0)[0].clone()
    assert not set(a.flatten().tolist()) & set(b.flatten().tolist())


def test_too_short_says_minimum():
    with pytest.raises(CorpusError, match="at least"):
        StreamBatcher(np.arange(50, dtype=np.uint8), batch_size=4, seq_len=16)
    n = min_corpus_chars(4, 16, 0.1)
    train, _ = split(np.arange(n), 0.1)
    StreamBatcher(train, batch_size=4, seq_len=16)  # the stated minimum really is enough


def test_memory_mapped_corpus_gives_the_same_batches_as_in_memory(tmp_path):
    ids = np.random.default_rng(0).integers(0, 300, 50_000).astype(np.uint16)
    path = tmp_path / "ids.bin"
    ids.tofile(path)
    mapped = np.memmap(path, dtype=np.uint16, mode="r")
    a, b = StreamBatcher(ids, 8, 32), StreamBatcher(mapped, 8, 32)
    assert a.batches_per_epoch == b.batches_per_epoch
    for j in range(a.batches_per_epoch):
        (xa, ya), (xb, yb) = a.batch(j), b.batch(j)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
