"""`lit-golf prepare-data`: tokenize a document corpus into upstream-format shards.

Every document becomes `[BOS] + sp.encode(text)`; the first `--num-val-docs` documents form the
validation stream and the rest the training stream; `--train-tokenizer` trains on training documents
only, so no validation text leaks into the tokenizer. Each stream is cut into shards of exactly
`--shard-tokens` tokens (a document may continue in the next shard), which reproduces the
published FineWeb export token for token when given the same documents and tokenizer.

`--caseops` tokenizes the CaseOps form of each document's normalized text (`lit_golf.data.caseops`) and
writes a byte sidecar beside each validation shard, checked per document against the normalized text.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
import json
import lzma
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import sentencepiece as spm
from jsonargparse import ArgumentParser
from tqdm import tqdm

from lit_golf.data.shards import (
    BOS_ID,
    HUB_MANIFEST,
    MANIFEST_NAME,
    SIDECAR_SPLIT,
    SPLITS,
    dataset_dir,
    file_sha256,
    shard_glob,
    shard_name,
    tokenizer_filename,
    tokenizer_path,
    write_shard,
)
from lit_golf.tool_output import disk_errors_as_one_line, output_folder, replace_folder
from lit_golf.tool_parser import tool_parser

DEFAULT_NUM_VAL_DOCS = 50_000
DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_TOKENIZER_TRAIN_DOCS = 100_000
CHUNK_DOCS = 256
MAX_VOCAB = 1 << 16
COMPRESSED_SUFFIXES = {".gz": gzip.open, ".xz": lzma.open}
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


class PrepareError(ValueError):
    """Bad input to prepare-data; the message names the file or option and the fix."""


# ---------------------------------------------------------------------------------------------
# Reading documents


def open_text(path: Path) -> TextIO:
    opener = COMPRESSED_SUFFIXES.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8")


def _document_format(path: Path) -> str:
    name = path.name[: -len(path.suffix)] if path.suffix in COMPRESSED_SUFFIXES else path.name
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".txt"):
        return "txt"
    raise PrepareError(
        f"input {path} has an unknown format: use .jsonl (one JSON object with a text field per line) "
        "or .txt (one document per line), optionally compressed as .gz or .xz"
    )


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    fmt = _document_format(path)
    line_no = 0
    try:
        with open_text(path) as f:
            for line_no, line in enumerate(f, start=1):
                if fmt == "txt":
                    line = line.rstrip("\n")
                    if line:
                        yield line
                    continue
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[text_field]
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    problem = f"no {text_field!r} field" if isinstance(err, KeyError) else err
                    raise PrepareError(
                        f"{path}:{line_no} is not a JSON object with a {text_field!r} string ({problem}): "
                        "fix the line or pass --text-field"
                    ) from None
                if not isinstance(text, str):
                    raise PrepareError(f"{path}:{line_no} field {text_field!r} is not a string: fix the line")
                yield text
    except UnicodeDecodeError:
        bad_line, err = _first_undecodable_line(path)
        raise PrepareError(
            f"{path}:{bad_line or line_no + 1} is not valid UTF-8 ({err}): fix or drop the line, or convert the "
            "file to UTF-8"
        ) from None
    except (OSError, EOFError, lzma.LZMAError) as err:
        kind = {".gz": "gzip", ".xz": "xz"}.get(path.suffix, "plain text")
        where = f"after line {line_no}" if line_no else "at its start"
        raise PrepareError(
            f"{path} cannot be read as {kind} {where} ({str(err).strip() or type(err).__name__}): "
            "the file is corrupt or truncated, or its suffix does not match its compression"
        ) from None


def _first_undecodable_line(path: Path) -> tuple[int | None, str]:
    """Line number (1-based) and reason of the first line that is not UTF-8; only called after a decode error,
    since text mode decodes whole blocks ahead of the line being read."""
    opener = COMPRESSED_SUFFIXES.get(path.suffix, open)
    with opener(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return line_no, f"{err.reason} at byte {err.start}"
    return None, "incomplete multi-byte character at the end of the file"


def iter_documents(paths: Iterable[Path], text_field: str = "text", max_docs: int | None = None) -> Iterator[str]:
    """Documents of all inputs in order, at most `max_docs` of them."""
    count = 0
    for path in paths:
        for text in _read_file(path, text_field):
            if max_docs is not None and count >= max_docs:
                return
            yield text
            count += 1


# ---------------------------------------------------------------------------------------------
# Tokenizer


def sentencepiece_trainer_options(vocab_size: int, user_defined_symbols: tuple[str, ...] = ()) -> dict:
    """The upstream FineWeb tokenizer recipe (BPE, byte fallback, no dummy prefix, fixed special ids);
    `user_defined_symbols` (the CaseOps operators) are always pieces of their own."""
    return dict(
        user_defined_symbols=list(user_defined_symbols),
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.999,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="nmt_nfkc",
        add_dummy_prefix=False,
        pad_id=0,
        bos_id=BOS_ID,
        eos_id=2,
        unk_id=3,
        hard_vocab_limit=False,
    )


def train_tokenizer(
    docs: Iterable[str], vocab_size: int, model_path: Path, user_defined_symbols: tuple[str, ...] = ()
) -> Path:
    """Train a SentencePiece BPE model on `docs` and write it to `model_path` (plus its .vocab)."""
    reading_errors: list[PrepareError] = []

    def sentences() -> Iterator[str]:
        try:
            for doc in docs:
                text = doc.replace("\x00", " ").strip()
                if text:
                    yield text
        except PrepareError as err:  # SentencePiece would bury it in its own RuntimeError
            reading_errors.append(err)
            raise

    model_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_path.parent) as tmp:
        prefix = Path(tmp) / "sp"
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences(),
                model_prefix=str(prefix),
                minloglevel=2,
                **sentencepiece_trainer_options(vocab_size, user_defined_symbols),
            )
        except RuntimeError as err:
            if reading_errors:
                raise reading_errors[0] from None
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PrepareError(
                f"SentencePiece could not train a {vocab_size}-token tokenizer on the training documents ({reason}): "
                "pass more text (more documents, or a larger --tokenizer-train-docs)"
            ) from None
        actual = int(spm.SentencePieceProcessor(model_file=f"{prefix}.model").vocab_size())
        if actual != vocab_size:
            raise PrepareError(
                f"the training documents only support a vocabulary of {actual}, not --vocab-size {vocab_size}: "
                "pass a smaller --vocab-size or more text (--tokenizer-train-docs)"
            )
        os.replace(f"{prefix}.model", model_path)
        os.replace(f"{prefix}.vocab", model_path.with_suffix(".vocab"))
    return model_path


sha256_of = file_sha256


# ---------------------------------------------------------------------------------------------
# Parallel tokenization

_worker_sp: spm.SentencePieceProcessor | None = None
_worker_sidecar = None  # caseops.SidecarCounter when the stream is CaseOps


def _init_worker(model_path: str, caseops: bool = False) -> None:
    global _worker_sp, _worker_sidecar
    _worker_sp = spm.SentencePieceProcessor(model_file=model_path)
    _worker_sidecar = None  # in-process runs (workers=1) reuse these globals: reset both
    if caseops:
        from lit_golf.data.caseops import SidecarCounter

        _worker_sidecar = SidecarCounter(_worker_sp)


def _concatenate_documents(encoded: list[list[int]]) -> np.ndarray:
    out = np.empty(sum(len(ids) for ids in encoded) + len(encoded), dtype=np.uint16)
    pos = 0
    for ids in encoded:
        out[pos] = BOS_ID
        out[pos + 1 : pos + 1 + len(ids)] = ids
        pos += 1 + len(ids)
    return out


def encode_chunk(texts: list[str], split: str = "train") -> tuple[np.ndarray, int, np.ndarray | None]:
    """`[BOS] + ids` of each text, concatenated as uint16, the texts' UTF-8 byte count and, for CaseOps
    validation, the byte sidecar of the tokens.

    CaseOps tokenizes the transform of each text's normalized form (`caseops.encode_document`) and
    counts the normalized text's bytes, the bytes bits-per-byte is scored on; every validation document's
    sidecar must sum to exactly that, or the chunk is refused.
    """
    if _worker_sidecar is None:
        encoded = _worker_sp.encode(texts)
        return _concatenate_documents(encoded), sum(len(t.encode("utf-8")) for t in texts), None
    from lit_golf.data.caseops import encode_document

    encoded, doc_bytes = [], []
    for text in texts:
        ids, normalized = encode_document(_worker_sp, text)
        encoded.append(ids)
        doc_bytes.append(len(normalized.encode("utf-8")))
    tokens = _concatenate_documents(encoded)
    if split != "val":
        return tokens, sum(doc_bytes), None
    sidecar = _worker_sidecar(tokens)
    starts = np.flatnonzero(tokens == BOS_ID)
    counted = np.add.reduceat(sidecar, starts)
    wrong = np.flatnonzero(counted != np.asarray(doc_bytes))
    if wrong.size:
        i = int(wrong[0])
        raise PrepareError(
            f"CaseOps byte sidecar of a validation document ({texts[i][:40]!r}...) sums to {int(counted[i])} bytes, "
            f"but its normalized text has {doc_bytes[i]}: the transform does not survive this tokenizer's normalizer; "
            "report the document"
        )
    return tokens, sum(doc_bytes), sidecar.astype(np.uint16)


def split_into_chunks(docs: Iterable[str], num_val_docs: int, chunk_docs: int = CHUNK_DOCS):
    """Yield `(split, texts)` chunks in document order; no chunk straddles the val/train boundary."""
    chunk: list[str] = []
    split = "val" if num_val_docs > 0 else "train"
    for index, text in enumerate(docs):
        doc_split = "val" if index < num_val_docs else "train"
        if chunk and (doc_split != split or len(chunk) == chunk_docs):
            yield split, chunk
            chunk = []
        split = doc_split
        chunk.append(text)
    if chunk:
        yield split, chunk


def encode_in_order(chunks: Iterable[tuple[str, list[str]]], model_path: Path, workers: int, caseops: bool = False):
    """Yield `(split, n_docs, tokens, n_bytes, sidecar)` per chunk, in input order.

    At most `2 * workers` chunks are in flight, so memory stays bounded on corpora of any size
    (`Pool.imap` would read the whole input ahead).
    """
    if workers <= 1:
        _init_worker(str(model_path), caseops)
        for split, texts in chunks:
            yield (split, len(texts), *encode_chunk(texts, split))
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(str(model_path), caseops)) as pool:
        pending: deque = deque()
        for split, texts in chunks:
            pending.append((split, len(texts), pool.apply_async(encode_chunk, (texts, split))))
            if len(pending) >= 2 * workers:
                split_done, n_docs, result = pending.popleft()
                yield (split_done, n_docs, *result.get())
        while pending:
            split_done, n_docs, result = pending.popleft()
            yield (split_done, n_docs, *result.get())


# ---------------------------------------------------------------------------------------------
# Writing shards


@dataclass
class SplitStats:
    docs: int = 0
    tokens: int = 0
    bytes: int = 0
    shards: int = 0


class ShardSink:
    """Accumulates one split's token stream and writes it as shards of exactly `shard_tokens`."""

    def __init__(self, directory: Path, split: str, shard_tokens: int):
        self.directory, self.split = directory, split
        self.buffer = np.empty(shard_tokens, dtype=np.uint16)
        self.fill = 0
        self.stats = SplitStats()

    def add(self, tokens: np.ndarray, docs: int, text_bytes: int) -> None:
        self.stats.docs += docs
        self.stats.tokens += tokens.size
        self.stats.bytes += text_bytes
        pos = 0
        while pos < tokens.size:
            take = min(self.buffer.size - self.fill, tokens.size - pos)
            self.buffer[self.fill : self.fill + take] = tokens[pos : pos + take]
            self.fill += take
            pos += take
            if self.fill == self.buffer.size:
                self.flush()

    def flush(self) -> None:
        if self.fill:
            write_shard(self.directory / shard_name(self.split, self.stats.shards), self.buffer[: self.fill])
            self.stats.shards += 1
            self.fill = 0


