"""`lit-golf download`: fetch the published FineWeb shards and tokenizer from the Hugging Face hub.

The hub repository holds `<prefix>/manifest.json`, `<prefix>/datasets/fineweb10B_sp<V>/*.bin` and
`<prefix>/tokenizers/*`; they land in the data directory as `datasets/fineweb10B_sp<V>/` and
`tokenizers/`. The manifest, when the repository has one, says how many shards exist and which
tokenizer files belong to the variant; without it the names follow the standard layout.

Each stage (the manifest, then every missing shard and tokenizer file) is one `snapshot_download`
call whose `allow_patterns` name exactly the files still missing, so the hub's workers fetch them in
parallel into a staging folder; each file is verified there and only then moved into place, so an
interrupted run leaves no partial file behind and the next run asks only for what is still missing.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
from dataclasses import dataclass
from itertools import count, takewhile
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from jsonargparse import ArgumentParser

from lit_golf.data.shards import (
    HUB_MANIFEST,
    ShardError,
    dataset_dir,
    manifest_path,
    read_header,
    shard_glob,
    shard_name,
    tokenizer_filename,
    tokenizer_path,
)
from lit_golf.files import write_atomic
from lit_golf.tool_output import is_disk_error, output_folder, write_failure
from lit_golf.tool_parser import tool_parser

# sp1024 is in the challenge's own repository; the SP-8192 export used by the 2026 records was
# published separately (see the records' READMEs in openai/parameter-golf).
DEFAULT_REPOS = {"sp1024": "willdepueoai/parameter-golf", "sp8192": "kevclark/parameter-golf"}
DEFAULT_REMOTE_PREFIX = "datasets"
DEFAULT_TRAIN_SHARDS = 80
STAGING_DIR = ".hub-download"


class DownloadError(ValueError):
    """The hub cannot be reached or does not hold what was asked for; one line with the fix."""


class HubUnreachable(DownloadError):
    """Network, DNS, proxy or server failure (as opposed to a missing repository or file)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: its path in the repository, where it goes, and what it must contain."""

    remote: str
    local: Path
    expected_tokens: int | None = None  # shards only, when the manifest fixes their size

    @property
    def is_shard(self) -> bool:
        return self.local.suffix == ".bin"


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160] if text else ''}"


class Hub:
    """`snapshot_download` into a staging folder, with the hub's failures turned into one-line `DownloadError`s."""

    def __init__(self, repo_id: str, revision: str | None, staging: Path):
        self.repo_id, self.revision, self.staging = repo_id, revision, staging

    def snapshot(self, allow_patterns: list[str], ignore_patterns: list[str] | None = None) -> None:
        """Fetch every repository file that matches `allow_patterns` (and no `ignore_patterns`) in one call.

        Patterns that match nothing are not an error: `staged` tells which files came. The staging folder
        is emptied first because, with the hub unreachable, `snapshot_download` returns a non-empty
        `local_dir` as it is instead of failing.
        """
        shutil.rmtree(self.staging, ignore_errors=True)
        try:
            snapshot_download(
                repo_id=self.repo_id, repo_type="dataset", revision=self.revision, local_dir=self.staging,
                allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
            )
        except RevisionNotFoundError as err:
            raise DownloadError(f"revision {self.revision!r} of {self.repo_id} does not exist: check --revision") from err
        except RepositoryNotFoundError as err:
            raise DownloadError(
                f"dataset repository {self.repo_id} is not on the hub (or is private): check --repo-id"
            ) from err
        except (HfHubHTTPError, OSError) as err:  # LocalEntryNotFoundError: offline, DNS, proxy, hub down
            if isinstance(err, OSError) and is_disk_error(err):  # the hub answered; our disk did not take the file
                raise DownloadError(f"{write_failure(err, '--out', self.staging.parent)}; files already downloaded "
                                    "are kept") from None
            raise self._unreachable(err) from err

    def staged(self, remote: str) -> Path | None:
        """Where the last `snapshot` put `remote`; None when it did not bring it."""
        path = self.staging / remote
        return path if path.is_file() else None

    def _unreachable(self, err: Exception) -> HubUnreachable:
        return HubUnreachable(
            f"cannot reach the Hugging Face hub ({_first_line(err)}): check network or set HF_ENDPOINT / use "
            "--repo-id; data already downloaded is kept"
        )


def _local_shard_ok(path: Path, expected_tokens: int | None) -> bool:
    try:
        tokens = read_header(path)
    except ShardError:
        return False
    return expected_tokens is None or tokens == expected_tokens


def _verify_download(item: RemoteFile, staged: Path) -> None:
    if item.is_shard:
        tokens = read_header(staged)  # the header's token count must match the file size
        if item.expected_tokens is not None and tokens != item.expected_tokens:
            raise DownloadError(
                f"{item.remote} on the hub holds {tokens} tokens but its manifest promises {item.expected_tokens}: "
                "the remote export is inconsistent; try another --revision or --repo-id"
            )
    elif staged.stat().st_size == 0:
        raise DownloadError(f"{item.remote} downloaded empty: run `lit-golf download` again")


