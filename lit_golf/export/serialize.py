"""The artifact file format: quantized matrices, per-row scales and float16 tensors in one compressed file.

Layout (all integers little-endian):

    preamble  MAGIC (8 bytes) | format version u16 | compressor id u8 | 0 u8 | header length u32 | header crc32 u32
    header    compressed JSON: model config, quantization settings, sections, tensor index
    sections  one per tensor group ('attn', 'mlp', 'embed', 'passthrough'), each a run of independently
              compressed chunks of its byte-shuffled raw bytes

Chunks are independent streams so that they compress in parallel (brotli releases the GIL); at 4 MiB
they are as large as brotli's default window, so splitting costs almost nothing. Every chunk carries
its length and CRC32, so a truncated or corrupted file fails loudly instead of loading garbage.

This module is part of what the artifact needs at load time (see `code_size.py`): keep it free of
training and GPTQ code.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MAGIC = b"LGOLFQ\r\n"  # the CR/LF pair catches files mangled by text-mode transfers
FORMAT_VERSION = 1
SHUFFLE_STRIDE = 2
CHUNK_BYTES = 4 << 20
PREAMBLE = struct.Struct("<8sHBBII")
COMPRESSOR_IDS = {"brotli": 1, "lzma": 2}
DTYPES = {
    "int8": torch.int8,
    "float16": torch.float16,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
PASSTHROUGH = "passthrough"


class ArtifactFormatError(ValueError):
    """The file is not a readable lit_golf artifact (wrong magic, truncated, corrupt, newer format)."""


@dataclass
class StoredTensor:
    """One tensor as stored: `data` is int8 codes (with float16 per-row `scale`) or a passthrough tensor."""

    group: str
    data: torch.Tensor
    scale: torch.Tensor | None = None
    bits: int | None = None

    @property
    def quantized(self) -> bool:
        return self.scale is not None


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 weights from int8 codes and float16 per-row scales (row i is `q[i] * scale[i]`)."""
    return q.float() * scale.float().view(-1, *([1] * (q.dim() - 1)))


def dequantize_tensors(tensors: dict[str, StoredTensor]) -> dict[str, torch.Tensor]:
    """Flat state dict of the stored tensors: quantized ones dequantized, float ones as float32."""
    out = {}
    for name, stored in tensors.items():
        if stored.quantized:
            out[name] = dequantize(stored.data, stored.scale)
        elif stored.data.is_floating_point():
            out[name] = stored.data.float()
        else:
            out[name] = stored.data.clone()
    return out


# ----------------------------------------------------------------------------- byte transforms
def byte_shuffle(data: bytes, stride: int = SHUFFLE_STRIDE) -> bytes:
    """Group byte k of every `stride`-byte word together: float16 high bytes compress far better apart."""
    src = np.frombuffer(data, dtype=np.uint8)
    return np.concatenate([src[k::stride] for k in range(stride)]).tobytes()


def byte_unshuffle(data: bytes, stride: int = SHUFFLE_STRIDE) -> bytes:
    src = np.frombuffer(data, dtype=np.uint8)
    out = np.empty_like(src)
    start = 0
    for k in range(stride):
        count = len(range(k, len(src), stride))
        out[k::stride] = src[start:start + count]
        start += count
    return out.tobytes()


def compress(data: bytes, compressor: str, brotli_quality: int = 11) -> bytes:
    if compressor == "brotli":
        import brotli

        return brotli.compress(data, quality=brotli_quality)
    if compressor == "lzma":
        return lzma.compress(data, preset=9)
    raise ValueError(f"unknown compressor {compressor!r}; choose one of {sorted(COMPRESSOR_IDS)}")


def decompress(data: bytes, compressor: str) -> bytes:
    if compressor == "brotli":
        import brotli

        return brotli.decompress(data)
    return lzma.decompress(data)


