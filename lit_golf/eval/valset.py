"""The validation tokens on the evaluation device, with the text bytes of every target precomputed.

Every evaluator scores targets `tokens[i]` (i >= 1) predicted from `tokens[:i]`; the bytes of a target
depend on it and its predecessor only, so they are computed once here (through the data package's
`token_byte_table`, the single definition of the byte count: a CaseOps byte sidecar when the data has one,
else the tokenizer tables) and gathered per batch without host work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lit_golf.data.tokenizer import ByteLUTs, token_byte_table


class ValidationDataError(ValueError):
    """The validation tokens cannot be evaluated (too short, wrong shape, ids outside the vocabulary)."""


@dataclass
class WindowBatch:
    """Rows of `[R, W]` model inputs, their targets, target bytes and which positions hold real tokens."""

    inputs: torch.Tensor
    targets: torch.Tensor
    target_bytes: torch.Tensor
    valid: torch.Tensor


@dataclass
class ValSet:
    tokens: torch.Tensor  # int64 [N] on the evaluation device
    byte_table: torch.Tensor  # int32 [N]: bytes of tokens[i] as a target (entry 0 unused, 0)

    @classmethod
    def build(
        cls, tokens: torch.Tensor, luts: ByteLUTs, device: torch.device | str, token_bytes: torch.Tensor | None = None
    ) -> ValSet:
        """`token_bytes`: the byte sidecar of `tokens` (per-token original bytes), when the data has one."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 1 or tokens.numel() < 2:
            raise ValidationDataError(
                f"validation tokens must be a 1-D sequence of at least 2 ids, got shape {tuple(tokens.shape)}; "
                "check the val shards (GolfDataModule.val_tokens())"
            )
        tokens = tokens.to(device=device, dtype=torch.int64, copy=True)  # own storage: no inference tensors
        largest = int(tokens.max())
        if int(tokens.min()) < 0 or largest >= luts.base_bytes.numel():
            raise ValidationDataError(
                f"validation token id {largest} is outside the tokenizer's {luts.base_bytes.numel()} ids; "
                "the val shards were made with another tokenizer"
            )
        return cls(tokens, token_byte_table(tokens, luts.to(device), token_bytes))

    @property
    def num_targets(self) -> int:
        return self.tokens.numel() - 1

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def gather(self, starts: torch.Tensor, lengths: torch.Tensor, width: int) -> WindowBatch:
        """Row r holds inputs `tokens[starts[r] : starts[r] + lengths[r]]`, right-padded to `width` with 0.

        Right padding is invisible to real positions under causal attention; callers mask it out of losses.
        """
        columns = torch.arange(width, device=self.device)
        valid = columns[None, :] < lengths[:, None]
        index = (starts[:, None] + columns[None, :]).clamp_(0, self.num_targets - 1)
        zero = torch.zeros((), dtype=torch.int64, device=self.device)
        inputs = torch.where(valid, self.tokens[index], zero)
        targets = torch.where(valid, self.tokens[index + 1], zero)
        nbytes = torch.where(valid, self.byte_table[index + 1], zero.to(torch.int32))
        return WindowBatch(inputs, targets, nbytes, valid)