def _present(item: RemoteFile) -> bool:
    return item.local.is_file() and (not item.is_shard or _local_shard_ok(item.local, item.expected_tokens))


def _exact(remote: str) -> str:
    """An `allow_patterns` entry that matches `remote` only (the hub matches patterns with fnmatch)."""
    return glob.escape(remote)


def _missing_patterns(items: list[RemoteFile]) -> list[str]:
    return [_exact(item.remote) for item in items if not _present(item)]


def ensure(hub: Hub, item: RemoteFile, required: bool = True) -> bool:
    """Make `item.local` present and valid from the last snapshot; False when the hub lacks it (and not `required`)."""
    if _present(item):
        return True
    staged = hub.staged(item.remote)
    if staged is None:
        if required:
            raise DownloadError(f"{item.remote} is not in {hub.repo_id}: check --variant, --remote-prefix and --repo-id")
        return False
    _verify_download(item, staged)
    item.local.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, item.local)
    print(f"fetched {item.local} ({item.local.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return True


# ---------------------------------------------------------------------------------------------
# What to fetch


@dataclass(frozen=True)
class Layout:
    """Remote and local paths of one variant."""

    prefix: str
    variant: str
    data_dir: Path

    @property
    def vocab_size(self) -> int:
        return int(self.variant.removeprefix("sp"))

    @property
    def dataset_name(self) -> str:
        return f"fineweb10B_{self.variant}"

    def _remote(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def manifest(self) -> str:
        return self._remote("manifest.json")

    def every_shard(self, split: str) -> str:
        """An `allow_patterns` entry for every shard of `split` (their count is unknown without a manifest)."""
        return _exact(self._remote("datasets", self.dataset_name)) + "/" + shard_glob(split)

    def shard(self, split: str, index: int, expected_tokens: int | None = None) -> RemoteFile:
        name = shard_name(split, index)
        local = dataset_dir(self.data_dir, self.vocab_size) / name
        return RemoteFile(self._remote("datasets", self.dataset_name, name), local, expected_tokens)

    def tokenizer_file(self, relative: str) -> RemoteFile:
        """`relative` is a manifest path like `tokenizers/fineweb_1024_bpe.model`."""
        return RemoteFile(self._remote(relative), self.data_dir / "tokenizers" / Path(relative).name)


@dataclass(frozen=True)
class ManifestPlan:
    val_shards: int
    train_shards_available: int
    shard_tokens: int | None
    tokenizer_files: list[str]


def plan_from_manifest(manifest: dict, layout: Layout) -> ManifestPlan | None:
    """Shard counts and tokenizer files of the variant, or None when the manifest does not list it."""
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == layout.dataset_name), None)
    if entry is None:
        return None
    stats = entry.get("stats") or {}
    tokenizer = next((t for t in manifest.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name")), {})
    files = [str(tokenizer[k]) for k in ("model_path", "vocab_path", "path") if tokenizer.get(k)]
    return ManifestPlan(
        val_shards=int(stats["files_val"]),
        train_shards_available=int(stats["files_train"]),
        shard_tokens=manifest.get("shard_size"),
        tokenizer_files=files or [f"tokenizers/{tokenizer_filename(layout.vocab_size)}"],
    )


def _fetch_manifest(hub: Hub, layout: Layout) -> dict | None:
    """The repository's manifest (None if it has none), cached next to the shards.

    When the hub cannot be reached, the cached copy from the same repository lets a run whose files
    are all present finish offline.
    """
    cache = dataset_dir(layout.data_dir, layout.vocab_size) / HUB_MANIFEST
    try:
        hub.snapshot([_exact(layout.manifest())])
    except HubUnreachable:
        cached = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
        if cached.get("repo_id") != hub.repo_id:
            raise
        print(f"hub unreachable: using the manifest cached in {cache}", file=sys.stderr)
        return cached["manifest"]
    staged = hub.staged(layout.manifest())
    if staged is None:
        return None
    manifest = json.loads(staged.read_text(encoding="utf-8"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, json.dumps({"repo_id": hub.repo_id, "manifest": manifest}, indent=1) + "\n")
    return manifest


def _full_shard_tokens(plan: ManifestPlan, index: int, total: int) -> int | None:
    """Every shard but the last of its split holds exactly `shard_tokens` tokens."""
    return plan.shard_tokens if plan.shard_tokens and index < total - 1 else None


def _refuse_prepared_data(data_dir: Path, vocab_size: int) -> None:
    """The hub's shards must not join a dataset `prepare-data` made from other documents, possibly with another
    tokenizer of the same size: its manifest would vouch for shards it never saw."""
    manifest = manifest_path(data_dir, vocab_size)
    if manifest.is_file():
        raise DownloadError(
            f"{manifest.parent} holds a dataset made by `lit-golf prepare-data` ({manifest.name}): the published shards "
            "would mix with its own; download into another --out"
        )


def download(args: argparse.Namespace) -> dict:
    data_dir = output_folder(args.out, "--out")
    layout = Layout(args.remote_prefix.strip("/"), args.variant, data_dir)
    _refuse_prepared_data(data_dir, layout.vocab_size)
    repo_id = args.repo_id or DEFAULT_REPOS[args.variant]
    staging = data_dir / STAGING_DIR
    hub = Hub(repo_id, args.revision, staging)
    try:
        manifest = _fetch_manifest(hub, layout)
        plan = plan_from_manifest(manifest, layout) if manifest else None
        if plan is not None:
            if args.train_shards > plan.train_shards_available:
                raise DownloadError(
                    f"{repo_id} has {plan.train_shards_available} train shards for {args.variant}, "
                    f"--train-shards asked for {args.train_shards}: pass at most {plan.train_shards_available}"
                )
            shards = [layout.shard("val", i, _full_shard_tokens(plan, i, plan.val_shards)) for i in range(plan.val_shards)]
            shards += [
                layout.shard("train", i, _full_shard_tokens(plan, i, plan.train_shards_available))
                for i in range(args.train_shards)
            ]
            tokenizer_files = [layout.tokenizer_file(relative) for relative in plan.tokenizer_files]
            if missing := _missing_patterns(shards + tokenizer_files):
                hub.snapshot(missing)
            for item in shards:
                ensure(hub, item)
            for item in tokenizer_files:
                ensure(hub, item, required=item.remote.endswith(".model"))
            val_shards = plan.val_shards
        else:
            val_shards = _download_by_name(hub, layout, args.train_shards)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # imported here, not at the top: it loads torch, and `lit-golf download --help` should answer at once
    from lit_golf.data.tokenizer import load_tokenizer

    tokenizer = tokenizer_path(data_dir, layout.vocab_size)
    load_tokenizer(tokenizer, layout.vocab_size)  # the files must fit together
    return {"repo_id": repo_id, "variant": args.variant, "val_shards": val_shards, "train_shards": args.train_shards,
            "tokenizer": str(tokenizer), "manifest": manifest is not None}


def _download_by_name(hub: Hub, layout: Layout, train_shards: int) -> int:
    """Without a manifest: every val shard the repository has (found by a glob), the train prefix and tokenizer.

    Val shards 0, 1, ... already present locally are left out of the glob; the count is where the
    present-or-fetched run of val shards stops.
    """
    present_val = list(takewhile(_present, (layout.shard("val", i) for i in count())))
    train = [layout.shard("train", i) for i in range(train_shards)]
    model = tokenizer_filename(layout.vocab_size)
    tokenizer_model = layout.tokenizer_file(f"tokenizers/{model}")
    tokenizer_vocab = layout.tokenizer_file(f"tokenizers/{Path(model).with_suffix('.vocab')}")
    hub.snapshot(
        [layout.every_shard("val"), *_missing_patterns([*train, tokenizer_model, tokenizer_vocab])],
        ignore_patterns=[_exact(item.remote) for item in present_val],
    )
    val_shards = len(present_val)
    while ensure(hub, layout.shard("val", val_shards), required=val_shards == 0):
        val_shards += 1
    for i, item in enumerate(train):
        if not ensure(hub, item, required=False):
            raise DownloadError(f"{hub.repo_id} has only {i} train shards for {layout.variant}: pass --train-shards {i}")
    ensure(hub, tokenizer_model)
    ensure(hub, tokenizer_vocab, required=False)
    return val_shards


def build_parser() -> ArgumentParser:
    parser = tool_parser(
        prog="lit-golf download",
        description="Fetch the published FineWeb shards and tokenizer into DATA_DIR/datasets/ and DATA_DIR/tokenizers/ "
        "(resumable: files already present and valid are skipped).",
    )
    parser.add_argument("--variant", choices=sorted(DEFAULT_REPOS), default="sp8192", help="tokenizer family")
    parser.add_argument(
        "--train-shards", type=int, default=DEFAULT_TRAIN_SHARDS,
        help=f"number of train shards (100M tokens each) to fetch (default: {DEFAULT_TRAIN_SHARDS})",
    )
    parser.add_argument("--out", default="data", help="data directory (default: data)")
    parser.add_argument(
        "--repo-id", help="hub dataset repository (default: " + ", ".join(f"{k}: {v}" for k, v in DEFAULT_REPOS.items()) + ")"
    )
    parser.add_argument(
        "--remote-prefix", default=DEFAULT_REMOTE_PREFIX,
        help=f"folder of the export inside the repository (default: {DEFAULT_REMOTE_PREFIX})",
    )
    parser.add_argument("--revision", help="branch, tag or commit of the repository (default: main)")
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.train_shards < 0:
        print(f"lit-golf download: error: --train-shards must be >= 0, got {args.train_shards}", file=sys.stderr)
        return 2
    try:
        summary = download(args)
    except ValueError as err:  # DownloadError, ShardError, TokenizerError, an --out that cannot be written
        print(f"lit-golf download: error: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {summary['val_shards']} val + {summary['train_shards']} train shards of {summary['variant']} "
        f"from {summary['repo_id']}, tokenizer {summary['tokenizer']}"
    )
    return 0
