"""Bad input around run folders (issue 26): `fit`/`test`/`export` never damage a record and never end in a
traceback or in rc 0 with nothing done.

Each case stops with rc 2 and one line `lit-golf <cmd>: error: ...` naming the file or flag and the fix,
and leaves the finished run it was pointed at exactly as it was: resuming a finished run, a checkpoint of
another architecture or a truncated one, a length that trains nothing, the logger off, an artifact that
exists, a folder that cannot be written, a disk that fills. Failed launches and `export` leave no empty
`version_N` folder behind.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from lit_golf import files
from lit_golf.cli import main
from tests.test_bad_inputs_cli import assert_one_line_error
from tests.test_run import QUICK_FIT, files_of, in_process_runs_on_one_thread, read_json, tiny_config

pytestmark = pytest.mark.usefixtures(in_process_runs_on_one_thread.__name__)


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory, in_process_runs_on_one_thread) -> Path:
    """The run folder of a finished 2-step fit (checkpoint, artifact, results.json)."""
    logs = tmp_path_factory.mktemp("finished") / "logs"
    assert main(["fit", *tiny_config(tiny_data, logs), *QUICK_FIT]) == 0
    return logs / "tiny_cpu" / "version_0"


@pytest.fixture
def unfinished(finished, tmp_path) -> Path:
    """A run killed after its checkpoint: the finished run's `last.ckpt` and `config.yaml`, nothing else."""
    run = tmp_path / "logs" / "tiny_cpu" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(finished / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    shutil.copyfile(finished / "config.yaml", run / "config.yaml")
    return run


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


# (id, argv after the command's config, needles of the error line); nothing to train or nowhere to record
NOTHING_DONE = [
    ("max-steps-0", ["--trainer.max_steps", "0"], ["--trainer.max_steps 0 trains nothing", "positive max_steps"]),
    ("max-epochs-0", ["--trainer.max_epochs", "0"], ["--trainer.max_epochs 0 trains nothing"]),
    ("limit-train-batches-0", ["--trainer.limit_train_batches", "0"], ["--trainer.limit_train_batches 0 trains nothing"]),
    ("logger-off", ["--trainer.logger", "false"],
     ["trainer.logger is off", "would have none", "--trainer.logger.init_args.save_dir"]),
]


@pytest.mark.parametrize(("argv", "needles"), [pytest.param(a, n, id=i) for i, a, n in NOTHING_DONE])
def test_a_fit_that_would_record_nothing_stops_with_one_line(argv, needles, tiny_data, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a logger-less fit would have put its files
    rc, err = run_cli(["fit", *tiny_config(tiny_data, tmp_path / "logs"), *argv], capsys)
    assert_one_line_error(rc, err, "fit", needles)
    assert list(tmp_path.iterdir()) == []  # no run folder, no checkpoint or results in the working directory


def test_a_test_with_the_logger_off_says_where_it_records(finished, tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test_0").mkdir()  # an earlier one's: not written over
    artifact = tmp_path / "artifact.ptz"
    shutil.copyfile(finished / "artifact" / "artifact.ptz", artifact)
    rc, err = run_cli(["test", *tiny_config(tiny_data, tmp_path / "logs"), "--artifact", str(artifact),
                       "--trainer.logger", "false", "--model.evaluation.ttt.enabled", "false"], capsys)
    assert rc == 0, err
    assert "test: trainer.logger is off (no TensorBoard, no metrics.csv): results.json, train.log and config.yaml " \
           "go to test_1" in err
    assert read_json(tmp_path / "test_1" / "results.json")["final_bpb"] > 0 and not list((tmp_path / "test_0").iterdir())


def test_a_test_on_a_data_dir_without_train_shards_keeps_its_scores(finished, tiny_data, tmp_path, capsys):
    """An eval-only box carries val shards and the tokenizer only: the test's record lists what is there (no
    train files) instead of failing after the evaluation and losing its scores (the ninth session's lease)."""
    data = tmp_path / "eval_only"
    shutil.copytree(tiny_data.data_dir, data)
    shards = data / "datasets" / f"fineweb10B_sp{tiny_data.vocab_size}"
    for train in shards.glob("fineweb_train_*.bin"):
        train.unlink()
    artifact = tmp_path / "artifact.ptz"
    shutil.copyfile(finished / "artifact" / "artifact.ptz", artifact)
    config = tiny_config(tiny_data, tmp_path / "logs")
    config[config.index(str(tiny_data.data_dir))] = str(data)
    rc, err = run_cli(["test", *config, "--artifact", str(artifact), "--model.evaluation.ttt.enabled", "false"], capsys)
    assert rc == 0, err
    (record,) = (tmp_path / "logs").rglob("results.json")
    results = read_json(record)
    assert results["final_bpb"] > 0 and results.get("train_files", []) == []
    assert [Path(f).name for f in results["val_files"]] == ["fineweb_val_000000.bin"]


def test_resuming_a_finished_run_stops_and_leaves_it_as_it_was(finished, tiny_data, capsys):
    before = files_of(finished)
    rc, err = run_cli(["fit", *tiny_config(tiny_data, finished.parent.parent), "--ckpt_path", "last"], capsys)
    line = assert_one_line_error(rc, err, "fit", ["--ckpt_path last picked", f"run {finished} is finished",
                                                  "records 2 steps", "without --ckpt_path last"])
    assert "--trainer.max_steps" in line  # the other fix: train on from its weights into a new folder
    assert files_of(finished) == before and sorted(p.name for p in finished.parent.iterdir()) == ["version_0"]


def test_a_checkpoint_with_no_step_left_stops(finished, tiny_data, tmp_path, capsys):
    ckpt = finished / "checkpoints" / "last.ckpt"
    rc, err = run_cli(["fit", *tiny_config(tiny_data, tmp_path / "logs"), "--ckpt_path", str(ckpt),
                       "--trainer.max_steps", "2"], capsys)
    assert_one_line_error(rc, err, "fit", ["at step 2 and --trainer.max_steps is 2", "nothing would train",
                                           "raise --trainer.max_steps", f"lit-golf export --ckpt {ckpt}"])
    assert not (tmp_path / "logs").exists()


def test_resuming_with_another_architecture_names_the_fields(unfinished, tiny_data, capsys):
    before = files_of(unfinished)
    rc, err = run_cli(["fit", *tiny_config(tiny_data, unfinished.parent.parent), "--ckpt_path", "last",
                       "--model.gpt.model_dim", "64"], capsys)
    assert_one_line_error(rc, err, "fit", ["holds another model", "model.gpt.model_dim 128 (checkpoint) vs 64 (config)",
                                           f"{unfinished}/config.yaml"])
    assert files_of(unfinished) == before


@pytest.mark.parametrize("command", ["fit", "test"])
def test_a_truncated_checkpoint_stops_with_one_line(command, unfinished, tiny_data, capsys):
    last = unfinished / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # what a disk that filled mid-write left
    flag = ["--ckpt_path", "last"] if command == "fit" else ["--ckpt", "last"]
    rc, err = run_cli([command, *tiny_config(tiny_data, unfinished.parent.parent), *flag], capsys)
    assert_one_line_error(rc, err, command, [str(last), "truncated, e.g. by a full disk"])


def test_test_with_ckpt_last_and_no_checkpoint(tiny_data, tmp_path, capsys):
    rc, err = run_cli(["test", *tiny_config(tiny_data, tmp_path / "logs"), "--ckpt", "last"], capsys)
    assert_one_line_error(rc, err, "test", ["--ckpt last: no last.ckpt under", "--ckpt PATH"])


def test_export_refuses_an_existing_artifact_unless_asked_and_never_a_runs_own(finished, tiny_data, tmp_path,
                                                                             capsys):
    config, ckpt = tiny_config(tiny_data, tmp_path / "logs"), str(finished / "checkpoints" / "last.ckpt")
    config += ["--gptq.config.calibration_batches", "1", "--gptq.config.brotli_quality", "4"]  # cheap exports
    before = files_of(finished)
    for overwrite in ("false", "true"):
        rc, err = run_cli(["export", *config, "--ckpt", ckpt, "--out_dir", str(finished / "artifact"),
                           "--overwrite", overwrite], capsys)
        assert_one_line_error(rc, err, "export", [f"the artifact of run {finished}", "export into another --out_dir"])
    assert files_of(finished) == before
    recorded = read_json(finished / "results.json")  # the run's record is true to its files
    assert recorded["model_bytes"] == (finished / "artifact" / "artifact.ptz").stat().st_size

    out = tmp_path / "exported"  # an artifact outside any run: replaced only when asked
    shutil.copytree(finished / "artifact", out)
    rc, err = run_cli(["export", *config, "--ckpt", ckpt, "--out_dir", str(out)], capsys)
    assert_one_line_error(rc, err, "export", [f"--out_dir {out} already holds artifact.ptz", "--overwrite true"])
    rc, err = run_cli(["export", *config, "--ckpt", ckpt, "--out_dir", str(out), "--overwrite", "true"], capsys)
    assert rc == 0, err
    assert err.count("bytes with code") == 1  # the size table, once
    assert not (tmp_path / "logs").exists()  # no logger folder for an export
    assert read_json(out / "artifact.json")["artifact_bytes"] == (out / "artifact.ptz").stat().st_size


def test_a_fit_into_an_existing_artifact_folder_stops_before_training(finished, tiny_data, tmp_path, capsys):
    out = tmp_path / "art"
    out.mkdir()
    shutil.copyfile(finished / "artifact" / "artifact.ptz", out / "artifact.ptz")
    rc, err = run_cli(["fit", *tiny_config(tiny_data, tmp_path / "logs"), "--gptq.config.out_dir", str(out)], capsys)
    assert_one_line_error(rc, err, "fit", [f"--gptq.config.out_dir {out} already holds artifact.ptz"])


def read_only_filesystem(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system")


@pytest.mark.parametrize("command", ["fit", "export"])
def test_a_target_folder_that_cannot_be_written(command, finished, tiny_data, tmp_path, capsys, monkeypatch):
    config = tiny_config(tiny_data, tmp_path / "logs")
    extra = ["--ckpt", str(finished / "checkpoints" / "last.ckpt"), "--out_dir", str(tmp_path / "out")] \
        if command == "export" else []
    flag = "--out_dir" if command == "export" else "--trainer.logger.init_args.save_dir"
    (tmp_path / "a_file").write_text("")
    blocked = ["--out_dir", str(tmp_path / "a_file" / "out")] if command == "export" else \
        ["--trainer.logger.init_args.save_dir", str(tmp_path / "a_file" / "logs")]
    rc, err = run_cli([command, *config, *extra, *blocked], capsys)  # a file where a folder should be
    assert_one_line_error(rc, err, command, [flag, "cannot write there", "is a file, not a folder"])

    monkeypatch.setattr(files.tempfile, "TemporaryFile", read_only_filesystem)  # root writes through chmod 555
    rc, err = run_cli([command, *config, *extra], capsys)
    assert_one_line_error(rc, err, command, [flag, "cannot write there (Read-only file system)"])


def test_a_disk_that_fills_during_a_command_ends_in_one_line(monkeypatch, capsys):
    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "logs/tiny_cpu/version_0/checkpoints/last.ckpt")

    monkeypatch.setattr("lit_golf.cli.run_lightning_cli", full)
    rc, err = run_cli(["fit", "--config", "tiny_cpu"], capsys)
    assert_one_line_error(rc, err, "fit", ["No space left on device: logs/tiny_cpu/version_0/checkpoints/last.ckpt",
                                           "free space"])


def test_a_failed_fit_leaves_no_empty_run_folder(tiny_data, tmp_path, capsys):
    logs = tmp_path / "logs"
    # fails in the datamodule's setup, after the loggers made the run folder
    rc, err = run_cli(["fit", *tiny_config(tiny_data, logs), "--data.train_batch_tokens", "1000",
                       "--data.tokens_per_microbatch", "512"], capsys)
    assert_one_line_error(rc, err, "fit", ["train_batch_tokens=1000 is not a multiple"])
    assert not logs.exists()
