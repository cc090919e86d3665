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
CASEOPS_OPERATOR = "\ue001"  # lit_golf.data.caseops.TITLE; a tokenizer holding it makes CaseOps tokens


class TokenizerError(ValueError):
    """A tokenizer file is missing or does not match the configured vocabulary."""


def load_tokenizer(path: str | Path, vocab_size: int | None = None) -> spm.SentencePieceProcessor:
    """Load a SentencePiece model; with `vocab_size`, check that it matches the model config."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(
            f"tokenizer {path} does not exist: run `lit-golf download` or `lit-golf prepare-data`, "
            "or pass the right --data.data_dir"
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
            "pass the matching --model.gpt.vocab_size or tokenizer"
        )
    return sp


@dataclass
class ByteLUTs:
    """Per-token-id tables (length >= vocab size) used to count the text bytes behind each target."""

    base_bytes: torch.Tensor  # int16: UTF-8 bytes of the piece without its leading '▁'
    has_leading_space: torch.Tensor  # bool: piece starts with '▁'
    is_boundary: torch.Tensor  # bool: control / unknown / unused ids (they stand for no text)
    caseops: bool = False  # the tokenizer holds CaseOps operators: its tokens are scored from a byte sidecar

    def to(self, device: torch.device | str) -> ByteLUTs:
        return ByteLUTs(
            self.base_bytes.to(device),
            self.has_leading_space.to(device),
            self.is_boundary.to(device),
            self.caseops,
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
    operator = sp.piece_to_id(CASEOPS_OPERATOR)
    caseops = operator != sp.unk_id() and sp.id_to_piece(operator) == CASEOPS_OPERATOR
    return ByteLUTs(base_bytes, has_leading_space, is_boundary, caseops)


def target_bytes(prev_ids: torch.Tensor, target_ids: torch.Tensor, luts: ByteLUTs) -> torch.Tensor:
    """Text bytes of each target token (int32, shape of `target_ids`).

    The '▁' of a target is a real space byte unless the preceding token is a boundary token.
    """
    space = luts.has_leading_space[target_ids] & ~luts.is_boundary[prev_ids]
    return luts.base_bytes[target_ids].to(torch.int32) + space.to(torch.int32)


def token_byte_table(tokens: torch.Tensor, luts: ByteLUTs | None, sidecar: torch.Tensor | None = None) -> torch.Tensor:
    """Text bytes of each token of a stream as a target (int32, entry 0 is 0): THE byte count of evaluation.

    From `sidecar` (per-token original byte counts, as `prepare-data --caseops` writes them) when the
    dataset has one, else from the tables. CaseOps tokens without a sidecar are refused: the tables
    would count operator pieces as text and lowercase pieces as the bytes of what they stand for.
    """
    if sidecar is not None:
        if sidecar.shape != tokens.shape:
            raise ValueError(
                f"the byte sidecar holds {sidecar.numel()} counts for {tokens.numel()} validation tokens: "
                "re-run `lit-golf prepare-data --caseops`"
            )
        table = sidecar.to(device=tokens.device, dtype=torch.int32, copy=True)
        table[:1] = 0
        return table
    if luts is None:
        raise ValueError("token_byte_table needs the tokenizer's byte tables or a byte sidecar")
    if luts.caseops:
        raise TokenizerError(
            "the tokenizer holds CaseOps operators but the validation shards have no byte sidecar "
            "(fineweb_val_bytes_NNNNNN.bin): bits per byte cannot come from the token tables; re-run "
            "`lit-golf prepare-data --caseops` or copy the sidecars next to the val shards"
        )
    table = torch.zeros_like(tokens, dtype=torch.int32)
    table[1:] = target_bytes(tokens[:-1], tokens[1:], luts)
    return table
