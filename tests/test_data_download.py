"""`lit-golf download` against a file-backed fake of the Hugging Face hub."""

from __future__ import annotations

import errno
import json
import shutil
from fnmatch import fnmatchcase
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from lit_golf.data import download
from lit_golf.data.download import HUB_MANIFEST, STAGING_DIR, cli_main
from lit_golf.data.prepare import iter_documents, train_tokenizer
from lit_golf.data.shards import dataset_dir, read_shard, shard_name, tokenizer_path, write_shard

REPO = "someone/golf-data"
SHARD_TOKENS = 50


class FakeHub:
    """Stands in for `snapshot_download`: serves a local folder, or fails like the real hub.

    `calls` holds the `allow_patterns` of each call and `fetched` the files each call copied. As the
    real hub does when it cannot be reached, a non-empty `local_dir` is returned as it is.
    """

    def __init__(self, root: Path):
        self.root, self.calls, self.fetched, self.failure = root, [], [], None

    def __call__(self, *, repo_id, repo_type, revision, local_dir, allow_patterns, ignore_patterns=None):
        self.calls.append(list(allow_patterns))
        assert repo_type == "dataset"
        local_dir = Path(local_dir)
        if self.failure is not None:
            if local_dir.is_dir() and any(local_dir.iterdir()):
                return str(local_dir)
            raise self.failure
        if repo_id != REPO:
            raise RepositoryNotFoundError("404 Repository Not Found", response=SimpleNamespace(headers={}, request=None))
        if revision not in (None, "main"):
            raise RevisionNotFoundError("404 Revision Not Found", response=SimpleNamespace(headers={}, request=None))
        remote = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        matches = [
            name for name in remote
            if any(fnmatchcase(name, pattern) for pattern in allow_patterns)
            and not any(fnmatchcase(name, pattern) for pattern in ignore_patterns or ())
        ]
        for name in matches:
            (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.root / name, local_dir / name)
        self.fetched.append(matches)
        return str(local_dir)


@pytest.fixture(scope="module")
def tokenizer_1024(tmp_path_factory, stdlib_corpus) -> Path:
    path = tmp_path_factory.mktemp("tok") / "fineweb_1024_bpe.model"
    return train_tokenizer(iter_documents([stdlib_corpus]), 1024, path)


def build_remote(root: Path, tokenizer: Path, *, manifest: bool = True, val_shards: int = 1, train_shards: int = 3) -> Path:
    """An upstream-style export under `root/datasets/`: shards of SHARD_TOKENS tokens (the last train one shorter)."""
    export = root / "datasets"
    shards = export / "datasets" / "fineweb10B_sp1024"
    rng = np.random.default_rng(0)
    for split, count in (("val", val_shards), ("train", train_shards)):
        for i in range(count):
            size = SHARD_TOKENS if split == "val" or i < count - 1 else 17
            write_shard(shards / shard_name(split, i), rng.integers(1, 1024, size))
    (export / "tokenizers").mkdir(parents=True)
    shutil.copyfile(tokenizer, export / "tokenizers" / "fineweb_1024_bpe.model")
    shutil.copyfile(tokenizer.with_suffix(".vocab"), export / "tokenizers" / "fineweb_1024_bpe.vocab")
    if manifest:
        (export / "manifest.json").write_text(json.dumps({
            "shard_size": SHARD_TOKENS,
            "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
                          "stats": {"files_val": val_shards, "files_train": train_shards}}],
            "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model",
                            "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}],
        }))
    return root


@pytest.fixture
def hub(tmp_path, tokenizer_1024, monkeypatch) -> FakeHub:
    fake = FakeHub(build_remote(tmp_path / "remote", tokenizer_1024))
    monkeypatch.setattr(download, "snapshot_download", fake)
    return fake


def run(out: Path, *extra: str) -> int:
    return cli_main(["--variant", "sp1024", "--repo-id", REPO, "--out", str(out), *extra])


def remote_shard(hub: FakeHub, split: str, index: int) -> Path:
    return hub.root / "datasets" / "datasets" / "fineweb10B_sp1024" / shard_name(split, index)


