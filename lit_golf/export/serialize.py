"""The artifact file format: every tensor as its quantization scheme's named parts, in compressed sections.

Layout (all integers little-endian):

    preamble  MAGIC (8 bytes) | format version u16 | header compressor id u8 | 0 u8 | header length u32 |
              header crc32 u32
    header    compressed JSON: model config, quantization settings, sections, tensor index
    sections  each a run of independently compressed chunks of its raw bytes

The tensor index names each tensor's scheme (`lit_golf.export.schemes`) and where each of its parts
lies: section, offset, dtype, shape. By default a tensor's parts go to the section of its group
('attn', 'mlp', 'embed', 'gate'; 'passthrough' for float16 tensors), integer codes before scales so
int8 and float16 bytes don't mix, further parts (LQER factors) to a section named after the scheme;
those sections are byte-shuffled and compressed with the header's compressor (brotli or lzma).

Per-group code compression (`zpaq_level`) instead puts the integer codes of each role ('attn.q',
'mlp.up', 'tok_emb', ...) of all layers into one section, each matrix transposed (a column of codes
is one input feature across outputs: similar values sit together) and, for `reorder_roles`, its
rows first put in greedy nearest-neighbour order (the permutation goes to the 'row_order' section);
those sections are compressed with ZPAQ (`pip install zpaq`), whose context mixing models int8
codes better than brotli.

Brotli chunks are independent 4 MiB streams (brotli's default window) so they compress in parallel;
a code section is one ZPAQ stream. Every chunk carries its length and CRC32, so a truncated or
corrupted file fails loudly instead of loading garbage. Format version 1 (one scheme, GPTQ per row,
before the scheme seam) is still read.

This module is part of what the artifact needs at load time (see `code_size.py`): keep it free of
training and GPTQ code.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import re
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lit_golf.files import write_atomic

MAGIC = b"LGOLFQ\r\n"  # the CR/LF pair catches files mangled by text-mode transfers
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SHUFFLE_STRIDE = 2
CHUNK_BYTES = 4 << 20
PREAMBLE = struct.Struct("<8sHBBII")
COMPRESSOR_IDS = {"brotli": 1, "lzma": 2}  # header compressors
SECTION_COMPRESSORS = (*COMPRESSOR_IDS, "zpaq")
DTYPES = {
    "int8": torch.int8,
    "int16": torch.int16,
    "float16": torch.float16,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
PASSTHROUGH = "passthrough"
CODE_GROUPS = ("attn", "mlp", "embed")  # groups whose integer codes per-group compression collects
ROW_ORDER = "row_order"
_LAYER = re.compile(r"^blocks\.\d+\.")


class ArtifactFormatError(ValueError):
    """The file is not a readable lit_golf artifact (wrong magic, truncated, corrupt, unknown format)."""


@dataclass
class StoredTensor:
    """One tensor as stored: its scheme's parts (`data`, optional `scale`, any `extra` parts).

    `data` is the integer codes of a quantized tensor, or the tensor itself for 'passthrough'. Without
    `scheme`, a tensor with a scale is 'gptq' and one without is 'passthrough' (format 1's two kinds).
    """

    group: str
    data: torch.Tensor
    scale: torch.Tensor | None = None
    bits: int | None = None
    scheme: str = ""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.scheme:
            self.scheme = "gptq" if self.scale is not None else PASSTHROUGH

    @classmethod
    def from_parts(cls, scheme: str, group: str, parts: dict[str, torch.Tensor], bits: int | None = None):
        rest = dict(parts)
        data, scale = rest.pop("data"), rest.pop("scale", None)
        return cls(group, data, scale, bits, scheme, rest)

    @property
    def quantized(self) -> bool:
        return self.scheme != PASSTHROUGH

    @property
    def parts(self) -> dict[str, torch.Tensor]:
        """Every stored tensor of this one by part name, as the scheme's `dequantize` takes them."""
        return {"data": self.data, **({"scale": self.scale} if self.scale is not None else {}), **self.extra}


def role(name: str) -> str:
    """The tensor's role across layers: 'blocks.3.mlp.up' -> 'mlp.up', 'tok_emb.weight' -> 'tok_emb'."""
    return _LAYER.sub("", name).removesuffix(".weight")


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


def _zpaq():
    try:
        import zpaq
    except ImportError:
        raise ModuleNotFoundError(
            "per-group ZPAQ compression needs the zpaq package: pip install zpaq (or pip install 'lit_golf[zpaq]')"
        ) from None
    return zpaq


def compress(data: bytes, compressor: str, brotli_quality: int = 11, zpaq_level: int = 5) -> bytes:
    if compressor == "brotli":
        import brotli

        return brotli.compress(data, quality=brotli_quality)
    if compressor == "lzma":
        return lzma.compress(data, preset=9)
    if compressor == "zpaq":
        return _zpaq().compress(data, level=zpaq_level, threads=1)  # one thread: the same bytes on any machine
    raise ValueError(f"unknown compressor {compressor!r}; choose one of {list(SECTION_COMPRESSORS)}")


def decompress(data: bytes, compressor: str) -> bytes:
    if compressor == "brotli":
        import brotli

        return brotli.decompress(data)
    if compressor == "zpaq":
        return _zpaq().decompress(data)
    return lzma.decompress(data)


def nearest_neighbour_order(rows: torch.Tensor) -> torch.Tensor:
    """Greedy row order: start at row 0, always go to the unvisited row nearest in L1 (ties: lowest index).

    Neighbouring rows then differ little, which a context-mixing compressor turns into bytes. Integer
    arithmetic makes the order exact on any device; runs on CUDA when there is one (O(rows^2 * cols)).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    matrix = rows.to(device=device, dtype=torch.int32)
    n = matrix.shape[0]
    index = torch.arange(n, device=device)
    visited = torch.zeros(n, dtype=torch.bool, device=device)
    order = torch.zeros(n, dtype=torch.int64, device=device)
    visited[0] = True
    current = order[0]
    for i in range(1, n):
        key = (matrix - matrix[current]).abs_().sum(dim=1, dtype=torch.int64) * n + index
        current = torch.argmin(key.masked_fill_(visited, torch.iinfo(torch.int64).max))
        order[i] = current
        visited[current] = True
    return order.cpu()


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


class _Sections:
    """Raw bytes and compressor of each section, in the order the sections are first written."""

    def __init__(self) -> None:
        self.buffers: dict[str, io.BytesIO] = {}
        self.compressors: dict[str, str] = {}
        self.holds: dict[str, list[int]] = {}  # section -> [tensors, elements] whose `data` part it holds

    def append(self, section: str, compressor: str, t: torch.Tensor, transposed: bool = False) -> dict:
        buf = self.buffers.setdefault(section, io.BytesIO())
        self.compressors.setdefault(section, compressor)
        entry = {"section": section, "offset": buf.tell(), "dtype": _dtype_name(t), "shape": list(t.shape)}
        if transposed:
            entry["transposed"] = True
        buf.write(_tensor_bytes(t.T if transposed else t))
        return entry


def _is_code_matrix(stored: StoredTensor) -> bool:
    return stored.quantized and stored.group in CODE_GROUPS and stored.data.dtype == torch.int8 \
        and stored.data.dim() == 2


def _section_layout(
    tensors: dict[str, StoredTensor], compressor: str, zpaq_level: int | None, reorder_roles: tuple[str, ...]
) -> tuple[_Sections, list[dict]]:
    """Every part's bytes in its section (see the module docstring) and the tensor index."""
    sections, index = _Sections(), []
    for name, stored in tensors.items():
        data = stored.data
        if zpaq_level is not None and _is_code_matrix(stored):
            order = None
            if role(name) in reorder_roles:
                order = nearest_neighbour_order(data)
                data = data[order]
                order = sections.append(ROW_ORDER, compressor,
                                        order.to(torch.int16 if len(order) <= 2**15 else torch.int32))
            part = sections.append(role(name), "zpaq", data, transposed=True)
            if order is not None:
                part["row_order"] = order
        else:
            part = sections.append(stored.group if stored.quantized else PASSTHROUGH, compressor, data)
        holds = sections.holds.setdefault(part["section"], [0, 0])
        holds[0] += 1
        holds[1] += data.numel()
        index.append({"name": name, "scheme": stored.scheme, "group": stored.group, "bits": stored.bits,
                      "parts": {"data": part}})
    for entry in index:  # scales after all codes of the section
        stored = tensors[entry["name"]]
        if stored.scale is not None:
            entry["parts"]["scale"] = sections.append(stored.group, compressor, stored.scale)
    for entry in index:  # further parts (LQER factors) in a section of their scheme
        for part, t in tensors[entry["name"]].extra.items():
            entry["parts"][part] = sections.append(entry["scheme"], compressor, t)
    return sections, index


def _shuffle_stride(compressor: str) -> int:
    return 1 if compressor == "zpaq" else SHUFFLE_STRIDE  # zpaq sections hold int8 codes only


def _piece_bytes(size: int, limit: int | None) -> int:
    """Length of the equal pieces (the last one shorter) that cut `size` bytes into as few as `limit` allows."""
    if limit is None or size <= limit:
        return size or 1
    pieces = -(-size // limit)
    return -(-size // pieces)


def _compress_sections(
    raws: dict[str, bytes], compressors: dict[str, str], brotli_quality: int, zpaq_level: int | None,
    zpaq_chunk_bytes: int | None = None,
) -> dict[str, list[bytes]]:
    """Brotli/lzma sections cut into `CHUNK_BYTES` pieces, ZPAQ sections into pieces of at most
    `zpaq_chunk_bytes` (None: whole); all compressed in one pool, and decompressed in one (`_read_sections`)."""
    pieces = []
    for name, raw in raws.items():
        step = _piece_bytes(len(raw), zpaq_chunk_bytes) if compressors[name] == "zpaq" else CHUNK_BYTES
        pieces += [(name, raw[i:i + step]) for i in range(0, len(raw), step)]

    def work(piece: tuple[str, bytes]) -> bytes:
        name, raw = piece
        stride = _shuffle_stride(compressors[name])
        return compress(byte_shuffle(raw, stride) if stride > 1 else raw, compressors[name], brotli_quality,
                        zpaq_level or 5)

    with ThreadPoolExecutor(max_workers=max(1, min(len(pieces), os.cpu_count() or 1))) as pool:
        out: dict[str, list[bytes]] = {name: [] for name in raws}
        for (name, _), chunk in zip(pieces, pool.map(work, pieces), strict=True):
            out[name].append(chunk)
    return out


@dataclass
class PartSize:
    """Bytes of one part of the artifact before (`raw`) and after (`compressed`) compression, and how many
    tensors (and their elements) have their main part (`data`) there."""

    raw: int
    compressed: int
    tensors: int = 0
    params: int = 0


def pack(
    header: dict, tensors: dict[str, StoredTensor], compressor: str = "brotli", brotli_quality: int = 11,
    zpaq_level: int | None = None, reorder_roles: tuple[str, ...] = (), zpaq_chunk_bytes: int | None = None,
) -> tuple[bytes, dict[str, PartSize]]:
    """Artifact bytes for `tensors` plus JSON-able `header` metadata, and the size of each part.

    `compressor` compresses the header and every section but the code sections; `zpaq_level` (None: off)
    turns on per-group ZPAQ code sections, `reorder_roles` names the roles whose rows are reordered, and
    `zpaq_chunk_bytes` (None: whole) cuts longer code sections into separately compressed pieces.
    The parts are 'header' (preamble + compressed header) and one per section; their compressed sizes
    add up to the length of the artifact. Output is deterministic for the same inputs.
    """
    if compressor not in COMPRESSOR_IDS:
        raise ValueError(f"unknown compressor {compressor!r}; choose one of {sorted(COMPRESSOR_IDS)}")
    layout, index = _section_layout(tensors, compressor, zpaq_level, tuple(reorder_roles))
    raws = {name: buf.getvalue() for name, buf in layout.buffers.items()}
    sections, blobs = [], []
    compressed = _compress_sections(raws, layout.compressors, brotli_quality, zpaq_level, zpaq_chunk_bytes)
    for name, chunks in compressed.items():
        codec = layout.compressors[name]
        sections.append({"name": name, "compressor": codec, "shuffle": _shuffle_stride(codec),
                         "raw_bytes": len(raws[name]), "chunks": [[len(c), zlib.crc32(c)] for c in chunks]})
        blobs.append(b"".join(chunks))
    meta = dict(header, format_version=FORMAT_VERSION, compressor=compressor, sections=sections, tensors=index)
    header_json = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    header_blob = compress(header_json, compressor, brotli_quality)
    preamble = PREAMBLE.pack(MAGIC, FORMAT_VERSION, COMPRESSOR_IDS[compressor], 0, len(header_blob),
                             zlib.crc32(header_blob))
    sizes = {"header": PartSize(len(preamble) + len(header_json), len(preamble) + len(header_blob))}
    for section, blob in zip(sections, blobs, strict=True):
        sizes[section["name"]] = PartSize(section["raw_bytes"], len(blob), *layout.holds.get(section["name"], (0, 0)))
    return preamble + header_blob + b"".join(blobs), sizes


# ----------------------------------------------------------------------------- unpacking
def _read_preamble(blob: bytes, source: str) -> tuple[str, int, int]:
    if len(blob) < PREAMBLE.size:
        raise ArtifactFormatError(
            f"{source}: truncated artifact ({len(blob)} bytes, shorter than the {PREAMBLE.size}-byte preamble)"
        )
    magic, version, compressor_id, _, header_len, header_crc = PREAMBLE.unpack_from(blob)
    if magic != MAGIC:
        raise ArtifactFormatError(
            f"{source}: not a lit_golf artifact (bad magic bytes); pass the artifact.ptz written by the export"
        )
    if version not in READABLE_VERSIONS:
        raise ArtifactFormatError(
            f"{source}: artifact format version {version}, this lit_golf reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; load it with the lit_golf version that wrote it"
        )
    names = {v: k for k, v in COMPRESSOR_IDS.items()}
    if compressor_id not in names:
        raise ArtifactFormatError(f"{source}: corrupt artifact (unknown compressor id {compressor_id})")
    end = PREAMBLE.size + header_len
    if len(blob) < end:
        raise ArtifactFormatError(f"{source}: truncated artifact ({len(blob)} bytes, header needs {end})")
    if zlib.crc32(blob[PREAMBLE.size:end]) != header_crc:
        raise ArtifactFormatError(f"{source}: corrupt artifact (header checksum mismatch)")
    return names[compressor_id], end, version


def _decode_header(blob: bytes, compressor: str, source: str) -> dict:
    try:
        return json.loads(decompress(blob, compressor))
    except Exception as exc:
        raise ArtifactFormatError(f"{source}: corrupt artifact (unreadable header: {exc})") from None


def _from_format_1(meta: dict) -> dict:
    """A format-1 header in format-2 terms: one compressor, shuffled sections, GPTQ or passthrough tensors."""
    for section in meta["sections"]:
        section.update(compressor=meta["compressor"], shuffle=SHUFFLE_STRIDE)
    tensors = []
    for entry in meta["tensors"]:
        parts = {part: {**entry[part], "section": entry["section"]} for part in ("data", "scale") if part in entry}
        tensors.append({"name": entry["name"], "group": entry["group"], "bits": entry["bits"],
                        "scheme": "gptq" if "scale" in parts else PASSTHROUGH, "parts": parts})
    return {**meta, "tensors": tensors}


def section_chunks(blob: bytes, meta: dict) -> Iterator[tuple[dict, bytes, int]]:
    """(section, compressed chunk, its crc32) for every chunk of artifact `blob`, in file order: the chunks fill
    the file after the header (`_read_sections` checks that the lengths add up first)."""
    pos = len(blob) - sum(length for section in meta["sections"] for length, _ in section["chunks"])
    for section in meta["sections"]:
        for length, crc in section["chunks"]:
            yield section, blob[pos:pos + length], crc
            pos += length


def _read_sections(blob: bytes, start: int, meta: dict, source: str) -> dict[str, bytes]:
    expected = start + sum(c[0] for s in meta["sections"] for c in s["chunks"])
    if len(blob) != expected:
        state = "truncated" if len(blob) < expected else "corrupt"
        raise ArtifactFormatError(f"{source}: {state} artifact ({len(blob)} bytes, expected {expected})")
    for section in meta["sections"]:
        if section["compressor"] not in SECTION_COMPRESSORS:
            raise ArtifactFormatError(
                f"{source}: section {section['name']!r} uses unknown compressor {section['compressor']!r}; this "
                f"lit_golf reads {', '.join(SECTION_COMPRESSORS)}"
            )
    pieces = []
    for section, chunk, crc in section_chunks(blob, meta):
        if zlib.crc32(chunk) != crc:
            raise ArtifactFormatError(f"{source}: corrupt artifact (checksum mismatch in section {section['name']!r})")
        pieces.append((section, chunk))

    def work(piece: tuple[dict, bytes]) -> bytes:
        section, chunk = piece
        raw = decompress(chunk, section["compressor"])
        return byte_unshuffle(raw, section["shuffle"]) if section["shuffle"] > 1 else raw

    with ThreadPoolExecutor(max_workers=max(1, min(len(pieces), os.cpu_count() or 1))) as pool:
        parts: dict[str, list[bytes]] = {s["name"]: [] for s in meta["sections"]}
        for (section, _), raw in zip(pieces, pool.map(work, pieces), strict=True):
            parts[section["name"]].append(raw)
    raws = {}
    for section in meta["sections"]:
        raw = b"".join(parts[section["name"]])
        if len(raw) != section["raw_bytes"]:
            raise ArtifactFormatError(f"{source}: corrupt artifact (section {section['name']!r} has wrong length)")
        raws[section["name"]] = raw
    return raws


def _tensor_from(raws: dict[str, bytes], entry: dict, source: str) -> torch.Tensor:
    """One part: its bytes, un-transposed and put back in row order when it was stored that way."""
    dtype = DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ArtifactFormatError(f"{source}: corrupt artifact (unknown dtype {entry['dtype']!r})")
    raw = raws.get(entry["section"])
    if raw is None:
        raise ArtifactFormatError(f"{source}: corrupt artifact (no section {entry['section']!r})")
    shape = entry["shape"]
    numel = int(np.prod(shape, dtype=np.int64))
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if entry["offset"] + nbytes > len(raw):
        raise ArtifactFormatError(f"{source}: corrupt artifact (tensor data past the end of its section)")
    storage_dtype = torch.int16 if dtype == torch.bfloat16 else dtype
    flat = torch.frombuffer(bytearray(raw[entry["offset"]:entry["offset"] + nbytes]), dtype=storage_dtype)
    if not entry.get("transposed"):
        return flat.view(dtype).reshape(shape)
    rows = flat.view(dtype).reshape(shape[::-1]).T
    if "row_order" not in entry:
        return rows.contiguous()
    order = _tensor_from(raws, entry["row_order"], source).long()
    if not torch.equal(torch.sort(order).values, torch.arange(shape[0])):
        raise ArtifactFormatError(f"{source}: corrupt artifact (a row order is not a permutation)")
    out = torch.empty_like(rows)
    out[order] = rows
    return out


def unpack(blob: bytes, source: str = "<artifact>") -> tuple[dict, dict[str, StoredTensor]]:
    """(header, tensors) from artifact bytes; any damage raises `ArtifactFormatError` naming `source`."""
    compressor, header_end, version = _read_preamble(blob, source)
    meta = _decode_header(blob[PREAMBLE.size:header_end], compressor, source)
    try:
        meta = _from_format_1(meta) if version == 1 else meta
        raws = _read_sections(blob, header_end, meta, source)
        tensors = {}
        for entry in meta["tensors"]:
            parts = {name: _tensor_from(raws, part, source) for name, part in entry["parts"].items()}
            tensors[entry["name"]] = StoredTensor.from_parts(entry["scheme"], entry["group"], parts, entry["bits"])
    except (KeyError, TypeError) as exc:
        raise ArtifactFormatError(f"{source}: corrupt artifact (malformed header: missing or bad {exc})") from None
    return meta, tensors


def write_artifact(path: str | Path, blob: bytes) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written artifact behind."""
    return write_atomic(path, blob)


def read_artifact(path: str | Path) -> tuple[dict, dict[str, StoredTensor]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"artifact {path} does not exist; write one with `lit-golf export` or a fit run")
    return unpack(path.read_bytes(), str(path))
