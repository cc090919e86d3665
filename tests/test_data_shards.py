"""Shard format: round trip, layout helpers and every malformed-file error."""

from __future__ import annotations

import numpy as np
import pytest

from lit_golf.data.shards import (
    HEADER_BYTES,
    SHARD_MAGIC,
    ShardError,
    dataset_dir,
    find_shards,
    read_header,
    read_shard,
    shard_name,
    tokenizer_path,
    write_shard,
)


def test_round_trip_and_header_layout(tmp_path):
    tokens = np.array([1, 5, 65535, 0, 1, 7], dtype=np.int64)
    path = tmp_path / "s.bin"
    write_shard(path, tokens)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:3].tolist() == [SHARD_MAGIC, 1, tokens.size] and not header[3:].any()
    assert path.stat().st_size == HEADER_BYTES + 2 * tokens.size
    data = read_shard(path)
    assert data.dtype == np.uint16 and isinstance(data, np.memmap)
    assert data.tolist() == tokens.tolist()
    assert read_header(path) == tokens.size


def test_empty_shard_reads_as_empty_array(tmp_path):
    write_shard(tmp_path / "e.bin", np.zeros(0, dtype=np.uint16))
    assert read_shard(tmp_path / "e.bin", vocab_size=10).size == 0


def test_write_rejects_ids_that_do_not_fit_uint16(tmp_path):
    with pytest.raises(ShardError, match=r"bad\.bin: token ids must lie in 0\.\.65535"):
        write_shard(tmp_path / "bad.bin", np.array([1, 70000]))


def test_layout_helpers(tmp_path):
    assert dataset_dir(tmp_path, 1024) == tmp_path / "datasets" / "fineweb10B_sp1024"
    assert tokenizer_path(tmp_path, 8192) == tmp_path / "tokenizers" / "fineweb_8192_bpe.model"
    assert shard_name("val", 3) == "fineweb_val_000003.bin"


def test_find_shards_sorted_and_per_split(tmp_path):
    directory = dataset_dir(tmp_path, 1024)
    for index in (2, 0, 1):
        write_shard(directory / shard_name("train", index), np.array([1, 2]))
    write_shard(directory / shard_name("val", 0), np.array([1, 2]))
    assert [p.name for p in find_shards(tmp_path, "train", 1024)] == [shard_name("train", i) for i in range(3)]
    assert [p.name for p in find_shards(tmp_path, "val", 1024)] == [shard_name("val", 0)]


def test_no_files_names_glob_and_commands(tmp_path):
    pattern = str(dataset_dir(tmp_path, 8192) / "fineweb_train_*.bin")
    with pytest.raises(ShardError) as err:
        find_shards(tmp_path, "train", 8192)
    message = str(err.value)
    assert pattern in message and "lit-golf download --variant sp8192" in message and "lit-golf prepare-data" in message
    assert "\n" not in message


def _valid_shard(tmp_path, tokens=(1, 2, 3, 4)):
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, np.array(tokens))
    return path


def _patch_header(path, index, value):
    raw = bytearray(path.read_bytes())
    raw[4 * index : 4 * index + 4] = int(value).to_bytes(4, "little", signed=True)
    path.write_bytes(bytes(raw))


def test_wrong_magic(tmp_path):
    path = _valid_shard(tmp_path)
    _patch_header(path, 0, 12345)
    with pytest.raises(ShardError, match=rf"{path.name} has wrong magic 12345 \(expected {SHARD_MAGIC}\).*prepare-data"):
        read_shard(path)


def test_wrong_version(tmp_path):
    path = _valid_shard(tmp_path)
    _patch_header(path, 1, 2)
    with pytest.raises(ShardError, match=rf"{path.name} has unsupported version 2 \(expected 1\)"):
        read_shard(path)


def test_truncated_tokens(tmp_path):
    path = _valid_shard(tmp_path)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ShardError, match=rf"{path.name} is truncated or corrupt: header declares 4 tokens "
                                         rf"\({HEADER_BYTES + 8} bytes\) but the file has {HEADER_BYTES + 6} bytes; delete it"):
        read_shard(path)


def test_truncated_header(tmp_path):
    path = _valid_shard(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ShardError, match=rf"{path.name} is truncated \(100 bytes, shorter than its {HEADER_BYTES}-byte header\)"):
        read_shard(path)


def test_token_id_out_of_vocab(tmp_path):
    path = _valid_shard(tmp_path, tokens=(1, 900, 1500, 3))
    assert read_shard(path, vocab_size=1501).max() == 1500
    with pytest.raises(ShardError, match=rf"{path.name} contains token id 1500 >= vocab_size=1024: .*--model\.gpt\.vocab_size"):
        read_shard(path, vocab_size=1024)


def test_missing_shard(tmp_path):
    with pytest.raises(ShardError, match=r"nope\.bin does not exist"):
        read_shard(tmp_path / "nope.bin")
