"""Model and data must share one vocabulary: the checks that say so in one line, before a run builds on a
mismatch (a model with another vocab_size would index past its embedding, or score text it cannot spell)."""

from __future__ import annotations

from pathlib import Path

from lit_golf.data.shards import dataset_dir, tokenizer_path


def check_data_for_vocab(model_vocab: int, data_dir: str | Path, model_source: str = "model.gpt.vocab_size") -> None:
    """One line when `data_dir` holds data for other vocabularies but not the model's (on the command line
    the data follows the model's vocab_size, so a mismatch shows up as a missing dataset folder)."""
    if dataset_dir(data_dir, model_vocab).is_dir():
        return
    others = sorted(int(p.name.removeprefix("fineweb10B_sp")) for p in Path(data_dir, "datasets").glob("fineweb10B_sp*")
                    if p.name.removeprefix("fineweb10B_sp").isdigit())
    if others:
        found = others[0]
        raise ValueError(
            f"the model's vocab_size={model_vocab} ({model_source}) has no data in {data_dir}, whose data has "
            f"vocab_size={found} (tokenizer {tokenizer_path(data_dir, found)}): model and tokenizer must share one "
            f"vocabulary: --model.gpt.vocab_size {found} for this data, or prepare data with a {model_vocab}-token tokenizer"
        )


def check_vocab(model_vocab: int, datamodule, model_source: str = "model.gpt.vocab_size") -> None:
    """One line when the model's vocabulary differs from the data's (a datamodule without `vocab_size` passes)."""
    data_vocab = getattr(datamodule, "vocab_size", None)
    if data_vocab is None or data_vocab == model_vocab:
        return
    tokenizer = tokenizer_path(datamodule.data_dir, data_vocab) if hasattr(datamodule, "data_dir") else "?"
    raise ValueError(
        f"the model's vocab_size={model_vocab} ({model_source}) differs from the data's vocab_size={data_vocab} "
        f"(tokenizer {tokenizer}): model and tokenizer must share one vocabulary: --model.gpt.vocab_size "
        f"{data_vocab} for this data, or GolfDataModule(vocab_size={model_vocab}) for data of a {model_vocab}-token tokenizer"
    )
