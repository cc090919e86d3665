"""Bad input to the data tools and the small tools (`prepare-data`, `demo`, `sweep`, every tool's help): one
line and exit code != 0, and never lost data (issue 26, sections 1, 3 and 4).

`prepare-data` builds the new dataset beside the old one and swaps it in at the end: bad input found halfway,
a full disk or a read-only folder leave the data already there byte for byte as it was. A read-only folder
and a full disk are simulated (tests run as root, whom a read-only mode does not stop).
"""

from __future__ import annotations

import errno
import json
import re
import tempfile
from pathlib import Path

import pytest
from test_bad_inputs_data import docs, jsonl, one_error_line

from lit_golf.cli import TOOLS, main
from lit_golf.data import prepare
from lit_golf.data.shards import dataset_dir, manifest_path, tokenizer_path

VOCAB = 300


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    good, other = folder / "good.jsonl", folder / "other.jsonl"
    good.write_bytes(jsonl(docs(200)))
    other.write_bytes(jsonl(docs(150)[::-1]))
    lines = good.read_text().splitlines()
    lines[40] = '{"text": "a line cut by a crash'  # line 41 of the file
    bad = folder / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    return {"good": good, "other": other, "bad": bad}


def prepare_argv(source: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare-data", "--input", str(source), "--out", str(out), "--num-val-docs", "20", "--workers", "1",
            "--quiet", *extra]


@pytest.fixture
def prepared(corpus, tmp_path) -> Path:
    """A data folder made by prepare-data, with a note of the user's beside the shards."""
    out = tmp_path / "data"
    assert main(prepare_argv(corpus["good"], out, "--train-tokenizer", "--vocab-size", str(VOCAB))) == 0
    (dataset_dir(out, VOCAB) / "NOTES.txt").write_text("where these documents came from\n")
    return out


@pytest.mark.parametrize("tokenizer", ["train", "given"])
def test_overwrite_with_bad_input_leaves_the_old_data_as_it_was(prepared, corpus, tmp_path, capsys, tokenizer):
    """Section 1: `prepare-data --overwrite` used to delete the old shards first; bad JSON at line 41 left nothing."""
    given = tmp_path / "given.model"
    given.write_bytes(tokenizer_path(prepared, VOCAB).read_bytes())
    flags = ["--train-tokenizer", "--vocab-size", str(VOCAB)] if tokenizer == "train" else ["--tokenizer", str(given)]
    before = snapshot(prepared)
    assert main(prepare_argv(corpus["bad"], prepared, *flags, "--overwrite")) == 2
    line = one_error_line(capsys.readouterr().err, "prepare-data")
    assert re.search(r"bad\.jsonl:41 is not a JSON object with a 'text' string", line), line
    assert snapshot(prepared) == before  # shards, manifest, tokenizer, the note; no leftover build folder


def test_a_full_disk_while_writing_shards_leaves_the_old_data_as_it_was(prepared, corpus, capsys, monkeypatch):
    write_shard = prepare.write_shard
    written = []

    def fills_the_disk(path, tokens):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_shard(path, tokens)
        written.append(path)

    monkeypatch.setattr(prepare, "write_shard", fills_the_disk)
    before = snapshot(prepared)
    argv = prepare_argv(corpus["other"], prepared, "--train-tokenizer", "--vocab-size", str(VOCAB), "--overwrite",
                        "--shard-tokens", "2000")
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err, "prepare-data")
    assert "the disk is full: writing" in line and "No space left on device" in line, line
    assert f"the data already in {dataset_dir(prepared, VOCAB)} is unchanged" in line
    assert written and snapshot(prepared) == before


def test_overwrite_replaces_the_dataset_in_one_swap_and_keeps_other_files(prepared, corpus):
    old_tokenizer = tokenizer_path(prepared, VOCAB).read_bytes()
    argv = prepare_argv(corpus["other"], prepared, "--train-tokenizer", "--vocab-size", str(VOCAB), "--overwrite")
    assert main(argv) == 0
    manifest = json.loads(manifest_path(prepared, VOCAB).read_text())
    assert manifest["inputs"] == [str(corpus["other"])] and manifest["splits"]["train"]["docs"] == 130
    assert (dataset_dir(prepared, VOCAB) / "NOTES.txt").read_text() == "where these documents came from\n"
    assert tokenizer_path(prepared, VOCAB).read_bytes() != old_tokenizer  # trained on other documents
    assert not [p for p in (prepared / "datasets").iterdir() if p.name.startswith(".")]  # no build folder left
    assert not list(prepared.rglob("*.partial"))


