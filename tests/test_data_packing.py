"""Packing of the train stream and the GolfDataModule (val windows, calibration, errors)."""

from __future__ import annotations

import shutil
import time
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lit_golf.data.datamodule import GolfDataModule, ValWindows, grad_accum_steps_for
from lit_golf.data.documents import find_documents, truncate_to_documents
from lit_golf.data.packing import TrainStream, build_cu_seqlens, epoch_shard_order, segment_starts
from lit_golf.data.shards import (
    BOS_ID,
    ShardError,
    dataset_dir,
    find_shards,
    shard_name,
    sidecar_path,
    tokenizer_path,
    write_shard,
)
from lit_golf.data.tokenizer import TokenizerError

VOCAB = 300


def random_docs(seed: int, count: int, max_len: int) -> list[np.ndarray]:
    """Documents `[BOS, ...]` of 1..max_len tokens; other ids never equal BOS, so BOS marks starts."""
    rng = np.random.default_rng(seed)
    return [np.concatenate(([BOS_ID], rng.integers(2, VOCAB, size=int(n) - 1))) for n in rng.integers(1, max_len, count)]


def write_split(data_dir, split: str, docs: list[np.ndarray], shard_tokens: int, vocab: int = VOCAB) -> list:
    """Write the docs' stream cut into shards of `shard_tokens` (docs continue across shards)."""
    tokens = np.concatenate(docs)
    paths = []
    for index, start in enumerate(range(0, tokens.size, shard_tokens)):
        paths.append(dataset_dir(data_dir, vocab) / shard_name(split, index))
        write_shard(paths[-1], tokens[start : start + shard_tokens])
    return paths


@pytest.fixture
def synthetic(tmp_path, tiny_data):
    """data_dir with 4 train shards (docs up to 700 tokens), 1 val shard, and a tokenizer of vocab VOCAB's name."""
    train_docs = random_docs(0, 120, 700)
    val_docs = random_docs(1, 30, 200)
    train = write_split(tmp_path, "train", train_docs, shard_tokens=11_000)
    write_split(tmp_path, "val", val_docs, shard_tokens=1_000_000)
    return SimpleNamespace(data_dir=tmp_path, train=train, train_docs=train_docs, val_docs=val_docs)


def make_stream(files, rank=0, world_size=1, seed=7, accum=3, n=512, seq_len=256):
    return TrainStream(
        files, tokens_per_microbatch=n, grad_accum_steps=accum, train_seq_len=seq_len, rank=rank,
        world_size=world_size, cu_bucket=16, seed=seed, vocab_size=VOCAB, pin_memory=False,
    )


def stream_layout(files, seed, epochs):
    """The expected token stream over `epochs` and the stream positions of its seams (non-natural shard joins)."""
    shards, seams, position, previous = [], set(), 0, -1
    for epoch in range(epochs):
        for index in epoch_shard_order(len(files), seed, epoch):
            if index != previous + 1:
                seams.add(position)
            shards.append(np.fromfile(files[index], dtype="<u2", offset=1024))
            position += shards[-1].size
            previous = index
    return np.concatenate(shards), seams


def take(stream, steps):
    it = iter(stream)
    out = [next(it) for _ in range(steps)]
    it.close()
    return out


# -- cu_seqlens -------------------------------------------------------------------------------

def test_segment_starts_cut_long_documents_and_start_at_zero():
    assert segment_starts(np.array([0, 3, 13]), 20, 4).tolist() == [0, 3, 7, 11, 13, 17]
    assert segment_starts(np.array([5]), 12, 100).tolist() == [0, 5]  # window opens mid-document
    assert segment_starts(np.array([], dtype=np.int64), 9, 4).tolist() == [0, 4, 8]


def test_cu_seqlens_padded_to_bucket_with_length():
    tokens = np.array([1, 5, 5, 1, 5, 5, 5, 5, 5, 1], dtype=np.uint16)
    cu = build_cu_seqlens(tokens, max_len=4, bucket=8)
    assert cu.dtype == np.int32 and cu.tolist() == [0, 3, 7, 9, 10, 10, 10, 10]
    assert build_cu_seqlens(np.ones(20, dtype=np.uint16), 4, 8).size == 24  # 20 starts + end -> 3 buckets


