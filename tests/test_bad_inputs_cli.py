"""Bad input on the `lit-golf` command line (issue 13, sections 2 and 3, the CLI side).

Every case stops with rc 2 and one line `lit-golf <cmd>: error: ...` that names the problem and the fix:
no traceback, no 60-line usage dump, never torch's advice to load with weights_only=False. All of them
fail before any training starts. Also here: `test`/`validate`/`export` from a checkpoint use its EMA
average (as the fit's own artifact does) unless `--model.use_ema_weights false`.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from test_eval_support import small_gpt

from lit_golf.callbacks.ema import EMA
from lit_golf.cli import main, run_lightning_cli
from lit_golf.data.datamodule import GolfDataModule
from lit_golf.export import pipeline
from lit_golf.model import GPT
from lit_golf.module import GolfLightningModule
from lit_golf.schedule import TrainingConfig

REPO = Path(__file__).resolve().parent.parent
TINY_CPU = REPO / "configs" / "tiny_cpu.yaml"
RECORD = REPO / "configs" / "record.yaml"
# `test` as fast as it goes: plain bpb of a few documents, no TTT.
QUICK_TEST = ["--model.evaluation.ttt.enabled", "false", "--model.evaluation.global_sgd.enabled", "false",
              "--model.evaluation.max_docs", "4", "--trainer.logger", "false"]



@pytest.fixture(scope="module")
def ema_ckpt(tiny_data, tmp_path_factory) -> Path:
    """A real checkpoint of a 2-step fit with an EMA (decay 0.5), saved after the last step and before the
    EMA is copied into the model at train end: its raw weights and its EMA average differ."""
    out = tmp_path_factory.mktemp("ema_ckpt")
    L.seed_everything(0)
    module = GolfLightningModule(gpt=small_gpt(tiny_data.vocab_size),
                                 training=TrainingConfig(compile=False, compile_warmup=False))
    dm = GolfDataModule(data_dir=str(tiny_data.data_dir), vocab_size=tiny_data.vocab_size, train_seq_len=128,
                        train_batch_tokens=1024, tokens_per_microbatch=512, eval_seq_len=128, val_batch_seqs=4,
                        cu_bucket=16, cu_min_len=32, max_val_docs=20)
    saver = ModelCheckpoint(dirpath=out, filename="ema", every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, max_epochs=-1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=[EMA(decay=0.5), saver])
    trainer.fit(module, dm)
    path = out / "ema.ckpt"
    ckpt = torch.load(path, weights_only=False)
    shadow = ckpt["callbacks"]["EMA"]["shadow"]
    assert any(not torch.equal(ckpt["state_dict"][f"gpt.{k}"], v) for k, v in shadow.items())
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    """Files that are not what their flag wants."""
    d = tmp_path_factory.mktemp("bad")
    files = {name: d / name for name in ("garbage.ckpt", "text.ckpt", "empty.ckpt", "tensor.ckpt", "state_dict.ckpt",
                                         "other_model.ckpt", "pickle.ckpt", "bad.yaml", "unknown_key.yaml",
                                         "derived_key.yaml", "vocab600.ckpt")}
    files["garbage.ckpt"].write_bytes(bytes((i * 37 + 11) % 256 for i in range(3000)))
    files["text.ckpt"].write_text("this is not a checkpoint\n")
    files["empty.ckpt"].write_bytes(b"")
    torch.save(torch.zeros(3), files["tensor.ckpt"])
    torch.save(GPT(small_gpt(64)).state_dict(), files["state_dict.ckpt"])  # weights without Lightning's frame
    torch.save({"state_dict": {"net.weight": torch.zeros(2)}, "hyper_parameters": {}}, files["other_model.ckpt"])
    files["pickle.ckpt"].write_bytes(pickle.dumps({"state_dict": {"gpt.x": 1}}, protocol=4))
    files["bad.yaml"].write_text("trainer:\n  max_steps: [1\n")
    files["unknown_key.yaml"].write_text("model:\n  gpt:\n    bogus_field: 3\n")
    files["derived_key.yaml"].write_text("data:\n  val_batch_seqs: 16\n")  # a copy of record.yaml before issue 15
    gpt = GPT(small_gpt(600))  # a checkpoint of a model with another vocabulary than the data's
    torch.save({"state_dict": {f"gpt.{k}": v for k, v in gpt.state_dict().items()},
                "hyper_parameters": {"gpt": asdict(gpt.config)}}, files["vocab600.ckpt"])
    files["folder"] = d
    files["missing.ckpt"] = d / "missing.ckpt"
    return files


def common(tiny_data, tmp_path) -> list[str]:
    return ["--config", str(TINY_CPU), "--data.data_dir", str(tiny_data.data_dir),
            "--model.gpt.vocab_size", str(tiny_data.vocab_size),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]


def assert_one_line_error(rc, err: str, command: str, needles) -> str:
    assert rc == 2, err
    assert "Traceback" not in err and "usage:" not in err and "weights_only=False" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"lit-golf {command}: error: ")]
    assert len(lines) == 1, err
    assert len(err.strip().splitlines()) <= 3, err  # the error line, at most a log line or two before it
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def fill(args, values: dict) -> list[str]:
    return [re.sub(r"\{([^}]+)\}", lambda m: str(values[m.group(1)]), a) for a in args]


# (id, argv after `common` with {placeholders}, needles of the error line)
CASES = [
    # which weights to score
    ("test-without-weights", ["test"], ["test needs weights", "--artifact PATH", "--ckpt PATH", "randomly"]),
    ("validate-without-weights", ["validate"], ["validate needs weights", "--artifact PATH", "--ckpt PATH"]),
    ("test-artifact-and-ckpt", ["test", "--artifact", "{folder}/a.ptz", "--ckpt", "{ckpt}"],
     ["both --artifact", "a.ptz", "--ckpt", "ema.ckpt", "pass one"]),
    ("validate-artifact-and-ckpt", ["validate", "--ckpt", "{ckpt}", "--artifact", "{folder}/a.ptz"],
     ["both --artifact", "pass one"]),
    # vocabulary of the model vs the data's tokenizer
    ("fit-model-vocab-smaller", ["fit", "--model.gpt.vocab_size", "256"],
     ["vocab_size=256", "vocab_size=512", "fineweb_512_bpe.model", "--model.gpt.vocab_size 512"]),
    ("fit-model-vocab-larger", ["fit", "--model.gpt.vocab_size", "1024"],
     ["vocab_size=1024", "vocab_size=512", "fineweb_512_bpe.model"]),
    ("test-ckpt-vocab", ["test", "--ckpt", "{vocab600.ckpt}"],
     ["vocab_size=600", "from the checkpoint", "vocab_size=512", "fineweb_512_bpe.model"]),
    ("export-ckpt-vocab", ["export", "--ckpt", "{vocab600.ckpt}", "--out_dir", "{folder}/art"],
     ["vocab_size=600", "vocab_size=512", "fineweb_512_bpe.model"]),
    # GPUs asked for on a CPU-only box
    ("accelerator-cuda-on-cpu", ["fit", "--trainer.accelerator", "cuda"],
     ["needs CUDA GPUs", "configs/tiny_cpu.yaml"]),
    # --ckpt that is no checkpoint of a fit
    ("test-ckpt-garbage", ["test", "--ckpt", "{garbage.ckpt}"],
     ["garbage.ckpt is not a Lightning checkpoint written by `lit-golf fit`"]),
    ("test-ckpt-text", ["test", "--ckpt", "{text.ckpt}"], ["text.ckpt is not a Lightning checkpoint"]),
    ("test-ckpt-empty", ["test", "--ckpt", "{empty.ckpt}"], ["empty.ckpt is not a Lightning checkpoint"]),
    ("test-ckpt-tensor", ["test", "--ckpt", "{tensor.ckpt}"], ["tensor.ckpt is not a Lightning checkpoint"]),
    ("test-ckpt-bare-state-dict", ["test", "--ckpt", "{state_dict.ckpt}"],
     ["state_dict.ckpt is not a Lightning checkpoint", "without 'state_dict'"]),
    ("test-ckpt-other-model", ["test", "--ckpt", "{other_model.ckpt}"],
     ["other_model.ckpt is not a Lightning checkpoint", "no 'gpt.*' weights"]),
    ("test-ckpt-plain-pickle", ["test", "--ckpt", "{pickle.ckpt}"], ["pickle.ckpt is not a Lightning checkpoint"]),
    ("test-ckpt-missing", ["test", "--ckpt", "{missing.ckpt}"], ["missing.ckpt does not exist", "--ckpt PATH"]),
    ("test-ckpt-folder", ["test", "--ckpt", "{folder}"], ["is a directory, not a file"]),
    ("export-ckpt-garbage", ["export", "--ckpt", "{garbage.ckpt}"], ["garbage.ckpt is not a Lightning checkpoint"]),
    ("export-ckpt-missing", ["export", "--ckpt", "{missing.ckpt}"], ["missing.ckpt does not exist"]),
    ("fit-resume-ckpt-garbage", ["fit", "--ckpt", "{garbage.ckpt}"], ["garbage.ckpt is not a Lightning checkpoint"]),
    # model architecture nonsense (GPTConfig)
    ("num-layers-0", ["fit", "--model.gpt.num_layers", "0"], ["num_layers=0 must be >= 1"]),
    ("num-heads-0", ["fit", "--model.gpt.num_heads", "0"], ["num_heads=0 must be >= 1"]),
    ("num-kv-heads-0", ["fit", "--model.gpt.num_kv_heads", "0"], ["num_kv_heads=0 must be >= 1"]),
    ("model-dim-negative", ["fit", "--model.gpt.model_dim", "-8"], ["model_dim=-8 must be >= 1"]),
    ("heads-do-not-divide-dim", ["fit", "--model.gpt.num_heads", "3"], ["model_dim=128 is not divisible by num_heads=3"]),
    ("mlp-mult-0", ["fit", "--model.gpt.mlp_mult", "0"], ["mlp_mult=0.0 must be positive"]),
    ("rope-dims-odd", ["fit", "--model.gpt.rope_dims", "7"], ["rope_dims=7 must be even"]),
    ("loop-beyond-layers", ["fit", "--model.gpt.loop_end", "9"], ["loop_end=9 must lie inside 0..3"]),
    ("eval-seq-len-0", ["fit", "--model.evaluation.plain.seq_len", "0"],
     ["invalid EvalConfig: evaluation.plain.seq_len=0 must be positive"]),
    ("ttt-chunk-beyond-context", ["fit", "--model.evaluation.ttt.chunk_size", "512"],
     ["invalid EvalConfig: evaluation.ttt.chunk_size=512 must not exceed evaluation.ttt.context_len=256"]),
    # what jsonargparse rejects: the key and the reason, not the usage
    ("unknown-model-key", ["fit", "--model.gpt.bogus", "3"],
     ["unrecognized arguments: --model.gpt.bogus 3", "see `lit-golf fit --help`"]),
    ("unknown-top-level-key", ["fit", "--bogus", "3"], ["unrecognized arguments: --bogus 3"]),
    # data.vocab_size follows model.gpt.vocab_size: one source, the derived one is refused
    ("derived-data-vocab", ["fit", "--data.vocab_size", "512"],
     ['"data.vocab_size" must be given via "model.gpt.vocab_size"']),
    # the validation batch and document count belong to model.evaluation (one owner per knob)
    ("derived-data-val-batch", ["fit", "--data.val_batch_seqs", "8"],
     ['"data.val_batch_seqs" must be given via "model.evaluation.plain.batch_seqs"']),
    ("derived-data-max-val-docs", ["fit", "--data.max_val_docs", "8"],
     ['"data.max_val_docs" must be given via "model.evaluation.max_docs"']),
    # flags of the layout before issue 15 name their new place
    ("old-flat-eval-flag", ["fit", "--model.evaluation.ttt_lora_rank", "8"],
     ["--model.evaluation.ttt_lora_rank", "model.evaluation.ttt_lora_rank is now model.evaluation.ttt.lora_rank"]),
    ("derived-data-max-val-tokens", ["fit", "--data.max_val_tokens", "4096"],
     ['"data.max_val_tokens" must be given via "model.evaluation.max_tokens"']),
    ("max-tokens-below-one-window", ["fit", "--model.evaluation.max_tokens", "200"],
     ["evaluation.max_tokens=200 must exceed evaluation.plain.seq_len=256 (one evaluation window)"]),
    ("unknown-trainer-key", ["fit", "--trainer.bogus", "3"], ["unrecognized arguments: --trainer.bogus 3"]),
    ("int-not-a-number", ["fit", "--model.gpt.num_layers", "abc"], ["--model.gpt.num_layers", "int", "abc"]),
    ("float-not-a-number", ["fit", "--model.gpt.mlp_mult", "lots"], ["--model.gpt.mlp_mult", "float", "lots"]),
    ("trainer-int-not-a-number", ["fit", "--trainer.max_steps", "abc"], ["--trainer.max_steps", "abc"]),
    ("bool-not-a-bool", ["test", "--ckpt", "{ckpt}", "--model.use_ema_weights", "maybe"],
     ["--model.use_ema_weights", "bool", "maybe"]),
    ("flag-without-value", ["fit", "--trainer.max_steps"], ["--trainer.max_steps", "expected one argument"]),
    ("config-missing", ["fit", "--config", "{folder}/nope.yaml"], ["--config", "does not exist", "nope.yaml"]),
    ("config-not-yaml", ["fit", "--config", "{bad.yaml}"], ["bad.yaml is not valid YAML", "line 3"]),
    ("config-unknown-key", ["fit", "--config", "{unknown_key.yaml}"], ["does not accept option 'model.gpt.bogus_field'"]),
    ("config-derived-key", ["fit", "--config", "{derived_key.yaml}"],  # not silently overwritten by the link
     ["derived_key.yaml sets data.val_batch_seqs, which follows model.evaluation.plain.batch_seqs: set that instead"]),
    ("unknown-subcommand", ["fitt"], ["invalid choice: 'fitt'", "see `lit-golf --help`"]),
]


@pytest.mark.parametrize(("argv", "needles"), [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_bad_input_stops_with_one_line(argv, needles, tiny_data, ema_ckpt, bad, tmp_path, capsys):
    command, *rest = fill(argv, {**bad, "ckpt": ema_ckpt})
    rc = main([command, *common(tiny_data, tmp_path), *rest])
    assert_one_line_error(rc, capsys.readouterr().err, command, needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the record config runs where CUDA is")
def test_record_config_on_a_cpu_only_box(tiny_data, tmp_path, capsys):
    rc = main(["fit", "--config", str(RECORD), "--data.data_dir", str(tiny_data.data_dir)])
    assert_one_line_error(rc, capsys.readouterr().err, "fit",
                          ["trainer.accelerator=gpu needs CUDA GPUs", "--config configs/tiny_cpu.yaml"])


@pytest.mark.parametrize("command", ["fit", "test", "export"])
def test_help_still_prints_the_full_help(command, capsys):
    try:
        rc = main([command, "--help"])
    except SystemExit as exit_:  # jsonargparse ends --help with sys.exit(0)
        rc = exit_.code
    out = capsys.readouterr().out
    assert rc in (0, None)
    assert "--model.gpt" in out and "--model.use_ema_weights" in out and "--ckpt_path" in out
    assert len(out.splitlines()) > 100


# ------------------------------------------------------------------ the checkpoint's EMA or its raw weights
def ema_and_raw(ckpt_path: Path) -> tuple[dict, dict]:
    ckpt = torch.load(ckpt_path, weights_only=False)
    raw = {k[len("gpt."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("gpt.")}
    return ckpt["callbacks"]["EMA"]["shadow"], raw


def assert_weights(state: dict, expected: dict) -> None:
    assert expected.keys() <= state.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor.to(state[name].dtype)), name


@pytest.mark.parametrize(("command", "use_ema"), [("test", True), ("test", False), ("validate", True)])
def test_test_and_validate_from_a_checkpoint_score_its_ema_unless_told(command, use_ema, tiny_data, ema_ckpt,
                                                                      tmp_path, capsys):
    flag = [] if use_ema else ["--model.use_ema_weights", "false"]
    cli = run_lightning_cli([command, *common(tiny_data, tmp_path), "--ckpt", str(ema_ckpt), *QUICK_TEST, *flag,
                             "--trainer.default_root_dir", str(tmp_path)])  # where config.yaml goes
    shadow, raw = ema_and_raw(ema_ckpt)
    assert_weights(cli.model.gpt.state_dict(), shadow if use_ema else raw)
    err = capsys.readouterr().err
    assert f"{command}: checkpoint {ema_ckpt}: " + ("EMA average (decay 0.5" if use_ema else "raw weights") in err


@pytest.mark.parametrize("use_ema", [True, False])
def test_export_from_a_checkpoint_quantizes_its_ema_unless_told(use_ema, tiny_data, ema_ckpt, tmp_path,
                                                               monkeypatch, capsys):
    class Exported(Exception):
        pass

    def capture(gpt, *args, **kwargs):
        raise Exported({k: v.detach().clone() for k, v in gpt.state_dict().items()})

    monkeypatch.setattr(pipeline, "export_model", capture)  # the weights GPTQ would get, without running it
    flag = [] if use_ema else ["--model.use_ema_weights", "false"]
    with pytest.raises(Exported) as exported:
        run_lightning_cli(["export", *common(tiny_data, tmp_path), "--ckpt", str(ema_ckpt),
                           "--out_dir", str(tmp_path / "art"), *flag])
    shadow, raw = ema_and_raw(ema_ckpt)
    assert_weights(exported.value.args[0], shadow if use_ema else raw)
    assert ("EMA average" if use_ema else "raw weights (--model.use_ema_weights false") in capsys.readouterr().err


def test_resuming_a_fit_keeps_the_raw_weights(ema_ckpt, tiny_data):
    """Only test/validate swap the EMA in: a resumed fit continues from the weights it trained."""
    module = GolfLightningModule(gpt=small_gpt(tiny_data.vocab_size))
    shadow, raw = ema_and_raw(ema_ckpt)
    for stage, expected in ((TrainerFn.FITTING, raw), (TrainerFn.TESTING, shadow)):
        ckpt = torch.load(ema_ckpt, weights_only=False)
        module._trainer = SimpleNamespace(state=SimpleNamespace(fn=stage), ckpt_path=str(ema_ckpt))
        module.on_load_checkpoint(ckpt)
        assert_weights({k[len("gpt."):]: v for k, v in ckpt["state_dict"].items()}, expected)
    module._trainer = None


def test_module_setup_refuses_a_vocab_other_than_the_data_s(tiny_data):
    """The same check for Trainer.fit called from Python (the CLI checks before building anything)."""
    module = GolfLightningModule(gpt=small_gpt(256))
    module._trainer = SimpleNamespace(datamodule=GolfDataModule(data_dir=str(tiny_data.data_dir), vocab_size=512))
    with pytest.raises(ValueError, match=r"vocab_size=256 .* vocab_size=512 \(tokenizer .*fineweb_512_bpe.model\)"):
        module.setup("fit")
    module._trainer = None