# ---------------------------------------------------------------------------------------------
# The command


def _tokenizer_vocab(path: Path) -> int:
    if not path.is_file():
        raise PrepareError(f"tokenizer {path} does not exist: pass an existing --tokenizer or use --train-tokenizer")
    try:
        return int(spm.SentencePieceProcessor(model_file=str(path)).vocab_size())
    except (RuntimeError, OSError):
        raise PrepareError(f"tokenizer {path} is not a SentencePiece model: pass a .model file") from None


def _target_vocab(args: argparse.Namespace) -> int:
    """Vocabulary of the tokenizer to be used, known before anything is written."""
    if args.train_tokenizer:
        return args.vocab_size
    vocab = _tokenizer_vocab(Path(args.tokenizer))
    if args.vocab_size is not None and args.vocab_size != vocab:
        raise PrepareError(
            f"tokenizer {args.tokenizer} has vocab {vocab} but --vocab-size is {args.vocab_size}: drop --vocab-size "
            "or pass the matching tokenizer"
        )
    if vocab > MAX_VOCAB:
        raise PrepareError(f"tokenizer {args.tokenizer} has vocab {vocab}: shards store uint16 ids (<= {MAX_VOCAB})")
    return vocab


def _too_few_documents(inputs: list[Path], count: int, num_val_docs: int) -> PrepareError:
    """The error for inputs that leave no training document: empty, or all of them kept for validation."""
    names = f"input {inputs[0]}" if len(inputs) == 1 else f"the {len(inputs)} inputs ({', '.join(map(str, inputs))})"
    if count == 0:
        return PrepareError(
            f"{names} hold{'s' if len(inputs) == 1 else ''} no documents: pass --input files with text "
            "(.jsonl: one JSON object with a text field per line; .txt: one document per line)"
        )
    return PrepareError(
        f"{names} hold{'s' if len(inputs) == 1 else ''} {count} document{'s' if count != 1 else ''} and "
        f"--num-val-docs {num_val_docs} keeps {'all of them' if count > 1 else 'it'} for validation, leaving none "
        f"for training: pass --num-val-docs below {count} (or more documents)"
    )