def test_manifest_driven_download_lays_out_the_data_dir(tmp_path, hub):
    out = tmp_path / "data"
    assert run(out, "--train-shards", "2") == 0
    local = dataset_dir(out, 1024)
    assert sorted(p.name for p in local.glob("*.bin")) == [shard_name("train", 0), shard_name("train", 1), shard_name("val", 0)]
    for split, index in (("val", 0), ("train", 0), ("train", 1)):
        assert (local / shard_name(split, index)).read_bytes() == remote_shard(hub, split, index).read_bytes()
    assert tokenizer_path(out, 1024).read_bytes() == (hub.root / "datasets/tokenizers/fineweb_1024_bpe.model").read_bytes()
    assert tokenizer_path(out, 1024).with_suffix(".vocab").is_file()
    assert json.loads((local / HUB_MANIFEST).read_text())["repo_id"] == REPO
    assert hub.calls[0] == ["datasets/manifest.json"] and not (out / STAGING_DIR).exists()


def test_resume_fetches_only_missing_or_broken_files(tmp_path, hub):
    out = tmp_path / "data"
    assert run(out, "--train-shards", "2") == 0
    hub.calls.clear()
    assert run(out, "--train-shards", "2") == 0
    assert hub.calls == [["datasets/manifest.json"]]  # nothing missing: no second call
    broken = dataset_dir(out, 1024) / shard_name("train", 1)
    broken.write_bytes(broken.read_bytes()[:-10])  # an interrupted copy from elsewhere
    hub.calls.clear()
    assert run(out, "--train-shards", "3") == 0
    assert hub.calls == [
        ["datasets/manifest.json"], [f"datasets/datasets/fineweb10B_sp1024/{shard_name('train', i)}" for i in (1, 2)]
    ]
    assert read_shard(broken).size == SHARD_TOKENS


def test_a_stage_is_one_snapshot_call(tmp_path, hub):
    out = tmp_path / "data"
    assert run(out, "--train-shards", "2") == 0
    export = "datasets/datasets/fineweb10B_sp1024"
    files = [f"{export}/{shard_name(split, i)}" for split, i in (("val", 0), ("train", 0), ("train", 1))]
    files += ["datasets/tokenizers/fineweb_1024_bpe.model", "datasets/tokenizers/fineweb_1024_bpe.vocab"]
    assert hub.calls == [["datasets/manifest.json"], files]  # the manifest, then everything else together
    assert hub.fetched[1] == sorted(files)


def test_hub_lost_after_the_manifest_is_unreachable_not_missing(tmp_path, hub, monkeypatch, capsys):
    def manifest_then_offline(**kwargs):
        staged = hub(**kwargs)
        hub.failure = LocalEntryNotFoundError("offline")
        return staged

    monkeypatch.setattr(download, "snapshot_download", manifest_then_offline)
    out = tmp_path / "data"
    assert run(out, "--train-shards", "1") == 2
    assert "cannot reach the Hugging Face hub (LocalEntryNotFoundError: offline)" in capsys.readouterr().err
    assert not list(dataset_dir(out, 1024).glob("*.bin")) and not (out / STAGING_DIR).exists()


def test_unknown_revision(tmp_path, hub, capsys):
    assert run(tmp_path / "data", "--revision", "v9") == 2
    assert f"revision 'v9' of {REPO} does not exist: check --revision" in capsys.readouterr().err


def test_asking_for_more_train_shards_than_published(tmp_path, hub, capsys):
    assert run(tmp_path / "data", "--train-shards", "5") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"lit-golf download: error: {REPO} has 3 train shards for sp1024, --train-shards asked for 5: pass at most 3"


def test_without_manifest_names_are_derived(tmp_path, tokenizer_1024, monkeypatch, capsys):
    fake = FakeHub(build_remote(tmp_path / "remote", tokenizer_1024, manifest=False, val_shards=2, train_shards=3))
    monkeypatch.setattr(download, "snapshot_download", fake)
    out = tmp_path / "data"
    assert run(out, "--train-shards", "3") == 0
    assert len(list(dataset_dir(out, 1024).glob("fineweb_val_*.bin"))) == 2
    assert len(list(dataset_dir(out, 1024).glob("fineweb_train_*.bin"))) == 3
    assert tokenizer_path(out, 1024).is_file()
    fake.fetched.clear()
    assert run(out, "--train-shards", "3") == 0
    assert fake.fetched == [[], []]  # the val glob leaves out the val shards already present
    assert run(out, "--train-shards", "4") == 2
    assert "has only 3 train shards for sp1024: pass --train-shards 3" in capsys.readouterr().err


