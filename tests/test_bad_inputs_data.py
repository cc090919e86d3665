"""Bad input on the data / tokenizer / artifact / training side stops with one line (issue 13, sections 2-3).

Every case asserts the exit code (or the error type of a library call) and the message: one line that
names the file or setting and the fix, never a traceback and never exit code 0.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import yaml

from lit_golf import demo
from lit_golf.cli import main
from lit_golf.config import GPTConfig
from lit_golf.data.datamodule import GolfDataModule, TokenizerMismatch
from lit_golf.data.shards import (
    dataset_dir,
    file_sha256,
    find_shards,
    manifest_path,
    read_shard,
    tokenizer_path,
    write_shard,
)
from lit_golf.export.config import ExportConfig
from lit_golf.export.pipeline import artifact_header, tokenizer_record
from lit_golf.export.serialize import PASSTHROUGH, StoredTensor, pack, read_artifact, write_artifact
from lit_golf.model import GPT, unbank_state_dict

REPO = Path(__file__).resolve().parent.parent
TINY_CPU = REPO / "configs" / "tiny_cpu.yaml"
VOCAB = 512  # conftest's tiny_data
EVAL_QUICK = ["--model.evaluation.ttt.enabled", "false", "--model.evaluation.max_docs", "4"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def one_error_line(err: str, command: str) -> str:
    """The single `lit-golf <command>: error:` line of `err`; no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"lit-golf {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------------------
# prepare-data: inputs that leave no training document, unreadable inputs (item 2)


def jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


def docs(n: int, start: int = 0) -> list[str]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma"]
    return [f"document {i}: " + " ".join(words[(i * j) % len(words)] for j in range(12)) for i in range(start, start + n)]


