"""lease/keep_artifact.sh in a scratch repository: the artifact lands in history and leaves the tree, restores
byte for byte, gets its README line, and a second artifact of the same name or a dirty index is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


def scratch_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "lease").mkdir(parents=True)
    (repo / "bench" / "artifacts").mkdir(parents=True)
    shutil.copy(ROOT / "lease" / "keep_artifact.sh", repo / "lease")
    (repo / "bench" / "artifacts" / "README.md").write_text("| restore | sha256 | what |\n| --- | --- | --- |\n")
    (repo / ".gitignore").write_text("*.ptz\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "start")
    return repo


def keep(repo: Path, ptz: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "lease/keep_artifact.sh", str(ptz), name, "a test model"], cwd=repo,
                          capture_output=True, text=True, env={**os.environ, **GIT_ENV})


def test_the_artifact_is_in_history_not_in_the_tree_and_restores(tmp_path):
    repo = scratch_repo(tmp_path)
    ptz = tmp_path / "artifact.ptz"
    ptz.write_bytes(os.urandom(4096))
    done = keep(repo, ptz, "model_a.ptz")
    assert done.returncode == 0, done.stderr
    assert not (repo / "bench" / "artifacts" / "model_a.ptz").exists()
    assert "model_a.ptz" not in git(repo, "ls-files")
    added = done.stdout.split("git show ")[1].split(":")[0]
    restored = subprocess.run(["git", "show", f"{added}:bench/artifacts/model_a.ptz"], cwd=repo, check=True,
                              capture_output=True).stdout
    assert restored == ptz.read_bytes()
    readme = (repo / "bench" / "artifacts" / "README.md").read_text()
    assert f"| `git show {added}:bench/artifacts/model_a.ptz` |" in readme and "a test model" in readme
    assert git(repo, "status", "--porcelain") == ""
    again = keep(repo, ptz, "model_a.ptz")
    assert again.returncode == 1 and "was kept before" in again.stderr


def test_bad_input_is_refused_before_any_commit(tmp_path):
    repo = scratch_repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD")
    ptz = tmp_path / "artifact.ptz"
    ptz.write_bytes(b"x")
    assert "no such file" in keep(repo, tmp_path / "none.ptz", "m.ptz").stderr
    assert "name it <words>.ptz" in keep(repo, ptz, "../m.ptz").stderr
    (repo / "other.txt").write_text("staged")
    git(repo, "add", "other.txt")
    assert "staged changes" in keep(repo, ptz, "m.ptz").stderr
    assert git(repo, "rev-parse", "HEAD") == head
