"""SentencePiece loading and the per-token byte tables that turn a token loss into bits per byte.

The challenge scores bits per UTF-8 byte of the original text, so every evaluated token must be
mapped back to the number of text bytes it stands for. SentencePiece marks a word-initial space
with a leading '▁' in the piece; that space is a real byte of the text except right after a
boundary token (BOS and friends), where no space was ever written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch

SPACE_MARK = "▁"


class TokenizerError(ValueError):
    """A tokenizer file is missing or does not match the configured vocabulary."""


def load_tokenizer(path: str | Path, vocab_size: int | None = None) -> spm.SentencePieceProcessor:
    """Load a SentencePiece model; with `vocab_size`, check that it matches the model config."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(
            f"tokenizer {path} does not exist: run `lit-golf download` or `lit-golf prepare-data`, "
            "or pass the right --data_dir / tokenizer path"
        )
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as err:
        raise TokenizerError(
            f"tokenizer {path} is not a readable SentencePiece model ({str(err).strip()[:120]}): replace it"
        ) from None
    actual = int(sp.vocab_size())
    if vocab_size is not None and actual != vocab_size:
        raise TokenizerError(
            f"tokenizer {path} has vocab {actual} but the config says vocab_size={vocab_size}: "
            "pass the matching --vocab_size or tokenizer"
        )
    return sp


@dataclass
class ByteLUTs:
    """Per-token-id tables (length >= vocab size) used to count the text bytes behind each target."""

    base_bytes: torch.Tensor  # int16: UTF-8 bytes of the piece without its leading '▁'
    has_leading_space: torch.Tensor  # bool: piece starts with '▁'
    is_boundary: torch.Tensor  # bool: control / unknown / unused ids (they stand for no text)

    def to(self, device: torch.device | str) -> ByteLUTs:
        return ByteLUTs(
            self.base_bytes.to(device),
            self.has_leading_space.to(device),
            self.is_boundary.to(device),
        )


def build_byte_luts(sp: spm.SentencePieceProcessor, vocab_size: int) -> ByteLUTs:
    """Tables over `max(sp vocab, vocab_size)` ids; ids the tokenizer lacks count as boundaries."""
    sp_vocab = int(sp.vocab_size())
    size = max(sp_vocab, vocab_size)
    base_bytes = torch.zeros(size, dtype=torch.int16)
    has_leading_space = torch.zeros(size, dtype=torch.bool)
    is_boundary = torch.ones(size, dtype=torch.bool)
    for token_id in range(sp_vocab):
        if sp.is_control(token_id) or sp.is_unknown(token_id) or sp.is_unused(token_id):
            continue
        is_boundary[token_id] = False
        if sp.is_byte(token_id):
            base_bytes[token_id] = 1
            continue
        piece = sp.id_to_piece(token_id)
        if piece.startswith(SPACE_MARK):
            has_leading_space[token_id] = True
            piece = piece[len(SPACE_MARK):]
        base_bytes[token_id] = len(piece.encode("utf-8"))
    return ByteLUTs(base_bytes, has_leading_space, is_boundary)


def target_bytes(prev_ids: torch.Tensor, target_ids: torch.Tensor, luts: ByteLUTs) -> torch.Tensor:
    """Text bytes of each target token (int32, shape of `target_ids`).

    The '▁' of a target is a real space byte unless the preceding token is a boundary token.
    """
    space = luts.has_leading_space[target_ids] & ~luts.is_boundary[prev_ids]
    return luts.base_bytes[target_ids].to(torch.int32) + space.to(torch.int32)