def truncated_gzip(n_docs: int) -> bytes:
    blob = gzip.compress(jsonl(docs(n_docs)))
    return blob[: len(blob) // 2]


TRAIN_300 = ["--train-tokenizer", "--vocab-size", "300"]

PREPARE_CASES = [
    pytest.param({"d.jsonl": jsonl(docs(3))}, ["TOK", "--num-val-docs", "3"],
                 r"input \S*d\.jsonl holds 3 documents and --num-val-docs 3 keeps all of them for validation, leaving "
                 r"none for training: pass --num-val-docs below 3", id="num-val-docs-equals-document-count"),
    pytest.param({"d.jsonl": jsonl(docs(3))}, [*TRAIN_300, "--num-val-docs", "5"],
                 r"input \S*d\.jsonl holds 3 documents and --num-val-docs 5 keeps all of them for validation.*"
                 r"below 3", id="num-val-docs-above-document-count-when-training-the-tokenizer"),
    pytest.param({"d.jsonl": jsonl(docs(30))}, ["TOK", "--num-val-docs", "10", "--max-docs", "10"],
                 r"--num-val-docs 10 must be below --max-docs 10: otherwise no document is left for training",
                 id="num-val-docs-not-below-max-docs"),
    pytest.param({"d.jsonl": b""}, TRAIN_300, r"input \S*d\.jsonl holds no documents: pass --input files with text",
                 id="empty-input-when-training-the-tokenizer"),
    pytest.param({"d.txt": b"\n\n\n"}, ["TOK"], r"input \S*d\.txt holds no documents", id="blank-lines-only"),
    pytest.param({"a.txt": b"", "b.jsonl": b"\n"}, ["TOK"],
                 r"the 2 inputs \(\S*a\.txt, \S*b\.jsonl\) hold no documents", id="several-empty-inputs"),
    pytest.param({"d.txt": b"first\n   \n \t \n"}, [*TRAIN_300, "--num-val-docs", "1"],
                 r"SentencePiece could not train a 300-token tokenizer on the training documents \(.*\): pass more text",
                 id="whitespace-only-training-documents"),
    pytest.param({"d.txt": b"hello\n\xff\xfe bad\n"}, ["TOK", "--num-val-docs", "1"],
                 r"\S*d\.txt:2 is not valid UTF-8 \(invalid start byte at byte 0\): fix or drop the line",
                 id="bad-utf8-txt"),
    pytest.param({"d.jsonl": jsonl(docs(400)) + b'{"text": "broken \xc3\x28 here"}\n' + jsonl(docs(5))},
                 [*TRAIN_300, "--num-val-docs", "10"],
                 r"\S*d\.jsonl:401 is not valid UTF-8 \(invalid continuation byte at byte 17\)",
                 id="bad-utf8-deep-in-jsonl-while-training-the-tokenizer"),
    pytest.param({"d.txt.gz": gzip.compress(b"one\ntwo\nthr\xe9e\nfour\n")}, ["TOK", "--num-val-docs", "1"],
                 r"\S*d\.txt\.gz:3 is not valid UTF-8", id="bad-utf8-in-gzip"),
    pytest.param({"d.jsonl": jsonl(docs(20)) + b"not json\n"}, [*TRAIN_300, "--num-val-docs", "5"],
                 r"\S*d\.jsonl:21 is not a JSON object with a 'text' string \(Expecting value.*\): fix the line",
                 id="bad-json-line-while-training-the-tokenizer"),
    pytest.param({"d.jsonl": jsonl(docs(20)) + b'{"body": "x"}\n'}, [*TRAIN_300, "--num-val-docs", "5"],
                 r"\S*d\.jsonl:21 is not a JSON object with a 'text' string \(no 'text' field\): fix the line or "
                 r"pass --text-field", id="missing-text-field-while-training-the-tokenizer"),
    pytest.param({"d.jsonl.gz": b"plain text, not gzip\n"}, ["TOK"],
                 r"\S*d\.jsonl\.gz cannot be read as gzip at its start \(Not a gzipped file.*\): the file is corrupt "
                 r"or truncated, or its suffix does not match its compression", id="not-gzip"),
    pytest.param({"d.jsonl.gz": truncated_gzip(2000)}, ["TOK"],
                 r"\S*d\.jsonl\.gz cannot be read as gzip after line \d+ \(Compressed file ended",
                 id="truncated-gzip"),
    pytest.param({"d.txt.xz": b"plain text, not xz\n"}, ["TOK"], r"\S*d\.txt\.xz cannot be read as xz at its start",
                 id="not-xz"),
    pytest.param({"d.jsonl": jsonl(docs(30))}, [*TRAIN_300, "--tokenizer-train-docs", "0"],
                 r"--tokenizer-train-docs must be positive, got 0", id="zero-tokenizer-train-docs"),
]


@pytest.mark.parametrize(("files", "extra", "message"), PREPARE_CASES)
def test_prepare_data_refuses_with_one_line(tmp_path, tiny_data, capsys, files, extra, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    inputs = [arg for name in files for arg in ("--input", str(tmp_path / name))]
    extra = [arg for e in extra for arg in (["--tokenizer", str(tiny_data.tokenizer)] if e == "TOK" else [e])]
    out = tmp_path / "out"
    assert main(["prepare-data", *inputs, "--out", str(out), "--workers", "1", "--quiet", *extra]) == 2
    line = one_error_line(capsys.readouterr().err, "prepare-data")
    assert re.search(message, line), line
    assert not list(out.rglob("*.bin")), "a refused prepare-data leaves no shards behind"


def test_tokenizer_is_trained_on_training_documents_only(tmp_path, tiny_data):
    """Validation text must not leak into the tokenizer: a word only the validation documents use gets no piece."""
    val = ["qzxjvk " * 300] * 40
    train = [json.loads(line)["text"] for line in tiny_data.corpus.read_text(encoding="utf-8").splitlines()[:600]]
    (tmp_path / "d.jsonl").write_bytes(jsonl(val + train))
    out = tmp_path / "out"
    argv = ["prepare-data", "--input", str(tmp_path / "d.jsonl"), "--out", str(out), "--train-tokenizer",
            "--vocab-size", str(VOCAB), "--num-val-docs", "40", "--workers", "1", "--quiet"]
    assert main(argv) == 0
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path(out, VOCAB)))
    pieces = [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    assert not [p for p in pieces if len(p.strip("▁")) > 1 and set(p.strip("▁")) <= set("qzxjvk")]
    manifest = json.loads(manifest_path(out, VOCAB).read_text())
    assert manifest["splits"]["val"]["docs"] == 40 and manifest["splits"]["train"]["docs"] == 600


# ------------------------------------------------------------------------------------------------
# fit / test on a data directory that does not fit together (items 1, 3, 4)


def other_tokenizer(source: Path, target: Path) -> None:
    """A tokenizer of the same size that is not the same file (one piece scored differently)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(source.read_bytes())
    proto.pieces[300].score -= 1.0
    target.write_bytes(proto.SerializeToString())


@pytest.fixture(scope="module")
def data_copy(tiny_data, tmp_path_factory):
    """A fresh copy of the tiny data directory, to break in one way."""

    def make() -> Path:
        target = tmp_path_factory.mktemp("data")
        shutil.copytree(tiny_data.data_dir, target, dirs_exist_ok=True)
        return target

    return make


@pytest.fixture(scope="module")
def no_val_data(tiny_data, tmp_path_factory) -> Path:
    """prepare-data with --num-val-docs 0: train shards only."""
    out = tmp_path_factory.mktemp("no_val")
    assert main(["prepare-data", "--input", str(tiny_data.corpus), "--tokenizer", str(tiny_data.tokenizer),
                 "--num-val-docs", "0", "--max-docs", "200", "--out", str(out), "--workers", "1", "--quiet"]) == 0
    return out


def cli_args(data_dir: Path, logs: Path, *extra: str) -> list[str]:
    return ["--config", str(TINY_CPU), "--data.data_dir", str(data_dir), "--model.gpt.vocab_size", str(VOCAB), "--trainer.logger.init_args.save_dir", str(logs), *extra]


def drop_train_shards(data_dir: Path) -> None:
    for path in find_shards(data_dir, "train", VOCAB):
        path.unlink()


def swap_tokenizer(data_dir: Path) -> None:
    path = tokenizer_path(data_dir, VOCAB)
    other_tokenizer(path, path)


def corrupt_manifest(data_dir: Path) -> None:
    manifest_path(data_dir, VOCAB).write_text('{"vocab_size": 512, "tokenizer": ')


def published_style_manifest(data_dir: Path) -> None:
    """The enwiki/FineWeb manifests name the tokenizer as one string: `<file> sha256 <hex>`."""
    manifest_path(data_dir, VOCAB).write_text(json.dumps({"tokenizer": f"fineweb_512_bpe.model sha256 {'ab' * 32}"}))


def val_shard_as_train(data_dir: Path) -> None:
    """A copy of the validation shard among the training ones."""
    (val,) = find_shards(data_dir, "val", VOCAB)
    shutil.copyfile(val, val.with_name("fineweb_train_000099.bin"))


def val_from_mid_document(data_dir: Path) -> None:
    """A validation stream that does not start at a document (cut by hand, or not in the upstream format)."""
    (val,) = find_shards(data_dir, "val", VOCAB)
    write_shard(val, read_shard(val)[5:])


SHORT_WINDOW = ["--model.evaluation.plain.seq_len", "16", "--model.evaluation.sliding.stride", "8"]

DATA_CASES = [
    # data that cannot mean what it is used for (issue 26, section 4)
    pytest.param("fit", val_shard_as_train, [], r"train shard \S+fineweb_train_000099\.bin is the same as validation "
                 r"shard fineweb_val_000000\.bin: the model would be scored on text it trained on",
                 id="train-shard-is-the-val-shard"),
    pytest.param("fit", val_from_mid_document, [], r"validation shard \S+fineweb_val_000000\.bin does not start with "
                 r"BOS \(id 1\)", id="val-starts-mid-document"),
    pytest.param("test", val_from_mid_document, [], r"does not start with BOS", id="test-val-starts-mid-document"),
    pytest.param("fit", lambda d: None, ["--data.train_batch_tokens", "1048576", "--data.tokens_per_microbatch", "2048"],
                 r"the train shards in \S+ hold 226,147 tokens, fewer than one optimizer step "
                 r"\(data\.train_batch_tokens=1,048,576\): every step would repeat the same text",
                 id="less-training-data-than-one-step"),
    pytest.param("fit", lambda d: None, ["--model.evaluation.max_docs", "2"],
                 r"the validation split in \S+ holds 84 tokens \(as model\.evaluation\.max_docs / max_tokens keep it\), "
                 r"not more than one evaluation window \(model\.evaluation\.plain\.seq_len=256\)",
                 id="validation-shorter-than-one-window"),
    pytest.param("test", lambda d: None, [*SHORT_WINDOW, "--model.evaluation.max_tokens", "30"],
                 r"model\.evaluation\.max_tokens=30 is below the first validation document's 37 tokens: raise it "
                 r"\(the evaluation scores whole documents\)", id="max-tokens-below-the-first-document"),
    pytest.param("fit", None, [], r"the validation split in \S+ is empty \(train shards but no fineweb_val_\*\.bin; "
                 r"prepare-data ran with --num-val-docs 0\?\): re-run `lit-golf prepare-data` with --num-val-docs N > 0",
                 id="fit-with-an-empty-validation-split"),
    pytest.param("test", None, [], r"the validation split in \S+ is empty .*--num-val-docs N > 0",
                 id="test-with-an-empty-validation-split"),
    pytest.param("fit", drop_train_shards, [], r"the training split in \S+ is empty \(val shards but no "
                 r"fineweb_train_\*\.bin\): re-run `lit-golf prepare-data` with --num-val-docs below the number of "
                 r"documents", id="fit-with-an-empty-training-split"),
    pytest.param("fit", lambda d: None, ["--model.evaluation.max_docs", "0"],
                 r"invalid EvalConfig: evaluation\.max_docs=0 must be positive or None \(all documents\)",
                 id="max-docs-0"),
    pytest.param("fit", swap_tokenizer, [], "MISMATCH", id="fit-with-another-same-size-tokenizer"),
    pytest.param("test", swap_tokenizer, [], "MISMATCH", id="test-with-another-same-size-tokenizer"),
    pytest.param("fit", published_style_manifest, [], r"is not the one the shards were made with: \S+manifest\.json "
                 rf"records sha256 {'ab' * 32}", id="published-style-manifest-names-another-tokenizer"),
    pytest.param("fit", corrupt_manifest, [], r"manifest \S+manifest\.json is not readable JSON \(.*\): restore it, "
                 r"or re-run `lit-golf prepare-data`", id="corrupt-manifest"),
]


@pytest.fixture(scope="module")
def good_artifact(tiny_data, tmp_path_factory) -> Path:
    """An artifact of the tiny_cpu model that records the tiny data's tokenizer (what `test` needs to run)."""
    record = {"file": tiny_data.tokenizer.name, "sha256": file_sha256(tiny_data.tokenizer)}
    return write_tiny_artifact(tmp_path_factory.mktemp("artifact") / "artifact.ptz", record)


@pytest.mark.parametrize(("command", "breakage", "extra", "message"), DATA_CASES)
def test_fit_and_test_refuse_data_that_does_not_fit_together(
    tmp_path, tiny_data, data_copy, no_val_data, good_artifact, capsys, command, breakage, extra, message
):
    if breakage is None:
        data_dir = no_val_data
    else:
        data_dir = data_copy()
        breakage(data_dir)
    if command == "test":
        extra = [*extra, "--artifact", str(good_artifact), *EVAL_QUICK]
    assert main([command, *cli_args(data_dir, tmp_path / "logs", *extra)]) == 2
    line = one_error_line(capsys.readouterr().err, command)
    if message == "MISMATCH":  # one line naming both files and both hashes
        tokenizer, manifest = tokenizer_path(data_dir, VOCAB), manifest_path(data_dir, VOCAB)
        ours, recorded = file_sha256(tokenizer), file_sha256(tiny_data.tokenizer)
        message = (rf"tokenizer {re.escape(str(tokenizer))} \(sha256 {ours}\) is not the one the shards were made with: "
                   rf"{re.escape(str(manifest))} records sha256 {recorded}; put that tokenizer back or re-run "
                   r"`lit-golf prepare-data`")
    assert re.search(message, line), line
    if "max_docs" in line:
        assert "shard" not in line  # the setting is too small, not the data


def test_matching_manifest_and_tokenizer_pass(tiny_data):
    dm = GolfDataModule(data_dir=str(tiny_data.data_dir), vocab_size=VOCAB, train_batch_tokens=4096,
                        tokens_per_microbatch=2048)
    dm.setup("fit")
    assert dm.tokenizer_record() == {"file": "fineweb_512_bpe.model", "sha256": file_sha256(tiny_data.tokenizer)}


# ------------------------------------------------------------------------------------------------
# artifacts record the tokenizer they were trained with (item 1)


def tiny_cpu_gpt() -> GPT:
    config = yaml.safe_load(TINY_CPU.read_text())["model"]["gpt"]
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**config, "vocab_size": VOCAB})).eval()