# -- the train stream -------------------------------------------------------------------------

def test_packing_invariants(synthetic):
    n, seq_len = 512, 256
    steps = take(make_stream(synthetic.train, n=n, seq_len=seq_len), 35)  # crosses into the shuffled epoch 1
    flat, seams = stream_layout(synthetic.train, 7, 2)
    assert flat.size // 2 < 35 * 3 * n < flat.size and len(seams) > 1
    position = 0
    for step in steps:
        assert len(step) == 3
        for inputs, targets, cu in step:
            assert inputs.shape == targets.shape == (1, n) and inputs.dtype == targets.dtype == torch.int64
            assert cu.dtype == torch.int32 and cu.numel() % 16 == 0
            # inputs/targets are the stream shifted by one
            assert torch.equal(inputs[0], torch.from_numpy(flat[position : position + n].astype(np.int64)))
            assert torch.equal(targets[0], torch.from_numpy(flat[position + 1 : position + n + 1].astype(np.int64)))
            c = cu.tolist()
            assert c[0] == 0 and c[-1] == n and all(a <= b for a, b in pairwise(c))
            starts = sorted(set(c))[:-1]
            assert np.diff(starts + [n]).max() <= seq_len
            # segments start at 0, at every BOS and seam, and otherwise only to cut a long document
            bos = set(np.flatnonzero(inputs[0].numpy() == BOS_ID).tolist())
            local_seams = {s - position for s in seams if position < s < position + n}
            assert bos | local_seams <= set(starts)
            for previous, start in pairwise(starts):
                assert start in bos or start in local_seams or start - previous == seq_len
            position += n


def test_every_document_appears_exactly_once_per_epoch(synthetic):
    steps = take(make_stream(synthetic.train, world_size=1), 58)
    seen = np.concatenate([mb[0][0].numpy() for step in steps for mb in step])
    epoch_length = sum(d.size for d in synthetic.train_docs)
    assert seen.size >= 2 * epoch_length
    first, second = seen[:epoch_length], seen[epoch_length : 2 * epoch_length]
    # epoch 0 reads the shards in their natural order: documents cut by shard boundaries come back whole
    starts = np.flatnonzero(first == BOS_ID).tolist() + [epoch_length]
    docs = sorted(tuple(first[a:b].tolist()) for a, b in pairwise(starts))
    assert docs == sorted(tuple(d.tolist()) for d in synthetic.train_docs)
    # epoch 1 reads every shard once, in a shuffled order
    order = epoch_shard_order(len(synthetic.train), 7, 1)
    assert order != sorted(order)
    shards = [np.fromfile(p, dtype="<u2", offset=1024) for p in synthetic.train]
    assert np.array_equal(second, np.concatenate([shards[i] for i in order]))


def test_two_ranks_take_disjoint_interleaved_slices(synthetic):
    single = take(make_stream(synthetic.train, world_size=1, accum=6), 4)
    ranks = [take(make_stream(synthetic.train, rank=r, world_size=2, accum=3), 4) for r in range(2)]
    for step_index in range(4):
        interleaved = [ranks[r][step_index][m] for m in range(3) for r in range(2)]
        for (a_in, a_tg, a_cu), (b_in, b_tg, b_cu) in zip(single[step_index], interleaved, strict=True):
            assert torch.equal(a_in, b_in) and torch.equal(a_tg, b_tg) and torch.equal(a_cu, b_cu)
    rank0 = torch.cat([mb[0][0] for step in ranks[0] for mb in step])
    rank1 = torch.cat([mb[0][0] for step in ranks[1] for mb in step])
    assert not torch.equal(rank0, rank1)


