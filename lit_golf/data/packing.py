"""Document packing for training: an endless token stream cut into optimizer steps.

The train shards are read back to back, forming one contiguous token stream: in the first epoch
in their natural order (the published export is already shuffled, documents continue from one
shard into the next, and upstream reads them in this order), in later epochs in an order shuffled
from the seed. Where a shard follows one that is not its natural predecessor, a new attention
segment starts, so the two halves of a document cut by the shard boundary never attend to
unrelated text. Every optimizer step takes the next
`grad_accum_steps * world_size * N` tokens of it (N = tokens per micro-batch): micro-batch `m` of
rank `r` is the window starting at `(m * world_size + r) * N`, of N + 1 tokens so that
`inputs = window[:-1]` and `targets = window[1:]`. Consecutive windows overlap by exactly that one
token, so every token of an epoch is an input exactly once and a target exactly once, and ranks
never share an input.

Attention stays within documents: `cu_seqlens` starts a segment at position 0 and at every BOS,
and cuts documents longer than `train_seq_len` into pieces of that length.

This module has no Lightning dependency so benchmarks and tools can drive `TrainStream` directly.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from lit_golf.data.shards import BOS_ID, ShardError, read_header, read_shard

PREFETCH_THREAD = "step-prefetch"  # the name prefix of the thread that builds the next step

MicroBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def epoch_shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """Order in which the shards are read during `epoch`: natural first, then seeded permutations."""
    if epoch == 0:
        return list(range(num_shards))
    return np.random.default_rng([seed, epoch]).permutation(num_shards).tolist()


def segment_starts(doc_starts: np.ndarray, length: int, max_len: int) -> np.ndarray:
    """Start positions of attention segments in a window of `length` tokens.

    `doc_starts` are the sorted BOS positions; position 0 always starts a segment (the window may
    begin inside a document) and segments longer than `max_len` are cut into `max_len` pieces.
    """
    if doc_starts.size == 0 or doc_starts[0] != 0:
        doc_starts = np.concatenate(([0], doc_starts))
    ends = np.append(doc_starts[1:], length)
    pieces = (ends - doc_starts + max_len - 1) // max_len
    first_piece = np.repeat(np.cumsum(pieces) - pieces, pieces)
    piece_index = np.arange(int(pieces.sum())) - first_piece
    return np.repeat(doc_starts, pieces) + piece_index * max_len


def build_cu_seqlens(
    tokens: np.ndarray, max_len: int, bucket: int, seams: np.ndarray | None = None, min_len: int = 0
) -> np.ndarray:
    """Cumulative segment boundaries of `tokens` (int32), padded with `len(tokens)` to a multiple of `bucket`.

    Segments start at every BOS and at the `seams` (shard joins). Padding to a fixed set of lengths
    (at least `min_len`, so ordinary packs all share one length) keeps `torch.compile` from
    recompiling for every new segment count.
    """
    length = tokens.size
    doc_starts = np.flatnonzero(tokens == BOS_ID)
    if seams is not None and seams.size:
        doc_starts = np.union1d(doc_starts, seams[seams < length])
    starts = segment_starts(doc_starts, length, max_len)
    padded = -(-max(starts.size + 1, min_len) // bucket) * bucket
    cu = np.full(padded, length, dtype=np.int32)
    cu[: starts.size] = starts
    return cu


class ShardStream:
    """Endless token stream over shards, epoch after epoch, with the next shard loaded in the background.

    `read(start, n)` returns tokens `[cursor + start, cursor + start + n)` across shard (and epoch)
    boundaries, with the offsets of the seams inside them; `advance(n)` moves the cursor and drops
    shards it has passed. `position` starts the cursor that many tokens into the endless stream
    (a resumed run): shards before it are skipped by their header sizes, never read, and the stream
    from there on (tokens and seams) is exactly the one a cursor that advanced there would see.
    """

    def __init__(self, files: Sequence[Path], seed: int, vocab_size: int | None = None, position: int = 0):
        if not files:
            raise ShardError("no train shards given: run `lit-golf download` or `lit-golf prepare-data`")
        if position < 0:
            raise ValueError(f"stream position={position} must be >= 0")
        sizes = [read_header(f) for f in files]
        if sum(sizes) == 0:
            raise ShardError(f"the train shards ({files[0]} ...) hold no tokens: prepare the data again")
        self.files, self.seed, self.vocab_size = list(files), seed, vocab_size
        self._sizes = sizes
        self._order = self._index_sequence(nonempty=[i for i, size in enumerate(sizes) if size])
        self._previous_index = -1
        offset = self._skip_whole_shards(position)
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch")
        self._next: tuple[Future, bool] = self._submit_next()
        self._loaded: deque[tuple[np.ndarray, bool]] = deque()  # (tokens, begins at a seam)
        self._offset = 0  # cursor position inside the first loaded shard
        self._available = 0  # tokens loaded from the cursor on
        self._append_next()
        self._offset, self._available = offset, self._available - offset

    def _skip_whole_shards(self, position: int) -> int:
        """Drop the shards that lie wholly before `position` from the order; the offset into the next one."""
        epoch_tokens = sum(self._sizes)
        epochs, position = divmod(position, epoch_tokens)
        if epochs:  # whole epochs: the order is a pure function of (seed, epoch), skip without summing
            self._order = self._index_sequence(
                nonempty=[i for i, size in enumerate(self._sizes) if size], first_epoch=epochs
            )
            last_of_previous = [i for i in epoch_shard_order(len(self.files), self.seed, epochs - 1) if self._sizes[i]]
            self._previous_index = last_of_previous[-1]
        while True:
            index = next(self._order)
            if position < self._sizes[index]:
                self._order = itertools.chain([index], self._order)
                return position
            position -= self._sizes[index]
            self._previous_index = index

    def _index_sequence(self, nonempty: list[int], first_epoch: int = 0) -> Iterator[int]:
        keep = set(nonempty)
        epoch = first_epoch
        while True:
            yield from (i for i in epoch_shard_order(len(self.files), self.seed, epoch) if i in keep)
            epoch += 1

    def _load(self, path: Path) -> np.ndarray:
        return np.array(read_shard(path, self.vocab_size))  # copy into RAM off the training thread

    def _submit_next(self) -> tuple[Future, bool]:
        index = next(self._order)
        seam = index != self._previous_index + 1
        self._previous_index = index
        return self._loader.submit(self._load, self.files[index]), seam

    def _append_next(self) -> None:
        future, seam = self._next
        self._next = self._submit_next()
        shard = future.result()
        self._loaded.append((shard, seam))
        self._available += shard.size

    def read(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens `[cursor + start, +length)` and the offsets (> 0) in them where a seam shard begins."""
        while self._available < start + length:
            self._append_next()
        pieces, seams = [], []
        pos, taken = self._offset + start, 0
        for shard, seam in self._loaded:
            if pos >= shard.size:
                pos -= shard.size
                continue
            if seam and pos == 0 and taken:
                seams.append(taken)
            take = min(shard.size - pos, length - taken)
            pieces.append(shard[pos : pos + take])
            taken += take
            if taken == length:
                break
            pos = 0
        tokens = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return tokens, np.array(seams, dtype=np.int64)

    def advance(self, n: int) -> None:
        while self._available < n + 1:
            self._append_next()
        self._available -= n
        self._offset += n
        while self._offset >= self._loaded[0][0].size:
            self._offset -= self._loaded.popleft()[0].size

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)