def write_tiny_artifact(path: Path, tokenizer: dict | None) -> Path:
    """An artifact of the tiny_cpu model (float16 passthrough, no GPTQ: fast), with or without a tokenizer record."""
    gpt = tiny_cpu_gpt()
    stored = {k: StoredTensor(PASSTHROUGH, v.detach().half() if v.is_floating_point() else v.detach().clone())
              for k, v in unbank_state_dict(gpt.state_dict(), gpt.config).items()}
    blob, _ = pack(artifact_header(gpt, ExportConfig(), tokenizer), stored, "lzma")
    return write_artifact(path, blob)


def test_artifact_header_records_the_datamodule_tokenizer(tiny_data, tmp_path):
    dm = GolfDataModule(data_dir=str(tiny_data.data_dir), vocab_size=VOCAB)
    header, _ = read_artifact(write_tiny_artifact(tmp_path / "a.ptz", tokenizer_record(dm)))
    assert header["tokenizer"] == {"file": "fineweb_512_bpe.model", "sha256": file_sha256(tiny_data.tokenizer)}
    assert tokenizer_record(object()) is None  # a datamodule that cannot say records nothing


def test_artifact_from_another_tokenizer_is_refused_at_test(tiny_data, tmp_path, capsys):
    other = tmp_path / "other.model"
    other_tokenizer(tiny_data.tokenizer, other)
    record = {"file": "fineweb_512_bpe.model", "sha256": file_sha256(other)}
    art = write_tiny_artifact(tmp_path / "art" / "artifact.ptz", record)
    assert main(["test", *cli_args(tiny_data.data_dir, tmp_path / "logs", "--artifact", str(art), *EVAL_QUICK)]) == 2
    line = one_error_line(capsys.readouterr().err, "test")
    expected = (rf"artifact {re.escape(str(art))} was trained with tokenizer fineweb_512_bpe\.model \(sha256 "
                rf"{record['sha256']}\) but the data's tokenizer {re.escape(str(tiny_data.tokenizer))} has sha256 "
                rf"{file_sha256(tiny_data.tokenizer)}: evaluate it on the data it was trained on")
    assert re.search(expected, line), line