def _compress_sections(raws: dict[str, bytes], compressor: str, brotli_quality: int) -> dict[str, list[bytes]]:
    """Every section cut into `CHUNK_BYTES` pieces, all pieces compressed in one thread pool."""
    pieces = [(name, raw[i:i + CHUNK_BYTES]) for name, raw in raws.items() for i in range(0, len(raw), CHUNK_BYTES)]
    with ThreadPoolExecutor(max_workers=max(1, min(len(pieces), os.cpu_count() or 1))) as pool:
        chunks = pool.map(lambda piece: compress(byte_shuffle(piece[1]), compressor, brotli_quality), pieces)
        out: dict[str, list[bytes]] = {name: [] for name in raws}
        for (name, _), chunk in zip(pieces, chunks, strict=True):
            out[name].append(chunk)
    return out


# ----------------------------------------------------------------------------- packing
def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: move the same 2 bytes as int16
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _dtype_name(t: torch.Tensor) -> str:
    for name, dtype in DTYPES.items():
        if t.dtype == dtype:
            return name
    raise ValueError(f"cannot store a {t.dtype} tensor in an artifact; supported dtypes: {sorted(DTYPES)}")


def _section_layout(tensors: dict[str, StoredTensor]) -> tuple[dict[str, bytes], list[dict]]:
    """Raw bytes per section and the tensor index; codes before scales so int8 and float16 bytes don't mix."""
    buffers: dict[str, io.BytesIO] = {}
    index = []

    def append(section: str, t: torch.Tensor) -> dict:
        buf = buffers.setdefault(section, io.BytesIO())
        raw = _tensor_bytes(t)
        entry = {"offset": buf.tell(), "dtype": _dtype_name(t), "shape": list(t.shape)}
        buf.write(raw)
        return entry

    for name, stored in tensors.items():
        section = stored.group if stored.quantized else PASSTHROUGH
        entry = {"name": name, "group": stored.group, "section": section, "bits": stored.bits}
        entry["data"] = append(section, stored.data)
        index.append(entry)
    for entry in index:
        stored = tensors[entry["name"]]
        if stored.quantized:
            entry["scale"] = append(entry["section"], stored.scale)
    return {name: buf.getvalue() for name, buf in buffers.items()}, index


@dataclass
class PartSize:
    """Bytes of one part of the artifact before (`raw`) and after (`compressed`) compression."""

    raw: int
    compressed: int


def pack(
    header: dict, tensors: dict[str, StoredTensor], compressor: str = "brotli", brotli_quality: int = 11
) -> tuple[bytes, dict[str, PartSize]]:
    """Artifact bytes for `tensors` plus JSON-able `header` metadata, and the size of each part.

    The parts are 'header' (preamble + compressed header) and one per section; their compressed
    sizes add up to the length of the artifact. Output is deterministic for the same inputs.
    """
    if compressor not in COMPRESSOR_IDS:
        raise ValueError(f"unknown compressor {compressor!r}; choose one of {sorted(COMPRESSOR_IDS)}")
    raws, index = _section_layout(tensors)
    sections, blobs = [], []
    for name, chunks in _compress_sections(raws, compressor, brotli_quality).items():
        raw = raws[name]
        sections.append({"name": name, "raw_bytes": len(raw),
                         "chunks": [[len(c), zlib.crc32(c)] for c in chunks]})
        blobs.append(b"".join(chunks))
    meta = dict(header, format_version=FORMAT_VERSION, compressor=compressor, sections=sections, tensors=index)
    header_json = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    header_blob = compress(header_json, compressor, brotli_quality)
    preamble = PREAMBLE.pack(MAGIC, FORMAT_VERSION, COMPRESSOR_IDS[compressor], 0, len(header_blob),
                             zlib.crc32(header_blob))
    sizes = {"header": PartSize(len(preamble) + len(header_json), len(preamble) + len(header_blob))}
    sizes.update({s["name"]: PartSize(s["raw_bytes"], len(b)) for s, b in zip(sections, blobs, strict=True)})
    return preamble + header_blob + b"".join(blobs), sizes