def _training_documents(args: argparse.Namespace, inputs: list[Path]) -> Iterator[str]:
    """The documents after the first `--num-val-docs` (the training split), at most `--tokenizer-train-docs`.

    Reads through the validation documents first, so an input that leaves no training document is
    refused here, before SentencePiece starts.
    """
    docs = iter_documents(inputs, args.text_field, args.max_docs)
    val_seen = sum(1 for _ in itertools.islice(docs, args.num_val_docs))
    first = next(docs, None)
    if first is None:
        raise _too_few_documents(inputs, val_seen, args.num_val_docs)
    return itertools.islice(itertools.chain([first], docs), args.tokenizer_train_docs)


def _tokenizer_for(args: argparse.Namespace, inputs: list[Path], build: Path, vocab: int) -> Path:
    """The tokenizer the shards are made with: trained into the build folder `build` (on training documents
    only), or the given `--tokenizer`."""
    if args.train_tokenizer:
        docs = _training_documents(args, inputs)
        print(f"training a {vocab}-token SentencePiece BPE tokenizer on training documents", file=sys.stderr)
        model = build / "tokenizer" / tokenizer_filename(vocab)
        if not args.caseops:
            return train_tokenizer(docs, vocab, model)
        from lit_golf.data.caseops import OPERATORS, transform

        return train_tokenizer(map(transform, docs), vocab, model, OPERATORS)
    source = Path(args.tokenizer)
    if args.caseops:
        from lit_golf.data.caseops import CaseOpsError, operator_ids

        try:
            operator_ids(spm.SentencePieceProcessor(model_file=str(source)))
        except CaseOpsError as err:
            raise PrepareError(f"--caseops with tokenizer {source}: {err}") from None
    return source