def test_deterministic_from_seed(synthetic):
    first, again = (take(make_stream(synthetic.train, seed=11), 5) for _ in range(2))
    other = take(make_stream(synthetic.train, seed=12), 5)
    flatten = lambda steps: torch.cat([mb[0][0] for s in steps for mb in s])  # noqa: E731
    assert torch.equal(flatten(first), flatten(again))
    assert epoch_shard_order(4, 11, 0) == epoch_shard_order(4, 12, 0) == [0, 1, 2, 3]
    assert torch.equal(flatten(first), flatten(other))  # epoch 0 does not depend on the seed
    later = [take(make_stream(synthetic.train, seed=seed), 40)[-10:] for seed in (11, 11, 13)]
    assert torch.equal(flatten(later[0]), flatten(later[1])) and not torch.equal(flatten(later[0]), flatten(later[2]))


def test_pinned_memory_when_requested():
    if not torch.cuda.is_available():
        pytest.skip("pinning needs CUDA")
    stream = TrainStream([], tokens_per_microbatch=4, grad_accum_steps=1, train_seq_len=4, pin_memory=True)
    inputs, targets, cu = stream.micro_batch(np.array([1, 2, 3, 1, 2], dtype=np.uint16))
    assert inputs.is_pinned() and targets.is_pinned() and cu.is_pinned()


# -- the DataModule ---------------------------------------------------------------------------

def datamodule(data_dir, **overrides):
    args = dict(data_dir=str(data_dir), vocab_size=VOCAB, train_seq_len=256, train_batch_tokens=3072,
                tokens_per_microbatch=512, eval_seq_len=64, val_batch_seqs=4, cu_bucket=16, cu_min_len=0, seed=7)
    args.update(overrides)
    return GolfDataModule(**args)


def test_train_dataloader_yields_one_optimizer_step_per_item_for_the_trainers_rank(synthetic):
    dm = datamodule(synthetic.data_dir)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    assert (dm.rank, dm.world_size, dm.grad_accum_steps) == (1, 2, 3)
    batch = next(iter(dm.train_dataloader()))
    expected = take(make_stream(synthetic.train, rank=1, world_size=2, accum=3), 1)[0]
    assert isinstance(batch, list) and len(batch) == 3
    for got, want in zip(batch, expected, strict=True):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_cu_min_len_gives_ordinary_packs_one_compiled_shape(synthetic):
    dm = datamodule(synthetic.data_dir, cu_min_len=40)
    dm.set_distributed(0, 1)
    assert dm.compiled_cu_lengths() == [48]
    steps = iter(dm.train_dataloader())
    lengths = {cu.numel() for _ in range(5) for _, _, cu in next(steps)}
    assert lengths == {48}


def test_an_iterator_closed_on_its_own_prefetch_thread_does_not_wait_for_itself(synthetic):
    """The garbage collector can finalize an abandoned iterator on the thread building its next step."""
    stream = make_stream(find_shards(synthetic.data_dir, "train", VOCAB))
    it = iter(stream)
    build, calls, closed = stream.next_step, [], []

    def next_step_that_closes_the_iterator(shard_stream):
        calls.append(shard_stream)
        if len(calls) == 2:  # step 1 is out and the generator waits at its yield: close it from this thread
            try:
                it.close()
                closed.append("closed")
            except RuntimeError as err:
                closed.append(str(err))
        return build(shard_stream)

    stream.next_step = next_step_that_closes_the_iterator
    next(it)
    deadline = time.monotonic() + 30
    while not closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closed == ["closed"]
    with pytest.raises(StopIteration):
        next(it)


def test_test_dataloader_is_one_item_per_rank(synthetic):
    dm = datamodule(synthetic.data_dir)
    dm.set_distributed(1, 2)
    assert list(dm.test_dataloader()) == [1]


