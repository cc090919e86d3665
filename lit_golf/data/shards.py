"""The upstream token-shard format and the data-directory layout.

A shard is a 256-entry little-endian int32 header (magic 20240520, version 1, token count, zeros)
followed by that many little-endian uint16 token ids. Every document starts with BOS (id 1) and
there is no EOS, so document boundaries are simply the BOS positions.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from lit_golf.files import atomic_path

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
BOS_ID = 1
SPLITS = ("train", "val")
MANIFEST_NAME = "manifest.json"  # what `prepare-data` records about a dataset, beside its shards
HUB_MANIFEST = "hub_manifest.json"  # `download`'s copy of the hub repository's manifest


class ShardError(ValueError):
    """A shard file is malformed or missing; the message names the file and the fix."""


def dataset_dir(data_dir: str | Path, vocab_size: int) -> Path:
    return Path(data_dir) / "datasets" / f"fineweb10B_sp{vocab_size}"


def tokenizer_filename(vocab_size: int) -> str:
    return f"fineweb_{vocab_size}_bpe.model"


def tokenizer_path(data_dir: str | Path, vocab_size: int) -> Path:
    return Path(data_dir) / "tokenizers" / tokenizer_filename(vocab_size)


def manifest_path(data_dir: str | Path, vocab_size: int) -> Path:
    """`manifest.json` of a dataset directory (written by `prepare-data`; optional)."""
    return dataset_dir(data_dir, vocab_size) / MANIFEST_NAME


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardError(
            f"manifest {path} is not readable JSON ({err}): restore it, or re-run `lit-golf prepare-data`"
        ) from None
    return manifest if isinstance(manifest, dict) else {}


def manifest_tokenizer_sha256(path: str | Path) -> str | None:
    """sha256 of the tokenizer a dataset manifest records, or None (no manifest, or it records none).

    `prepare-data` writes `"tokenizer": {"path": ..., "sha256": ...}`; other manifests that name the
    hash anywhere in their `"tokenizer"` entry (e.g. `"fineweb_8192_bpe.model sha256 4e97..."`) count too.
    """
    manifest = _read_manifest(Path(path))
    if manifest is None:
        return None
    entry = manifest.get("tokenizer")
    found = re.search(r"\b[0-9a-fA-F]{64}\b", json.dumps(entry)) if entry is not None else None
    return found.group(0).lower() if found else None


def manifest_is_caseops(path: str | Path) -> bool:
    """Whether a dataset manifest says its tokens are CaseOps (`prepare-data --caseops` records a "caseops" entry)."""
    return "caseops" in (_read_manifest(Path(path)) or {})


def shard_name(split: str, index: int) -> str:
    return f"fineweb_{split}_{index:06d}.bin"


def shard_glob(split: str) -> str:
    """Token shards of `split` only: a digit follows the split name, so `fineweb_val_bytes_*` sidecars never match."""
    return f"fineweb_{split}_[0-9]*.bin"


SIDECAR_SPLIT = "val_bytes"


def sidecar_path(shard: str | Path) -> Path:
    """The byte sidecar of a validation shard: `fineweb_val_NNNNNN.bin` -> `fineweb_val_bytes_NNNNNN.bin`."""
    shard = Path(shard)
    return shard.with_name(shard.name.replace("fineweb_val_", f"fineweb_{SIDECAR_SPLIT}_", 1))


def read_sidecar(shard: str | Path) -> np.ndarray | None:
    """Per-token original byte counts of validation shard `shard` (uint16, same length), or None without a sidecar.

    A sidecar (written by `prepare-data --caseops`) has the shard format, one count per token of its
    shard: the UTF-8 bytes of original text that token stands for (operators and BOS count 0).
    """
    path = sidecar_path(shard)
    if not path.is_file():
        return None
    counts = read_shard(path)
    tokens = read_header(shard)
    if counts.size != tokens:
        raise ShardError(
            f"byte sidecar {path} holds {counts.size} counts but its shard {Path(shard).name} holds {tokens} tokens: "
            "the two come from different runs; re-run `lit-golf prepare-data --caseops` (with --overwrite)"
        )
    return counts


def present_shards(data_dir: str | Path, split: str, vocab_size: int) -> list[Path]:
    """The shards of one split that are there, sorted by name; none is an empty list, not an error (a record
    written after the work must not fail on an eval-only data dir)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return sorted(dataset_dir(data_dir, vocab_size).glob(shard_glob(split)))


