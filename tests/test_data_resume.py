"""The train stream's position is part of the checkpoint: a restored stream feeds exactly the steps the
uninterrupted one would have fed (across shard seams and epochs, on every rank, whatever was prefetched)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lit_golf.data.packing import TrainStream
from tests.test_data_packing import datamodule, make_stream, synthetic, take  # noqa: F401  (fixture)


def same_steps(got, want) -> bool:
    return len(got) == len(want) and all(
        torch.equal(g, w) for step_g, step_w in zip(got, want, strict=True)
        for mb_g, mb_w in zip(step_g, step_w, strict=True) for g, w in zip(mb_g, mb_w, strict=True)
    )


@pytest.mark.parametrize("world_size", [1, 2])
def test_restored_stream_continues_the_uninterrupted_one(synthetic, world_size):  # noqa: F811
    total = 40 if world_size == 2 else 60  # about three epochs of the ~42k-token synthetic stream
    for rank in range(world_size):
        full = take(make_stream(synthetic.train, rank=rank, world_size=world_size), total)
        epoch_tokens = sum(f.stat().st_size - 1024 for f in synthetic.train) // 2
        tokens_per_step = make_stream(synthetic.train, world_size=world_size).tokens_per_step
        # resume points inside the first shard, across seams and into later (shuffled) epochs
        for k in (1, 3, epoch_tokens // tokens_per_step, epoch_tokens // tokens_per_step + 1, total - 5):
            state = make_stream(synthetic.train, rank=rank, world_size=world_size).state(k)
            assert state["position"] == k * tokens_per_step
            assert state["epoch"] == k * tokens_per_step // epoch_tokens
            restored = make_stream(synthetic.train, rank=rank, world_size=world_size)
            restored.load_state(state)
            assert same_steps(take(restored, total - k), full[k:]), (rank, k)
            # a state taken from the restored stream counts from where it started
            assert restored.state(2)["position"] == (k + 2) * tokens_per_step


def test_stream_position_must_not_be_negative(synthetic):  # noqa: F811
    stream = make_stream(synthetic.train)
    stream.start_position = -1
    with pytest.raises(ValueError, match="position"):
        take(stream, 1)


def test_datamodule_checkpoint_state_counts_consumed_not_prefetched_steps(synthetic):  # noqa: F811
    """Lightning hands each step to `on_before_batch_transfer` when it trains on it; the stream (and Lightning's
    fetcher) have prepared more by then. The saved position is after the consumed steps only."""
    world_size = 2
    for rank in range(world_size):
        trainer = SimpleNamespace(global_rank=rank, world_size=world_size, training=True)
        dm = datamodule(synthetic.data_dir)
        dm.trainer = trainer
        assert isinstance(dm.train_stream(), TrainStream)
        steps = iter(dm.train_dataloader())
        consumed = 7
        full = [next(steps) for _ in range(consumed + 12)]  # the loader ran 12 steps ahead of training
        for batch in full[:consumed]:
            assert dm.on_before_batch_transfer(batch, 0) is batch
        trainer.training = False  # validation batches pass through the same hook and do not count
        dm.on_before_batch_transfer(full[0], 0)
        state = dm.state_dict()
        assert state["position"] == consumed * 3072 and state["seed"] == 7

        resumed = datamodule(synthetic.data_dir)
        resumed.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, training=True)
        resumed.load_state_dict(state)
        again = iter(resumed.train_dataloader())
        assert same_steps([next(again) for _ in range(12)], full[consumed:])
        resumed.on_before_batch_transfer(full[0], 0)
        assert resumed.state_dict()["position"] == (consumed + 1) * 3072


def test_datamodule_state_is_empty_before_training_and_an_empty_state_loads(synthetic):  # noqa: F811
    dm = datamodule(synthetic.data_dir)
    assert dm.state_dict() == {}
    dm.load_state_dict({})
    dm.set_distributed(0, 1)
    first = next(iter(dm.train_dataloader()))
    assert same_steps([first], take(make_stream(synthetic.train, accum=6), 1))