def _tokenizer_files(model: Path, build: Path, target: Path) -> dict[Path, Path | None]:
    """The tokenizer files to rename onto `target` (`<out>/tokenizers/fineweb_<V>_bpe.model`) and its .vocab once
    the dataset is swapped in, copied into the build folder first; None for a .vocab of an earlier tokenizer
    that the new one lacks (removed, not left describing another model). Nothing when `model` is `target`."""
    if target.exists() and target.samefile(model):
        return {}
    output_folder(target.parent, "--out")
    files: dict[Path, Path | None] = {}
    for source, final in ((model, target), (model.with_suffix(".vocab"), target.with_suffix(".vocab"))):
        staged = build / "tokenizer" / final.name
        if source.is_file() and source != staged:
            staged.parent.mkdir(exist_ok=True)
            shutil.copyfile(source, staged)
        files[final] = staged if staged.is_file() else None
    return files


def _check_args(args: argparse.Namespace, inputs: list[Path]) -> None:
    seen: dict[tuple[int, int], Path] = {}
    for path in inputs:
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise PrepareError(f"input {path} {what}: pass an existing --input file")
        _document_format(path)
        identity = (path.stat().st_dev, path.stat().st_ino)
        if identity in seen:
            raise PrepareError(
                f"--input {path} is the same file as --input {seen[identity]}: its documents would be validation "
                "and training at once; pass each file once"
            )
        seen[identity] = path
    if args.train_tokenizer == (args.tokenizer is not None):
        raise PrepareError("pass exactly one of --tokenizer PATH or --train-tokenizer --vocab-size V")
    if args.train_tokenizer and args.vocab_size is None:
        raise PrepareError("--train-tokenizer needs --vocab-size V (e.g. 1024 or 8192)")
    if args.vocab_size is not None and not (260 < args.vocab_size <= MAX_VOCAB):
        raise PrepareError(
            f"--vocab-size {args.vocab_size} must exceed 260 (256 byte tokens + 4 specials) and fit uint16 shards "
            f"(<= {MAX_VOCAB})"
        )
    for name in ("num_val_docs", "shard_tokens", "workers", "max_docs", "tokenizer_train_docs"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "num_val_docs" else 1):
            raise PrepareError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.max_docs is not None and args.num_val_docs >= args.max_docs:
        raise PrepareError(
            f"--num-val-docs {args.num_val_docs} must be below --max-docs {args.max_docs}: otherwise no document "
            "is left for training"
        )