def test_out_that_is_a_file_or_under_one(corpus, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x\n")
    for out in (a_file, a_file / "data"):
        assert main(prepare_argv(corpus["good"], out, "--train-tokenizer", "--vocab-size", str(VOCAB))) == 2
        line = one_error_line(capsys.readouterr().err, "prepare-data")
        assert f"--out {out}" in line and f"{a_file} is a file, not a folder" in line, line


@pytest.fixture
def read_only_disk(monkeypatch):
    """Every new file fails as on a read-only filesystem (the probe of `lit_golf.files.check_writable` too)."""

    def refuse(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)


def test_read_only_target(prepared, corpus, capsys, read_only_disk):
    before = snapshot(prepared)
    argv = prepare_argv(corpus["other"], prepared, "--train-tokenizer", "--vocab-size", str(VOCAB), "--overwrite")
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err, "prepare-data")
    assert f"--out {prepared}: cannot write there (Read-only file system)" in line, line
    assert snapshot(prepared) == before


@pytest.mark.parametrize("tool", ["download", "demo", "sweep"])
def test_read_only_out_of_the_other_tools(tool, tmp_path, capsys, read_only_disk):
    out = tmp_path / "out"
    argv = {"download": ["download", "--variant", "sp1024", "--out", str(out)], "demo": ["demo", "--out", str(out)],
            "sweep": sweep_argv(out)}[tool]
    assert main(argv) == 2
    assert f"--out {out}: cannot write there (Read-only file system)" in one_error_line(capsys.readouterr().err, tool)
    assert not out.exists()


def test_the_same_input_twice_is_refused(corpus, tmp_path, capsys):
    """Its documents would be validation and training at once."""
    link = tmp_path / "link.jsonl"
    link.symlink_to(corpus["good"])
    argv = ["prepare-data", "--input", str(corpus["good"]), "--input", str(link), "--out", str(tmp_path / "d"),
            "--train-tokenizer", "--vocab-size", str(VOCAB)]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err, "prepare-data")
    assert f"--input {link} is the same file as --input {corpus['good']}" in line, line


def test_an_input_that_is_a_folder(tmp_path, capsys):
    argv = ["prepare-data", "--input", str(tmp_path), "--out", str(tmp_path / "d"), "--train-tokenizer",
            "--vocab-size", str(VOCAB)]
    assert main(argv) == 2
    assert f"input {tmp_path} is a folder: pass an existing --input file" in one_error_line(capsys.readouterr().err,
                                                                                          "prepare-data")


def test_training_copies_of_validation_documents_are_counted_and_said(corpus, tmp_path, capsys):
    texts = docs(60)
    source = tmp_path / "dup.jsonl"
    source.write_bytes(jsonl(texts + texts[:7] + docs(140, start=60)))
    out = tmp_path / "d"
    assert main(prepare_argv(source, out, "--train-tokenizer", "--vocab-size", str(VOCAB), "--num-val-docs", "60")) == 0
    err = capsys.readouterr().err
    assert "warning: 7 training documents are exact copies of validation documents" in err
    assert json.loads(manifest_path(out, VOCAB).read_text())["train_copies_of_val_docs"] == 7


# ------------------------------------------------------------------------------------------------
# demo


@pytest.mark.parametrize(("extra", "message"), [
    (["--num-val-docs", "0"], "--num-val-docs must be positive, got 0"),
    (["--max-steps", "-1"], "--max-steps must be positive, got -1"),
    (["--config", "nope"], "--config nope: no such file or config; pass a file or one of"),
])
def test_demo_refuses_settings_it_cannot_run(tmp_path, capsys, extra, message):
    assert main(["demo", "--out", str(tmp_path / "demo"), *extra]) == 2
    assert message in one_error_line(capsys.readouterr().err, "demo")
    assert not (tmp_path / "demo").exists()  # refused before anything is written


def test_demo_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "demo_run"
    out.write_text("not a folder\n")
    assert main(["demo", "--out", str(out)]) == 2
    assert f"{out} is a file, not a folder" in one_error_line(capsys.readouterr().err, "demo")