class TrainStream:
    """Optimizer steps for one rank: lists of `grad_accum_steps` micro-batches `(inputs, targets, cu_seqlens)`.

    Iterating prepares the next step in a background thread while the current one trains. The
    stream starts `start_position` tokens into the (global, all-rank) token stream: a resumed run sets
    it from `state(steps_consumed)` of the run it continues (`load_state`), so it feeds the same steps.
    What was prefetched but not trained on is not part of the state: the position counts consumed steps.
    """

    def __init__(
        self,
        files: Sequence[Path],
        *,
        tokens_per_microbatch: int,
        grad_accum_steps: int,
        train_seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        cu_bucket: int = 64,
        cu_min_len: int = 0,
        seed: int = 1337,
        vocab_size: int | None = None,
        pin_memory: bool | None = None,
        start_position: int = 0,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in 0..world_size-1={world_size - 1}")
        self.files = list(files)
        self.tokens_per_microbatch, self.grad_accum_steps = tokens_per_microbatch, grad_accum_steps
        self.train_seq_len, self.cu_bucket, self.cu_min_len = train_seq_len, cu_bucket, cu_min_len
        self.rank, self.world_size, self.seed, self.vocab_size = rank, world_size, seed, vocab_size
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.start_position = start_position

    @property
    def tokens_per_step(self) -> int:
        return self.grad_accum_steps * self.world_size * self.tokens_per_microbatch

    def state(self, steps_consumed: int) -> dict:
        """Where the stream stands after `steps_consumed` steps from `start_position` (the same on every rank:
        each step takes `tokens_per_step` tokens of the one global stream). `position` is what restores;
        epoch, shard and offset say where that is, and seed/train_tokens identify the stream."""
        position = self.start_position + steps_consumed * self.tokens_per_step
        sizes = [read_header(f) for f in self.files]
        epoch, offset = divmod(position, sum(sizes))
        shard = None
        for index in epoch_shard_order(len(self.files), self.seed, epoch):
            if offset < sizes[index]:
                shard = index
                break
            offset -= sizes[index]
        return {
            "position": position, "epoch": epoch, "shard": self.files[shard].name, "shard_offset": offset,
            "seed": self.seed, "train_tokens": sum(sizes), "tokens_per_step": self.tokens_per_step,
        }

    def load_state(self, state: dict) -> None:
        """Start at the position `state(...)` recorded."""
        self.start_position = int(state["position"])

    def micro_batch(self, window: np.ndarray, seams: np.ndarray | None = None) -> MicroBatch:
        """Turn a window of N + 1 stream tokens into `(inputs [1, N], targets [1, N], cu_seqlens)`."""
        seq = torch.empty(window.size, dtype=torch.int64, pin_memory=self.pin_memory)
        seq.numpy()[:] = window  # one widening copy; inputs and targets are views of it
        cu = torch.from_numpy(build_cu_seqlens(window[:-1], self.train_seq_len, self.cu_bucket, seams, self.cu_min_len))
        if self.pin_memory:
            cu = cu.pin_memory()
        return seq[None, :-1], seq[None, 1:], cu

    def next_step(self, stream: ShardStream) -> list[MicroBatch]:
        """Take this rank's micro-batches of the next step from `stream` and advance it past the step."""
        n = self.tokens_per_microbatch
        step = [
            self.micro_batch(*stream.read((m * self.world_size + self.rank) * n, n + 1))
            for m in range(self.grad_accum_steps)
        ]
        stream.advance(self.tokens_per_step)
        return step

    def __iter__(self) -> Iterator[list[MicroBatch]]:
        stream = ShardStream(self.files, self.seed, self.vocab_size, position=self.start_position)
        builder = ThreadPoolExecutor(1, thread_name_prefix=PREFETCH_THREAD)
        try:
            pending = builder.submit(self.next_step, stream)
            while True:
                step = pending.result()
                pending = builder.submit(self.next_step, stream)
                yield step
        finally:
            # An abandoned iterator is closed by the garbage collector on whichever thread allocates, which can be
            # the builder's own, and a thread cannot wait for itself ("cannot join current thread").
            on_builder = threading.current_thread().name.startswith(PREFETCH_THREAD)
            builder.shutdown(wait=not on_builder, cancel_futures=True)
            stream.close()


class TrainSteps(torch.utils.data.IterableDataset):
    """`TrainStream` as an IterableDataset, for a `DataLoader(batch_size=None, num_workers=0)`."""

    def __init__(self, stream: TrainStream):
        super().__init__()
        self.stream = stream

    def __iter__(self) -> Iterator[list[MicroBatch]]:
        return iter(self.stream)