def _dataset_files(directory: Path) -> list[Path]:
    """Token shards and byte sidecars in `directory`."""
    return [p for split in (*SPLITS, SIDECAR_SPLIT) for p in directory.glob(shard_glob(split))]


def _refuse_existing(directory: Path, overwrite: bool) -> None:
    existing = _dataset_files(directory)
    if existing and not overwrite:
        raise PrepareError(
            f"{directory} already holds {len(existing)} shards: pass --overwrite to replace them or choose another --out"
        )


def _made_by_a_data_tool(entry: Path) -> bool:
    """Shards, sidecars and manifests, which a new dataset replaces; anything else in the folder is kept."""
    return entry.name in (MANIFEST_NAME, HUB_MANIFEST) or any(
        entry.match(shard_glob(split)) for split in (*SPLITS, SIDECAR_SPLIT)
    )


class ValCopies:
    """Counts training documents that are exact copies of a validation document: their text would be scored
    after the model trained on it (a corpus with duplicates, or overlapping inputs)."""

    def __init__(self, num_val_docs: int):
        self.num_val_docs, self.val_hashes, self.count = num_val_docs, set(), 0

    def __call__(self, docs: Iterable[str]) -> Iterator[str]:
        for index, text in enumerate(docs):
            digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            if index < self.num_val_docs:
                self.val_hashes.add(digest)
            elif digest in self.val_hashes:
                self.count += 1
            yield text


def _build(args: argparse.Namespace, inputs: list[Path], out: Path, build: Path, vocab_size: int) -> tuple[dict, Path]:
    """A trained tokenizer in the build folder `build`, shards and manifest in `build/dataset/`; returns the
    manifest and the tokenizer's path."""
    model_path = _tokenizer_for(args, inputs, build, vocab_size)
    dataset = build / "dataset"
    dataset.mkdir()
    sinks = {split: ShardSink(dataset, split, args.shard_tokens) for split in (*SPLITS, SIDECAR_SPLIT)}
    val_copies = ValCopies(args.num_val_docs)
    docs = val_copies(iter_documents(inputs, args.text_field, args.max_docs))
    chunks = split_into_chunks(docs, args.num_val_docs)
    with tqdm(total=args.max_docs, unit="doc", desc="tokenizing", disable=args.quiet) as bar:
        for split, n_docs, tokens, text_bytes, sidecar in encode_in_order(
            chunks, model_path, args.workers, args.caseops
        ):
            sinks[split].add(tokens, n_docs, text_bytes)
            if sidecar is not None:  # cut at the same token counts as the val shards
                sinks[SIDECAR_SPLIT].add(sidecar, n_docs, int(sidecar.sum(dtype=np.int64)))
            bar.update(n_docs)
    for sink in sinks.values():
        sink.flush()
    if sinks["train"].stats.docs == 0:
        raise _too_few_documents(inputs, sinks["val"].stats.docs, args.num_val_docs)
    if val_copies.count:
        print(f"warning: {val_copies.count} training documents are exact copies of validation documents: the "
              "validation score counts text the model trained on (deduplicate the input to avoid it)", file=sys.stderr)

    manifest = {
        "vocab_size": vocab_size,
        "bos_id": BOS_ID,
        "tokenizer": {"path": str(tokenizer_path(out, vocab_size).relative_to(out)), "sha256": sha256_of(model_path)},
        "shard_tokens": args.shard_tokens,
        "num_val_docs": args.num_val_docs,
        "inputs": [str(p) for p in inputs],
        "splits": {split: asdict(sinks[split].stats) for split in SPLITS},
        "train_copies_of_val_docs": val_copies.count,
    }
    if args.caseops:
        from lit_golf.data.caseops import manifest_entry

        manifest["caseops"] = manifest_entry(sinks[SIDECAR_SPLIT].stats.shards, sinks[SIDECAR_SPLIT].stats.bytes)
    (dataset / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest, model_path


def prepare(args: argparse.Namespace) -> dict:
    """Run prepare-data for parsed arguments; returns the manifest it wrote.

    Everything is built in a hidden folder beside the target and swapped in at the end, so bad input found
    halfway, a full disk or Ctrl-C leave the data already there (shards, manifest, tokenizer) as it was.
    """
    inputs = [Path(p) for p in args.input]
    _check_args(args, inputs)
    out = Path(args.out)
    vocab_size = _target_vocab(args)
    target_dir = dataset_dir(out, vocab_size)
    _refuse_existing(target_dir, args.overwrite)
    output_folder(out, "--out")
    build = None
    try:
        with disk_errors_as_one_line("--out", out, unchanged=f"the data already in {target_dir} is unchanged",
                                     error=PrepareError):
            build = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.partial-",
                                          dir=output_folder(target_dir.parent, "--out")))
            manifest, model_path = _build(args, inputs, out, build, vocab_size)
            tokenizer_files = _tokenizer_files(model_path, build, tokenizer_path(out, vocab_size))
            replace_folder(build / "dataset", target_dir, keep=lambda entry: not _made_by_a_data_tool(entry))
            for final, staged in tokenizer_files.items():  # renames only, after the swap
                if staged is None:
                    final.unlink(missing_ok=True)
                else:
                    os.replace(staged, final)
    finally:
        if build is not None:
            shutil.rmtree(build, ignore_errors=True)
    return manifest