def test_artifact_without_a_tokenizer_record_loads_with_a_warning(tiny_data, tmp_path, capsys):
    art = write_tiny_artifact(tmp_path / "old.ptz", None)  # as exported before the record existed
    assert main(["test", *cli_args(tiny_data.data_dir, tmp_path / "logs", "--artifact", str(art), *EVAL_QUICK)]) == 0
    err = capsys.readouterr().err
    (warning,) = [line for line in err.splitlines() if "records no tokenizer" in line]
    assert f"warning: artifact {art} records no tokenizer" in warning and str(tiny_data.tokenizer) in warning
    assert "lit-golf test: error" not in err


def test_library_check_raises_the_mismatch_type(tiny_data):
    dm = GolfDataModule(data_dir=str(tiny_data.data_dir), vocab_size=VOCAB)
    with pytest.raises(TokenizerMismatch, match=r"artifact a\.ptz was trained with tokenizer t\.model \(sha256 0+\)"):
        dm.check_artifact_tokenizer({"tokenizer": {"file": "t.model", "sha256": "0" * 64}}, "a.ptz")
    dm.check_artifact_tokenizer({"tokenizer": tokenizer_record(dm)}, "a.ptz")  # the right one passes


# ------------------------------------------------------------------------------------------------
# a diverging run stops at the first non-finite loss check (item 5)