# ------------------------------------------------------------------------------------------------
# sweep: everything checked before the first launch


def sweep_argv(out: Path, *args: str) -> list[str]:
    return ["sweep", "--config", "tiny_cpu", "--out", str(out), *args]


SWEEP_CASES = [
    (["--grid", "model.optim.matix_lr=0.02,0.03"],
     "--grid model.optim.matix_lr: `lit-golf fit` has no such key; did you mean model.optim.matrix_lr?"),
    (["--grid", "model.optim.matrix_lr=0.02,fast"], "--grid model.optim.matrix_lr=fast: --model.optim.matrix_lr"),
    (["--grid", "data.max_val_docs=3"], '"data.max_val_docs" must be given via "model.evaluation.max_docs"'),
    (["--grid", "model.optim.matrix_lr=0.02", "--grid", "model.optim.matrix_lr=0.03"],
     "--grid model.optim.matrix_lr is given twice: put all its values in one --grid model.optim.matrix_lr=V1,V2"),
    (["--grid", "model.optim.matrix_lr=0.02,0.02"], "--grid model.optim.matrix_lr repeats the value '0.02'"),
    (["--seeds", "1,2,1"], "--seeds repeats seed 1: give each seed once"),
    (["--grid", "seed_everything=1,2"], "--grid seed_everything: the sweep sets it for every trial; use --seeds"),
    (["--grid", "model.optim.matrix_lr=0.02,0.03", "--", "--model.optim.matrix_lr", "0.05"],
     "--grid model.optim.matrix_lr is also given after -- (--model.optim.matrix_lr), which would override it"),
    (["--", "--trainer.logger", "false"], "--trainer.logger after --: the sweep sets trainer.logger for every trial"),
    (["--", "--trainer.max_stps", "3"], "the trials' configs and arguments after -- do not parse: unrecognized "
                                        "arguments: --trainer.max_stps 3"),
    (["--grid", "model.optim.matrix_lr=0.02/,0.02?"], "make the same trial folder matrix_lr=0.02___seed=1337"),
]


@pytest.mark.parametrize(("args", "message"), SWEEP_CASES)
def test_sweep_refuses_a_plan_before_launching_anything(tmp_path, capsys, args, message):
    out = tmp_path / "sweep"
    assert main(sweep_argv(out, *args)) == 2
    assert message in one_error_line(capsys.readouterr().err, "sweep")
    assert not (out / "trials").exists()


def test_sweep_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.write_text("x\n")
    assert main(sweep_argv(out)) == 2
    assert f"{out} is a file, not a folder" in one_error_line(capsys.readouterr().err, "sweep")


def test_sweep_does_not_resume_a_trial_launched_with_other_arguments(tmp_path, capsys):
    """A trial folder's results stand in the table only for the run the sweep asks for."""
    out = tmp_path / "sweep"
    trial = out / "trials" / "matrix_lr=0.02__seed=1337"
    trial.mkdir(parents=True)
    (trial / "trial.json").write_text(json.dumps(["fit", "--config", "tiny_cpu", "--trainer.max_steps", "3"]))
    (trial / "results.json").write_text(json.dumps({"val_bpb_post_quant": 3.0}))
    assert main(sweep_argv(out, "--grid", "model.optim.matrix_lr=0.02")) == 2
    line = one_error_line(capsys.readouterr().err, "sweep")
    assert f"--out {out} already holds trial matrix_lr=0.02__seed=1337, launched with other arguments" in line, line


def test_sweep_whose_trials_record_nothing_fails(tmp_path, capsys, monkeypatch):
    """A trial that exits 0 without the number the sweep tabulates is a failure, not an empty row under rc 0."""
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0))
    out = tmp_path / "sweep"
    assert main(sweep_argv(out, "--command", "run", "--seeds", "1,2")) == 1
    line = one_error_line(capsys.readouterr().err, "sweep")
    assert "2 of 2 trials recorded no final_bpb" in line and "launch.log" in line, line
    assert (out / "results.csv").is_file()


# ------------------------------------------------------------------------------------------------
# help


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_tool_help_states_each_default_once(tool, capsys):
    with pytest.raises(SystemExit):
        main([tool, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert not re.search(r"\(default: [^)]*\)\s*\(default", text), text
    assert not re.search(r"default: [^)]*default:", text), text