def build_parser() -> ArgumentParser:
    parser = tool_parser(
        prog="lit-golf prepare-data",
        description="Tokenize documents (.jsonl with a text field, or .txt one per line; plain, .gz or .xz) "
        "into upstream-format shards under OUT/datasets/fineweb10B_sp<V>/.",
    )
    parser.add_argument("--input", action="append", required=True, help="document file; repeat for several")
    parser.add_argument("--out", default="data", help="data directory to write (default: data)")
    parser.add_argument("--tokenizer", help="existing SentencePiece model (copied to OUT/tokenizers/)")
    parser.add_argument(
        "--train-tokenizer", action="store_true",
        help="train a BPE tokenizer on the first training documents (never on validation ones)",
    )
    parser.add_argument("--vocab-size", type=int, help="vocabulary of the tokenizer to train (or check)")
    parser.add_argument(
        "--tokenizer-train-docs", type=int, default=DEFAULT_TOKENIZER_TRAIN_DOCS,
        help=f"training documents used to train the tokenizer (default: {DEFAULT_TOKENIZER_TRAIN_DOCS})",
    )
    parser.add_argument("--text-field", default="text", help="JSON field holding the text (default: text)")
    parser.add_argument(
        "--num-val-docs", type=int, default=DEFAULT_NUM_VAL_DOCS,
        help=f"the first N documents are validation (default: {DEFAULT_NUM_VAL_DOCS})",
    )
    parser.add_argument(
        "--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS,
        help=f"tokens per shard (default: {DEFAULT_SHARD_TOKENS})",
    )
    parser.add_argument("--max-docs", type=int, help="stop after this many documents")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes (default: CPU count)"
    )
    parser.add_argument(
        "--caseops", action="store_true",
        help="tokenize the CaseOps form of each document (lowercase text + case operators, lossless) and write "
        "fineweb_val_bytes_NNNNNN.bin byte sidecars for bits per byte; the tokenizer must hold the operators "
        "(--train-tokenizer adds them)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in the output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        manifest = prepare(args)
    except ValueError as err:  # PrepareError, and an --out that cannot be written (`tool_output.output_folder`)
        print(f"lit-golf prepare-data: error: {err}", file=sys.stderr)
        return 2
    summary = ", ".join(
        f"{split}: {s['docs']} docs, {s['tokens']} tokens, {s['shards']} shards" for split, s in manifest["splits"].items()
    )
    print(f"wrote {dataset_dir(args.out, manifest['vocab_size'])} ({summary})")
    return 0