def test_accum_arithmetic_error_shows_the_numbers():
    assert grad_accum_steps_for(786432, 8, 98304) == 1 and grad_accum_steps_for(786432, 1, 98304) == 8
    with pytest.raises(ValueError) as err:
        grad_accum_steps_for(786432, 3, 98304)
    message = str(err.value)
    assert "train_batch_tokens=786432 is not a multiple of world_size * tokens_per_microbatch = 3 * 98304 = 294912" in message
    assert "train_batch_tokens=589824 or train_batch_tokens=884736 or tokens_per_microbatch=65536" in message
    dm = GolfDataModule(train_batch_tokens=1000, tokens_per_microbatch=300)
    with pytest.raises(ValueError, match=r"1 \* 300 = 300: use train_batch_tokens=900 or train_batch_tokens=1200 or tokens_per_microbatch=250"):
        _ = dm.grad_accum_steps


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_val_windows_cover_every_token_once(synthetic, world_size):
    tokens = datamodule(synthetic.data_dir).val_tokens()
    assert tokens.dtype == torch.int64 and torch.equal(tokens, torch.from_numpy(np.concatenate(synthetic.val_docs).astype(np.int64)))
    sidecar = np.random.default_rng(0).integers(0, 9, tokens.numel())  # byte counts come from a sidecar when present
    write_shard(sidecar_path(find_shards(synthetic.data_dir, "val", VOCAB)[0]), sidecar)
    inputs, targets, target_bytes = [], [], []
    for rank in range(world_size):
        dm = datamodule(synthetic.data_dir)
        dm.set_distributed(rank, world_size)
        loader = dm.val_dataloader()
        batches = list(loader)
        assert len(batches) == len(loader)
        for x, y, nbytes in batches:
            assert x.shape == y.shape == nbytes.shape and x.shape[0] <= 4 and x.shape[1] <= 64
            inputs.append(x.reshape(-1))
            targets.append(y.reshape(-1))
            target_bytes.append(nbytes.reshape(-1))
    assert torch.equal(torch.cat(inputs), tokens[:-1]) and torch.equal(torch.cat(targets), tokens[1:])
    assert torch.cat(target_bytes).tolist() == sidecar[1:].tolist()


def test_val_partial_window_is_its_own_batch():
    windows = ValWindows(torch.arange(12), torch.arange(12), seq_len=4, batch_seqs=2)
    shapes = [tuple(x.shape) for x, _, _ in windows]
    assert torch.equal(torch.cat([b.reshape(-1) for _, _, b in windows]), torch.arange(1, 12))  # bytes of targets
    assert shapes == [(2, 4), (1, 3)]
    # 3 windows over 2 ranks: rank 0 gets window 0, rank 1 gets window 1 and the partial window
    assert [len(ValWindows(torch.arange(12), torch.arange(12), 4, 2, r, 2)) for r in range(2)] == [1, 2]


def test_max_val_docs_keeps_the_documents_the_final_evaluation_scores(synthetic):
    full = datamodule(synthetic.data_dir).val_tokens()
    cut = datamodule(synthetic.data_dir, max_val_docs=2).val_tokens()
    # the first two documents with all their targets: the second one's last target is the third one's BOS
    assert cut.numel() == synthetic.val_docs[0].size + synthetic.val_docs[1].size + 1 and cut[-1] == BOS_ID
    assert torch.equal(cut, full[: cut.numel()]) and len(find_documents(cut, BOS_ID)) == 2
    assert torch.equal(cut, truncate_to_documents(full, BOS_ID, 2))  # what `evaluation.max_docs` keeps
    assert torch.equal(datamodule(synthetic.data_dir, max_val_docs=10**6).val_tokens(), full)
    with pytest.raises(ValueError, match=r"GolfDataModule: max_val_docs=0 must be positive"):
        datamodule(synthetic.data_dir, max_val_docs=0)


def test_max_val_tokens_keeps_the_whole_documents_that_fit(synthetic):
    """A bound in tokens, for quick runs that stay quick on corpora of long documents: whole documents only."""
    full = datamodule(synthetic.data_dir).val_tokens()
    sizes = [doc.size for doc in synthetic.val_docs]
    two = sizes[0] + sizes[1] + 1  # the first two documents with all their targets (the third one's BOS)
    for bound in (two, two + sizes[2] - 1):  # exactly two documents, and one token short of three
        cut = datamodule(synthetic.data_dir, max_val_tokens=bound).val_tokens()
        assert torch.equal(cut, full[:two]) and len(find_documents(cut, BOS_ID)) == 2
    assert torch.equal(truncate_to_documents(full, BOS_ID, 3, two), full[:two])  # with max_docs: the tighter cut
    assert torch.equal(datamodule(synthetic.data_dir, max_val_tokens=full.numel()).val_tokens(), full)
    with pytest.raises(ValueError, match=rf"max_tokens={sizes[0] - 1} is below the first validation document's "
                                         rf"{sizes[0] + 1} tokens"):
        truncate_to_documents(full, BOS_ID, None, sizes[0] - 1)


