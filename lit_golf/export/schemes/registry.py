"""Every quantization scheme by the name the artifact header records, and dequantization by name."""

from __future__ import annotations

from types import ModuleType

import torch

from lit_golf.export.schemes import gptq, int8_row, lqer_asym, passthrough
from lit_golf.export.serialize import ArtifactFormatError, StoredTensor

SCHEMES: dict[str, ModuleType] = {m.NAME: m for m in (passthrough, gptq, lqer_asym, int8_row)}


def scheme(name: str, source: str = "ExportConfig") -> ModuleType:
    """The scheme module called `name`; an unknown name is one line naming `source` and the known ones."""
    if name not in SCHEMES:
        raise ArtifactFormatError(
            f"{source}: unknown quantization scheme {name!r}; this lit_golf knows {sorted(SCHEMES)} "
            "(an artifact from a newer lit_golf needs that version to load)"
        )
    return SCHEMES[name]


def dequantize_tensors(tensors: dict[str, StoredTensor], source: str = "<artifact>") -> dict[str, torch.Tensor]:
    """Flat float32 state dict (non-float tensors as stored) of the stored tensors, each by its scheme."""
    out = {}
    for name, stored in tensors.items():
        try:
            out[name] = scheme(stored.scheme, source).dequantize(stored.parts)
        except KeyError as exc:
            raise ArtifactFormatError(
                f"{source}: corrupt artifact (tensor {name!r} of scheme {stored.scheme!r} has no part {exc})"
            ) from None
    return out