# ----------------------------------------------------------------------------- unpacking
def _read_preamble(blob: bytes, source: str) -> tuple[str, int]:
    if len(blob) < PREAMBLE.size:
        raise ArtifactFormatError(
            f"{source}: truncated artifact ({len(blob)} bytes, shorter than the {PREAMBLE.size}-byte preamble)"
        )
    magic, version, compressor_id, _, header_len, header_crc = PREAMBLE.unpack_from(blob)
    if magic != MAGIC:
        raise ArtifactFormatError(
            f"{source}: not a lit_golf artifact (bad magic bytes); pass the artifact.ptz written by the export"
        )
    if version != FORMAT_VERSION:
        raise ArtifactFormatError(
            f"{source}: artifact format version {version}, this lit_golf reads version {FORMAT_VERSION}; "
            "load it with the lit_golf version that wrote it"
        )
    names = {v: k for k, v in COMPRESSOR_IDS.items()}
    if compressor_id not in names:
        raise ArtifactFormatError(f"{source}: corrupt artifact (unknown compressor id {compressor_id})")
    end = PREAMBLE.size + header_len
    if len(blob) < end:
        raise ArtifactFormatError(f"{source}: truncated artifact ({len(blob)} bytes, header needs {end})")
    if zlib.crc32(blob[PREAMBLE.size:end]) != header_crc:
        raise ArtifactFormatError(f"{source}: corrupt artifact (header checksum mismatch)")
    return names[compressor_id], end


def _decode_header(blob: bytes, compressor: str, source: str) -> dict:
    try:
        return json.loads(decompress(blob, compressor))
    except Exception as exc:
        raise ArtifactFormatError(f"{source}: corrupt artifact (unreadable header: {exc})") from None


def _read_sections(blob: bytes, start: int, meta: dict, source: str) -> dict[str, bytes]:
    expected = start + sum(c[0] for s in meta["sections"] for c in s["chunks"])
    if len(blob) != expected:
        state = "truncated" if len(blob) < expected else "corrupt"
        raise ArtifactFormatError(f"{source}: {state} artifact ({len(blob)} bytes, expected {expected})")
    raws, pos = {}, start
    for section in meta["sections"]:
        parts = []
        for length, crc in section["chunks"]:
            chunk = blob[pos:pos + length]
            pos += length
            if zlib.crc32(chunk) != crc:
                raise ArtifactFormatError(
                    f"{source}: corrupt artifact (checksum mismatch in section {section['name']!r})"
                )
            parts.append(byte_unshuffle(decompress(chunk, meta["compressor"])))
        raw = b"".join(parts)
        if len(raw) != section["raw_bytes"]:
            raise ArtifactFormatError(f"{source}: corrupt artifact (section {section['name']!r} has wrong length)")
        raws[section["name"]] = raw
    return raws


def _tensor_from(raw: bytes, entry: dict, source: str) -> torch.Tensor:
    dtype = DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ArtifactFormatError(f"{source}: corrupt artifact (unknown dtype {entry['dtype']!r})")
    numel = int(np.prod(entry["shape"], dtype=np.int64))
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if entry["offset"] + nbytes > len(raw):
        raise ArtifactFormatError(f"{source}: corrupt artifact (tensor data past the end of its section)")
    storage_dtype = torch.int16 if dtype == torch.bfloat16 else dtype
    flat = torch.frombuffer(bytearray(raw[entry["offset"]:entry["offset"] + nbytes]), dtype=storage_dtype)
    return flat.view(dtype).reshape(entry["shape"])


def unpack(blob: bytes, source: str = "<artifact>") -> tuple[dict, dict[str, StoredTensor]]:
    """(header, tensors) from artifact bytes; any damage raises `ArtifactFormatError` naming `source`."""
    compressor, header_end = _read_preamble(blob, source)
    meta = _decode_header(blob[PREAMBLE.size:header_end], compressor, source)
    raws = _read_sections(blob, header_end, meta, source)
    tensors = {}
    for entry in meta["tensors"]:
        raw = raws[entry["section"]]
        scale = _tensor_from(raw, entry["scale"], source) if "scale" in entry else None
        tensors[entry["name"]] = StoredTensor(entry["group"], _tensor_from(raw, entry["data"], source), scale,
                                              entry["bits"])
    return meta, tensors


def write_artifact(path: str | Path, blob: bytes) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written artifact behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)
    return path


def read_artifact(path: str | Path) -> tuple[dict, dict[str, StoredTensor]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"artifact {path} does not exist; write one with `lit-golf export` or a fit run")
    return unpack(path.read_bytes(), str(path))
