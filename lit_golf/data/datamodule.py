"""`GolfDataModule`: packed training steps, exact validation windows, byte tables and calibration data."""

from __future__ import annotations

import filecmp
import logging
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from lit_golf.data.documents import truncate_to_documents
from lit_golf.data.packing import TrainSteps, TrainStream
from lit_golf.data.shards import (
    BOS_ID,
    ShardError,
    file_sha256,
    find_shards,
    manifest_is_caseops,
    manifest_path,
    manifest_tokenizer_sha256,
    read_header,
    read_shard,
    read_sidecar,
    sidecar_path,
    tokenizer_path,
)
from lit_golf.data.tokenizer import (
    ByteLUTs,
    TokenizerError,
    build_byte_luts,
    load_tokenizer,
    token_byte_table,
)

log = logging.getLogger("lit_golf")


class TokenizerMismatch(TokenizerError):
    """The data's tokenizer is not the one its shards (manifest) or an artifact were made with."""


def grad_accum_steps_for(train_batch_tokens: int, world_size: int, tokens_per_microbatch: int) -> int:
    """Micro-batches per optimizer step; a one-line error with the arithmetic and fixes when it does not divide."""
    per_step = world_size * tokens_per_microbatch
    if train_batch_tokens % per_step == 0:
        return train_batch_tokens // per_step
    lower = train_batch_tokens // per_step * per_step
    multiples = [m for m in (lower, lower + per_step) if m > 0]
    fixes = [f"train_batch_tokens={m}" for m in multiples]
    if train_batch_tokens % world_size == 0:
        per_rank = train_batch_tokens // world_size
        accum = -(-per_rank // tokens_per_microbatch)
        while per_rank % accum:
            accum += 1
        fixes.append(f"tokens_per_microbatch={per_rank // accum}")
    raise ValueError(
        f"train_batch_tokens={train_batch_tokens} is not a multiple of world_size * tokens_per_microbatch = "
        f"{world_size} * {tokens_per_microbatch} = {per_step}: use " + " or ".join(fixes)
    )


def rank_window_range(num_windows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, balanced share `[lo, hi)` of the windows for one rank (no padding, no duplicates)."""
    return rank * num_windows // world_size, (rank + 1) * num_windows // world_size


def _same_content(a: Path, b: Path) -> bool:
    """Same file, or the same bytes (compared only when the sizes agree, the first MiB first)."""
    if a.samefile(b):
        return True
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        if fa.read(1 << 20) != fb.read(1 << 20):
            return False
    return filecmp.cmp(a, b, shallow=False)


def check_distinct_splits(train: list[Path], val: list[Path]) -> None:
    """No train shard may be a validation shard (a link or a copy): the model would be scored on text it trained on."""
    for shard in train:
        copy = next((v for v in val if _same_content(shard, v)), None)
        if copy is not None:
            raise ShardError(
                f"train shard {shard} is the same as validation shard {copy.name}: the model would be scored on "
                "text it trained on; make the splits from different documents (`lit-golf prepare-data` does)"
            )


class ValWindows(IterableDataset):
    """One rank's share of the validation windows, as `(inputs [b, L], targets [b, L], target bytes [b, L])`
    batches; `byte_table[i]` is the text bytes of `tokens[i]` as a target (`tokenizer.token_byte_table`).

    Windows tile `tokens[:-1]` (targets `tokens[1:]`) back to back, so every token but the first is
    predicted exactly once over all ranks; the final shorter window comes as a batch of its own.
    It is an IterableDataset so that Lightning never wraps it in a DistributedSampler, which would
    pad and duplicate windows.
    """

    def __init__(
        self, tokens: torch.Tensor, byte_table: torch.Tensor, seq_len: int, batch_seqs: int, rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__()
        self.tokens, self.byte_table, self.seq_len, self.batch_seqs = tokens, byte_table, seq_len, batch_seqs
        predictions = tokens.numel() - 1
        self.full_windows = predictions // seq_len
        self.tail = predictions % seq_len
        num_windows = self.full_windows + (self.tail > 0)
        self.lo, self.hi = rank_window_range(num_windows, rank, world_size)

    def batch_ranges(self) -> list[tuple[int, int]]:
        """`(first window, end window)` per batch; the partial window is always alone."""
        full_end = min(self.hi, self.full_windows)
        ranges = [(a, min(a + self.batch_seqs, full_end)) for a in range(self.lo, full_end, self.batch_seqs)]
        if self.tail and self.lo <= self.full_windows < self.hi:
            ranges.append((self.full_windows, self.full_windows + 1))
        return ranges

    def __len__(self) -> int:
        return len(self.batch_ranges())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        length = self.seq_len
        for first, end in self.batch_ranges():
            start = first * length
            stop = min(end * length, self.tokens.numel() - 1)
            rows = end - first
            targets = slice(start + 1, stop + 1)
            yield (self.tokens[start:stop].view(rows, -1), self.tokens[targets].view(rows, -1),
                   self.byte_table[targets].view(rows, -1))


class GolfDataModule(LightningDataModule):
    """FineWeb-format shards for training and bits-per-byte evaluation.

    Args:
        data_dir: holds `datasets/fineweb10B_sp<V>/` and `tokenizers/fineweb_<V>_bpe.model`.
        vocab_size: tokenizer vocabulary; shards and tokenizer are checked against it.
        train_seq_len: longest attention segment; longer documents are cut into pieces of this length.
        train_batch_tokens: tokens per optimizer step over all ranks.
        tokens_per_microbatch: tokens of one forward/backward on one rank.
        eval_seq_len: validation window length (the CLI links it to `model.evaluation.plain.seq_len`).
        val_batch_seqs: validation windows per batch (the CLI links it to `model.evaluation.plain.batch_seqs`).
        cu_bucket: `cu_seqlens` is padded to a multiple of this (fewer recompilations).
        cu_min_len: and to at least this length, so that ordinary packs share one compiled shape
            (the compile warm-up covers it; a pack with more segments gets the next bucket).
        seed: shard order of each training epoch.
        max_val_docs: keep only the first this many documents of validation (quick runs and smoke tests;
            the score is then not comparable to a full evaluation). The CLI links it to
            `model.evaluation.max_docs`, so in-training validation and `test` see the same documents.
        max_val_tokens: and of those, the most whole documents within this many tokens (linked to
            `model.evaluation.max_tokens`).
        calibration_seed: default seed of `calibration_batches` (GPTQ Hessians).
    """

    def __init__(
        self,
        data_dir: str = "data",
        vocab_size: int = 8192,
        train_seq_len: int = 2048,
        train_batch_tokens: int = 786432,
        tokens_per_microbatch: int = 98304,
        eval_seq_len: int = 2048,
        val_batch_seqs: int = 32,
        cu_bucket: int = 64,
        cu_min_len: int = 256,
        seed: int = 1337,
        max_val_docs: int | None = None,
        max_val_tokens: int | None = None,
        calibration_seed: int = 0,
    ):
        super().__init__()
        positive = dict(
            vocab_size=vocab_size, train_seq_len=train_seq_len, train_batch_tokens=train_batch_tokens,
            tokens_per_microbatch=tokens_per_microbatch, eval_seq_len=eval_seq_len,
            val_batch_seqs=val_batch_seqs, cu_bucket=cu_bucket,
        )
        for name, value in (("max_val_docs", max_val_docs), ("max_val_tokens", max_val_tokens)):
            if value is not None:
                positive[name] = value
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"GolfDataModule: {name}={value} must be positive")
        self.save_hyperparameters()
        self.data_dir, self.vocab_size = data_dir, vocab_size
        self.train_seq_len, self.train_batch_tokens = train_seq_len, train_batch_tokens
        self.tokens_per_microbatch, self.eval_seq_len = tokens_per_microbatch, eval_seq_len
        self.val_batch_seqs, self.cu_bucket, self.seed = val_batch_seqs, cu_bucket, seed
        self.cu_min_len = cu_min_len
        self.max_val_docs, self.max_val_tokens, self.calibration_seed = max_val_docs, max_val_tokens, calibration_seed
        self._distributed: tuple[int, int] | None = None
        # Resume state: the global stream position (tokens) the train loader starts at, and the training
        # steps consumed since (counted where Lightning hands a batch to the step, after its prefetch).
        self._start_position = 0
        self._steps_consumed = 0
        self._stream: TrainStream | None = None

    # -- distribution -------------------------------------------------------------------------

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Fix rank and world size explicitly (tests, benchmarks); otherwise they come from the trainer."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in 0..world_size-1={world_size - 1}")
        self._distributed = (rank, world_size)

    @property
    def rank(self) -> int:
        return self._rank_and_world()[0]

    @property
    def world_size(self) -> int:
        return self._rank_and_world()[1]

    def _rank_and_world(self) -> tuple[int, int]:
        if self._distributed is not None:
            return self._distributed
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    @property
    def grad_accum_steps(self) -> int:
        return grad_accum_steps_for(self.train_batch_tokens, self.world_size, self.tokens_per_microbatch)

    # -- Lightning hooks ----------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Fail before training starts on wrong arithmetic, missing shards, a mismatched tokenizer, or data that
        cannot mean what it is used for (train shards that are the validation ones, less training data than
        one step, less validation than one evaluation window)."""
        if stage in (None, "fit"):
            _ = self.grad_accum_steps  # the batch arithmetic, in one line when it does not divide
            train = find_shards(self.data_dir, "train", self.vocab_size)
        val = find_shards(self.data_dir, "val", self.vocab_size)
        if stage in (None, "fit"):
            self._check_training_data(train, val)
        self.byte_luts()
        self.val_token_bytes()
        self.check_tokenizer()

    def _check_training_data(self, train: list[Path], val: list[Path]) -> None:
        check_distinct_splits(train, val)
        train_tokens = sum(read_header(f) for f in train)
        if train_tokens < self.train_batch_tokens:
            raise ShardError(
                f"the train shards in {train[0].parent} hold {train_tokens:,} tokens, fewer than one optimizer step "
                f"(data.train_batch_tokens={self.train_batch_tokens:,}): every step would repeat the same text; "
                "prepare more training documents or lower data.train_batch_tokens"
            )

    def train_stream(self) -> TrainStream:
        return TrainStream(
            find_shards(self.data_dir, "train", self.vocab_size),
            tokens_per_microbatch=self.tokens_per_microbatch,
            grad_accum_steps=self.grad_accum_steps,
            train_seq_len=self.train_seq_len,
            rank=self.rank,
            world_size=self.world_size,
            cu_bucket=self.cu_bucket,
            cu_min_len=self.cu_min_len,
            seed=self.seed,
            vocab_size=self.vocab_size,
            start_position=self._start_position,
        )

    def train_dataloader(self) -> DataLoader:
        """One item = one optimizer step: a list of `grad_accum_steps` micro-batches."""
        self._stream = self.train_stream()
        self._steps_consumed = 0
        return DataLoader(TrainSteps(self._stream), batch_size=None, num_workers=0)

    # -- resume: the data position is part of the checkpoint ----------------------------------

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Counts the training steps actually handed to `training_step` (not the ones prefetched)."""
        if self.trainer is not None and self.trainer.training:
            self._steps_consumed += 1
        return batch

    def state_dict(self) -> dict:
        """The train stream's position after the steps trained so far (saved in every checkpoint; the same on
        every rank, and every rank restores it from the checkpoint file)."""
        if self._stream is None:
            return {}
        return self._stream.state(self._steps_consumed)

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue the train stream where the checkpoint's run was: the next batch is the one it would have fed."""
        if not state_dict:
            return
        train_tokens = sum(read_header(f) for f in find_shards(self.data_dir, "train", self.vocab_size))
        if state_dict.get("seed") != self.seed or state_dict.get("train_tokens") != train_tokens:
            log.warning(
                "warning: the checkpoint's data position was saved for seed %s over %s train tokens; this run has "
                "seed %s and %s train tokens: the resumed run does not see the batches the original would have",
                state_dict.get("seed"), state_dict.get("train_tokens"), self.seed, train_tokens,
            )
        self._start_position = int(state_dict["position"])
        self._steps_consumed = 0
        if self._stream is not None:
            self._stream.load_state(state_dict)
        log.info("data: resuming the train stream at token %s (epoch %s, shard %s, offset %s)",
                 f"{self._start_position:,}", state_dict.get("epoch"), state_dict.get("shard"),
                 state_dict.get("shard_offset"))

    def val_dataloader(self) -> DataLoader:
        windows = ValWindows(self.val_tokens(), self.val_byte_table(), self.eval_seq_len, self.val_batch_seqs,
                             self.rank, self.world_size)
        return DataLoader(windows, batch_size=None, num_workers=0)

    def test_dataloader(self) -> DataLoader:
        """One item per rank: `test` runs the whole (phased, multi-rank) evaluation in a single step."""
        return DataLoader([self.rank], batch_size=None, num_workers=0)

    def compiled_cu_lengths(self) -> list[int]:
        """The `cu_seqlens` length(s) ordinary training packs have, which the compile warm-up covers."""
        return [max(-(-self.cu_min_len // self.cu_bucket) * self.cu_bucket, self.cu_bucket)]

    # -- data for evaluation and export -------------------------------------------------------

    def val_tokens(self) -> torch.Tensor:
        """All validation tokens (int64), or those of the first `max_val_docs` documents with all their targets
        (the prefix `lit_golf.eval` keeps for `evaluation.max_docs`: the same documents as the final evaluation)."""
        return self._val_tokens

    @cached_property
    def _val_tokens(self) -> torch.Tensor:
        files = find_shards(self.data_dir, "val", self.vocab_size)
        stored = np.concatenate([read_shard(f, self.vocab_size) for f in files])
        if stored.size and stored[0] != BOS_ID:
            raise ShardError(
                f"validation shard {files[0]} does not start with BOS (id {BOS_ID}): in the upstream format every "
                "document does, and the evaluation cuts documents there; make the data with `lit-golf prepare-data`"
            )
        tokens = truncate_to_documents(torch.from_numpy(stored.astype(np.int64)), BOS_ID, self.max_val_docs,
                                       self.max_val_tokens)
        if tokens.numel() <= self.eval_seq_len:
            kept = "" if tokens.numel() == stored.size else " (as model.evaluation.max_docs / max_tokens keep it)"
            raise ShardError(
                f"the validation split in {files[0].parent} holds {tokens.numel():,} tokens{kept}, not more than one "
                f"evaluation window (model.evaluation.plain.seq_len={self.eval_seq_len}): keep more validation "
                "documents (prepare-data --num-val-docs, model.evaluation.max_docs / max_tokens) or evaluate with a "
                "shorter window"
            )
        return tokens

    def val_token_bytes(self) -> torch.Tensor | None:
        """The CaseOps byte sidecar of `val_tokens()` (int32, one original-text byte count per token), or None
        for plain data, whose bytes come from `byte_luts()`. A CaseOps dataset without sidecars is refused."""
        return self._val_token_bytes

    @cached_property
    def _val_token_bytes(self) -> torch.Tensor | None:
        files = find_shards(self.data_dir, "val", self.vocab_size)
        sidecars = [read_sidecar(f) for f in files]
        missing = [sidecar_path(f).name for f, counts in zip(files, sidecars, strict=True) if counts is None]
        if len(missing) == len(files):
            manifest = manifest_path(self.data_dir, self.vocab_size)
            if manifest_is_caseops(manifest):
                raise ShardError(
                    f"{manifest} says the tokens are CaseOps but {files[0].parent} has no byte sidecar ({missing[0]}): "
                    "copy the fineweb_val_bytes_*.bin files next to the val shards or re-run `lit-golf prepare-data --caseops`"
                )
            return None
        if missing:
            raise ShardError(
                f"{files[0].parent} has byte sidecars for some val shards but not {missing[0]}: copy it or re-run "
                "`lit-golf prepare-data --caseops`"
            )
        counts = np.concatenate(sidecars)[: self.val_tokens().numel()]
        return torch.from_numpy(counts.astype(np.int32))

    def val_byte_table(self) -> torch.Tensor:
        """Text bytes of each validation token as a target (int32, entry 0 is 0), from the sidecar when there is one."""
        return self._val_byte_table

    @cached_property
    def _val_byte_table(self) -> torch.Tensor:
        sidecar = self.val_token_bytes()  # with one, the tokenizer's tables are not needed
        return token_byte_table(self.val_tokens(), self.byte_luts() if sidecar is None else None, sidecar)

    def byte_luts(self) -> ByteLUTs:
        """Byte tables of `<data_dir>/tokenizers/fineweb_<V>_bpe.model` (checked against vocab_size)."""
        return self._byte_luts

    @cached_property
    def _byte_luts(self) -> ByteLUTs:
        sp = load_tokenizer(tokenizer_path(self.data_dir, self.vocab_size), self.vocab_size)
        return build_byte_luts(sp, self.vocab_size)

    # -- tokenizer identity -------------------------------------------------------------------

    @property
    def tokenizer_file(self) -> Path:
        return tokenizer_path(self.data_dir, self.vocab_size)

    @cached_property
    def tokenizer_sha256(self) -> str:
        return file_sha256(self.tokenizer_file)

    def tokenizer_record(self) -> dict[str, str]:
        """What an artifact records about the tokenizer it was trained with (file name and sha256)."""
        return {"file": self.tokenizer_file.name, "sha256": self.tokenizer_sha256}

    def check_tokenizer(self) -> None:
        """The tokenizer must be the one the shards were made with, when the dataset's manifest says which."""
        manifest = manifest_path(self.data_dir, self.vocab_size)
        recorded = manifest_tokenizer_sha256(manifest)
        if recorded is not None and recorded != self.tokenizer_sha256:
            raise TokenizerMismatch(
                f"tokenizer {self.tokenizer_file} (sha256 {self.tokenizer_sha256}) is not the one the shards were made "
                f"with: {manifest} records sha256 {recorded}; put that tokenizer back or re-run `lit-golf prepare-data`"
            )

    def check_artifact_tokenizer(self, header: dict, artifact: str | Path) -> None:
        """The artifact must have been trained with this data's tokenizer; artifacts that predate the
        record load with a warning."""
        recorded = (header.get("tokenizer") or {}).get("sha256")
        if recorded is None:
            log.warning(
                "warning: artifact %s records no tokenizer (exported before lit_golf recorded one): make sure it was "
                "trained with %s (sha256 %s)", artifact, self.tokenizer_file, self.tokenizer_sha256,
            )
        elif recorded != self.tokenizer_sha256:
            name = header["tokenizer"].get("file", "?")
            raise TokenizerMismatch(
                f"artifact {artifact} was trained with tokenizer {name} (sha256 {recorded}) but the data's tokenizer "
                f"{self.tokenizer_file} has sha256 {self.tokenizer_sha256}: evaluate it on the data it was trained "
                "on (--data.data_dir) or train and export it again"
            )

    def calibration_batches(
        self, num_batches: int, seq_len: int, batch_seqs: int, seed: int | None = None
    ) -> Iterator[torch.Tensor]:
        """`num_batches` int64 batches `[batch_seqs, seq_len]` of distinct random windows of the TRAIN shards.

        Windows sit on a grid of `seq_len` in each shard and are drawn without replacement, in a
        shuffled order fixed by `seed` (default `calibration_seed`); validation is never touched.
        """
        files = find_shards(self.data_dir, "train", self.vocab_size)
        shards = [read_shard(f, self.vocab_size) for f in files]
        per_shard = np.array([s.size // seq_len for s in shards])
        wanted, available = num_batches * batch_seqs, int(per_shard.sum())
        if wanted > available:
            raise ValueError(
                f"calibration wants {num_batches} x {batch_seqs} windows of {seq_len} tokens but the train shards "
                f"in {files[0].parent} hold only {available}: ask for fewer batches or download more shards"
            )
        rng = np.random.default_rng(self.calibration_seed if seed is None else seed)
        picks = rng.choice(available, size=wanted, replace=False)
        shard_ends = np.cumsum(per_shard)
        for batch in picks.reshape(num_batches, batch_seqs):
            rows = []
            for window in batch:
                index = int(np.searchsorted(shard_ends, window, side="right"))
                start = (int(window) - int(shard_ends[index] - per_shard[index])) * seq_len
                rows.append(shards[index][start : start + seq_len])
            yield torch.from_numpy(np.stack(rows).astype(np.int64))