def test_unreachable_hub_is_one_clear_line_and_keeps_data(tmp_path, hub, capsys):
    out = tmp_path / "data"
    hub.failure = LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub.\nmore")
    assert run(out) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "lit-golf download: error: cannot reach the Hugging Face hub (LocalEntryNotFoundError: An error happened while "
        "trying to locate the file on the Hub.): check network or set HF_ENDPOINT / use --repo-id; data already "
        "downloaded is kept"
    )
    hub.failure = None
    assert run(out, "--train-shards", "1") == 0
    hub.failure = ConnectionError("Name or service not known")
    assert run(out, "--train-shards", "1") == 0  # everything present: the cached manifest is enough
    assert run(out, "--train-shards", "2") == 2  # a missing shard needs the hub
    assert "cannot reach the Hugging Face hub (ConnectionError: Name or service not known)" in capsys.readouterr().err
    assert read_shard(dataset_dir(out, 1024) / shard_name("train", 0)).size == SHARD_TOKENS


def test_unknown_repository(tmp_path, hub, capsys):
    assert cli_main(["--variant", "sp1024", "--repo-id", "nobody/none", "--out", str(tmp_path / "d")]) == 2
    assert "dataset repository nobody/none is not on the hub (or is private): check --repo-id" in capsys.readouterr().err


def test_corrupt_remote_shard_is_never_moved_into_place(tmp_path, hub, capsys):
    remote = remote_shard(hub, "train", 0)
    remote.write_bytes(remote.read_bytes()[:-4])
    out = tmp_path / "data"
    assert run(out, "--train-shards", "1") == 2
    assert "fineweb_train_000000.bin is truncated or corrupt" in capsys.readouterr().err
    assert not (dataset_dir(out, 1024) / shard_name("train", 0)).exists() and not (out / STAGING_DIR).exists()


def test_remote_shard_with_unexpected_size(tmp_path, hub, capsys):
    write_shard(remote_shard(hub, "train", 0), np.ones(SHARD_TOKENS - 1, dtype=np.uint16))
    assert run(tmp_path / "data", "--train-shards", "1") == 2
    assert f"holds {SHARD_TOKENS - 1} tokens but its manifest promises {SHARD_TOKENS}" in capsys.readouterr().err


def test_default_repository_per_variant(tmp_path, hub, monkeypatch):
    seen = []
    hub.failure = LocalEntryNotFoundError("offline")

    def spy(**kwargs):
        seen.append(kwargs["repo_id"])
        return hub(**kwargs)

    monkeypatch.setattr(download, "snapshot_download", spy)
    for variant in ("sp1024", "sp8192"):
        assert cli_main(["--variant", variant, "--out", str(tmp_path / variant)]) == 2
    assert seen == [download.DEFAULT_REPOS["sp1024"], download.DEFAULT_REPOS["sp8192"]]


def test_a_full_disk_is_not_an_unreachable_hub(tmp_path, hub, capsys):
    out = tmp_path / "data"
    hub.failure = OSError(errno.ENOSPC, "No space left on device", str(out / STAGING_DIR / "x.bin"))
    assert run(out, "--train-shards", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lit-golf download: error: the disk is full: writing") and "\n" not in err, err
    assert "cannot reach" not in err and "--out on another disk" in err


def test_out_that_is_a_file(tmp_path, hub, capsys):
    out = tmp_path / "data"
    out.write_text("x\n")
    assert run(out) == 2
    err = capsys.readouterr().err.strip()
    assert f"--out {out}: cannot write there ({out} is a file, not a folder)" in err and "\n" not in err, err
    assert hub.calls == []


def test_refuses_to_mix_the_hub_s_shards_into_a_prepared_dataset(tmp_path, hub, capsys):
    """prepare-data's manifest vouches for its own shards and tokenizer; the hub's would join them unseen."""
    out = tmp_path / "data"
    manifest = dataset_dir(out, 1024) / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"vocab_size": 1024, "tokenizer": {"sha256": "0" * 64}}))
    assert run(out, "--train-shards", "1") == 2
    err = capsys.readouterr().err.strip()
    assert f"{manifest.parent} holds a dataset made by `lit-golf prepare-data` (manifest.json)" in err, err
    assert "download into another --out" in err and hub.calls == []