def find_shards(data_dir: str | Path, split: str, vocab_size: int) -> list[Path]:
    """All shards of one split, sorted by name; an error suggests how to get data when none exist."""
    files = present_shards(data_dir, split, vocab_size)
    directory = dataset_dir(data_dir, vocab_size)
    pattern = directory / f"fineweb_{split}_*.bin"  # as messages show it
    if not files and any(directory.glob(shard_glob("train" if split == "val" else "val"))):
        if split == "val":
            raise ShardError(
                f"the validation split in {pattern.parent} is empty (train shards but no {pattern.name}; "
                "prepare-data ran with --num-val-docs 0?): re-run `lit-golf prepare-data` with --num-val-docs N > 0 "
                "(and --overwrite)"
            )
        raise ShardError(
            f"the training split in {pattern.parent} is empty (val shards but no {pattern.name}): re-run "
            "`lit-golf prepare-data` with --num-val-docs below the number of documents (and --overwrite), "
            f"or `lit-golf download --variant sp{vocab_size} --train-shards N`"
        )
    if not files:
        raise ShardError(
            f"no files match {pattern}: run `lit-golf download --variant sp{vocab_size}` or "
            "`lit-golf prepare-data`, or pass the right --data.data_dir / --model.gpt.vocab_size"
        )
    return files


def _header(tokens: int) -> np.ndarray:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens)
    return header


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Write `tokens` (any integer array with ids < 65536) atomically as one shard."""
    tokens = np.asarray(tokens)
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > np.iinfo(TOKEN_DTYPE).max):
        raise ShardError(f"cannot write {path}: token ids must lie in 0..65535 to fit the uint16 shard format")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial, open(partial, "wb") as f:
        f.write(_header(tokens.size).tobytes())
        f.write(tokens.astype(TOKEN_DTYPE, copy=False).tobytes())


def read_header(path: str | Path) -> int:
    """Validate a shard's header and size against each other; return its token count."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"shard {path} does not exist: run `lit-golf download` or `lit-golf prepare-data`")
    size = path.stat().st_size
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header.size < HEADER_INTS:
        raise ShardError(
            f"shard {path} is truncated ({size} bytes, shorter than its {HEADER_BYTES}-byte header): "
            "delete it and download or prepare it again"
        )
    if int(header[0]) != SHARD_MAGIC:
        raise ShardError(
            f"shard {path} has wrong magic {int(header[0])} (expected {SHARD_MAGIC}): it is not a token shard; "
            "regenerate it with `lit-golf prepare-data`"
        )
    if int(header[1]) != SHARD_VERSION:
        raise ShardError(
            f"shard {path} has unsupported version {int(header[1])} (expected {SHARD_VERSION}): "
            "regenerate it with `lit-golf prepare-data`"
        )
    tokens = int(header[2])
    expected = HEADER_BYTES + tokens * TOKEN_DTYPE.itemsize
    if tokens < 0 or size != expected:
        raise ShardError(
            f"shard {path} is truncated or corrupt: header declares {tokens} tokens ({expected} bytes) "
            f"but the file has {size} bytes; delete it and download or prepare it again"
        )
    return tokens


def read_shard(path: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map a validated shard as a read-only uint16 array.

    With `vocab_size`, also checks (one vectorized pass) that no token id is out of range, which
    would otherwise surface later as an opaque embedding index error on the GPU.
    """
    tokens = read_header(path)
    if tokens == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    data = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(tokens,))
    if vocab_size is not None:
        top = int(data.max())
        if top >= vocab_size:
            raise ShardError(
                f"shard {path} contains token id {top} >= vocab_size={vocab_size}: it was made with a larger "
                "tokenizer; pass the matching --model.gpt.vocab_size or re-prepare the data"
            )
    return data