DIVERGE_OVERLAY = """
wallclock: {budget_seconds: 600.0, reserve_seconds: 4.0, sync_every_steps: 1}  # agreeing (loss checked) every step
gptq:
  config: {calibration_batches: 2, calibration_seq_len: 128, calibration_batch_seqs: 2}
"""


def test_diverged_training_stops_with_one_line(tiny_data, tmp_path, capsys):
    overlay = tmp_path / "every_step.yaml"
    overlay.write_text(DIVERGE_OVERLAY)
    lrs = [arg for name in ("matrix_lr", "embed_lr", "scalar_lr") for arg in (f"--model.optim.{name}", "1e6")]
    small = ["--data.train_batch_tokens", "512", "--data.tokens_per_microbatch", "512", "--model.evaluation.max_docs", "20",
             "--trainer.max_steps", "20", "--trainer.val_check_interval", "20"]
    argv = ["fit", *cli_args(tiny_data.data_dir, tmp_path / "logs", "--config", str(overlay), *lrs, *small)]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err, "fit")
    found = re.search(r"training diverged: the train loss is (nan|inf|-inf) at step (\d+) \(checked every 1 "
                      r"steps\): the learning rate is likely too high \(model\.optim\.matrix_lr / embed_lr / "
                      r"scalar_lr\), or the data is bad", line)
    assert found and int(found.group(2)) < 20, line  # stopped at the first bad step, long before the end
    assert not list((tmp_path / "logs").rglob("artifact.ptz")), "nothing is exported from a diverged run"


