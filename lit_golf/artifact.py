"""Rebuild an eval-ready `GPT` from an artifact file alone: no checkpoint, no training code.

The artifact header carries the GPTConfig and the looping state; each tensor is dequantized by the
scheme its header entry names (`lit_golf.export.schemes`) and stacked back into the model's banks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lit_golf.config import GPTConfig
from lit_golf.export.schemes.registry import dequantize_tensors
from lit_golf.export.serialize import read_artifact
from lit_golf.model import GPT, rebank_state_dict


def load(path: str | Path, device: torch.device | str = "cpu", **config_overrides) -> GPT:
    """The model stored in `path`, in eval mode on `device`.

    `config_overrides` replace runtime-only GPTConfig fields recorded at export time, e.g.
    `attention_backend="sdpa"` on a machine without FlashAttention.
    """
    return load_with_header(path, device, **config_overrides)[0]


def load_with_header(path: str | Path, device: torch.device | str = "cpu", **config_overrides) -> tuple[GPT, dict]:
    """`load`, and the artifact's header (config, looping state, quantization, `tokenizer` file and sha256)."""
    header, tensors = read_artifact(path)
    flat = dequantize_tensors(tensors, str(path))
    config = GPTConfig.from_dict({**header["gpt_config"], **config_overrides})
    state = rebank_state_dict(flat, config)
    model = GPT(config)
    model.load_state_dict(state)
    model.looping_active = bool(header["looping_active"])
    return model.to(device).eval(), header