def test_calibration_batches_are_distinct_train_windows(synthetic):
    dm = datamodule(synthetic.data_dir, calibration_seed=3)
    batches = list(dm.calibration_batches(3, 128, 4))
    assert [tuple(b.shape) for b in batches] == [(4, 128)] * 3 and batches[0].dtype == torch.int64
    rows = [tuple(r.tolist()) for b in batches for r in b]
    assert len(set(rows)) == 12
    shards = [np.fromfile(p, dtype="<u2", offset=1024) for p in synthetic.train]
    for row in rows:
        assert any(_contains_at_grid(s, row) for s in shards)
    again = list(datamodule(synthetic.data_dir, calibration_seed=3).calibration_batches(3, 128, 4))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    other = next(dm.calibration_batches(1, 128, 4, seed=4))
    assert not torch.equal(other, batches[0])
    with pytest.raises(ValueError, match=r"calibration wants 1000 x 4 windows of 128 tokens .* hold only"):
        next(dm.calibration_batches(1000, 128, 4))


def _contains_at_grid(shard: np.ndarray, row: tuple) -> bool:
    length = len(row)
    grid = shard[: shard.size // length * length].reshape(-1, length)
    return bool((grid == np.array(row)).all(axis=1).any())


def test_bad_data_errors(tmp_path, synthetic, tiny_data):
    with pytest.raises(ShardError, match=r"no files match .*fineweb_train_\*\.bin: run `lit-golf download"):
        datamodule(tmp_path / "empty").setup("fit")
    with pytest.raises(TokenizerError, match=r"fineweb_300_bpe\.model does not exist"):
        datamodule(synthetic.data_dir).setup("fit")
    data = tmp_path / "mismatch"
    write_split(data, "val", synthetic.val_docs, 10_000)
    write_split(data, "train", synthetic.train_docs, 10_000)
    tokenizer_path(data, VOCAB).parent.mkdir(parents=True)
    shutil.copy(tiny_data.tokenizer, tokenizer_path(data, VOCAB))
    with pytest.raises(TokenizerError, match=r"has vocab 512 but the config says vocab_size=300: pass the matching"):
        datamodule(data).byte_luts()
    write_split(data, "val", synthetic.val_docs, 10_000, vocab=100)  # ids up to 299 filed under sp100
    with pytest.raises(ShardError, match=r"fineweb_val_000000\.bin contains token id 29\d >= vocab_size=100"):
        datamodule(data, vocab_size=100).val_tokens()
    with pytest.raises(ShardError, match=r"contains token id 29\d >= vocab_size=100"):
        take(TrainStream(synthetic.train, tokens_per_microbatch=64, grad_accum_steps=1, train_seq_len=64,
                         vocab_size=100, pin_memory=False), 1)
    with pytest.raises(ValueError, match=r"GolfDataModule: eval_seq_len=0 must be positive"):
        datamodule(synthetic.data_dir, eval_seq_len=0)


def test_byte_luts_and_setup_on_real_tiny_data(tiny_data):
    dm = GolfDataModule(data_dir=str(tiny_data.data_dir), vocab_size=tiny_data.vocab_size, train_seq_len=128,
                        train_batch_tokens=2048, tokens_per_microbatch=1024, eval_seq_len=128)
    dm.setup("fit")
    luts = dm.byte_luts()
    assert luts.base_bytes.shape == (tiny_data.vocab_size,) and bool(luts.is_boundary[BOS_ID])
    step = next(iter(dm.train_dataloader()))
    assert len(step) == 2 and step[0][0].max() < tiny_data.vocab_size