def test_export_refuses_non_finite_weights(tmp_path):
    from lit_golf.callbacks.export import check_finite_weights
    from lit_golf.module import TrainingDiverged

    gpt = tiny_cpu_gpt()
    check_finite_weights(gpt, 3)  # finite weights pass
    with torch.no_grad():
        gpt.qo_bank[0, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"training diverged: 1 weight tensors hold NaN/inf at step 7 "
                                               r"\(e\.g\. qo_bank\), nothing exported: the learning rate is likely"):
        check_finite_weights(gpt, 7)
    assert issubclass(TrainingDiverged, ValueError)  # the CLI's USER_ERRORS report it in one line


# ------------------------------------------------------------------------------------------------
# `lit-golf demo` twice, and a demo whose step fails (item 6)


class StopAfterData(Exception):
    """Raised by the stand-in for the fit step: these tests are about the data step."""


@pytest.fixture
def demo_without_training(monkeypatch):
    import lit_golf.lightning_cli

    def refuse(argv):
        raise StopAfterData(argv[0])

    monkeypatch.setattr(lit_golf.lightning_cli, "run_lightning_cli", refuse)


DEMO_ARGS = ["--max-docs", "700", "--vocab-size", str(VOCAB), "--num-val-docs", "20"]


def test_demo_reuses_its_data_on_a_second_run_and_says_so(tmp_path, capsys, demo_without_training):
    out = tmp_path / "demo"
    with pytest.raises(StopAfterData):
        demo.cli_main(["--out", str(out), *DEMO_ARGS])
    first = capsys.readouterr()
    assert f"2/4 data: SentencePiece BPE vocab {VOCAB} trained on the training documents" in first.out
    shards = {p: p.stat().st_mtime_ns for p in dataset_dir(out / "data", VOCAB).glob("*.bin")}

    with pytest.raises(StopAfterData):
        demo.cli_main(["--out", str(out), *DEMO_ARGS])
    second = capsys.readouterr()
    assert "2/4 data: reusing the tokenizer and shards an earlier demo made from this corpus" in second.out
    assert "trained" not in second.out and "error" not in second.err
    assert {p: p.stat().st_mtime_ns for p in dataset_dir(out / "data", VOCAB).glob("*.bin")} == shards

    with pytest.raises(StopAfterData):  # other settings: rebuilt (prepare-data --overwrite), not a stale reuse
        demo.cli_main(["--out", str(out), *DEMO_ARGS[:-1], "30"])
    third = capsys.readouterr()
    assert "trained on the training documents" in third.out and "error" not in third.err
    assert json.loads(manifest_path(out / "data", VOCAB).read_text())["splits"]["val"]["docs"] == 30


def test_demo_fails_when_its_data_step_fails(tmp_path, capsys, demo_without_training):
    argv = ["demo", "--out", str(tmp_path / "demo"), "--max-docs", "50", "--vocab-size", "300", "--num-val-docs", "50"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err, "prepare-data")
    assert "holds 50 documents and --num-val-docs 50 keeps all of them for validation" in line
    assert "2/4 data: prepare-data failed (its error is above); demo stopped" in captured.out
    assert "trained" not in captured.out
