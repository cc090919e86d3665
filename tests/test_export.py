"""Export: GPTQ vs round-to-nearest, Hessians, the artifact format, size table, budget, callback, loader."""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.distributed as dist
from test_eval_support import TINY_GPT, run_on_ranks
from torch.utils.data import DataLoader, TensorDataset

from lit_golf import artifact
from lit_golf.config import GPTConfig
from lit_golf.export import serialize
from lit_golf.export.budget import ArtifactTooLarge, SizeRow, check_budget, size_table
from lit_golf.export.code_size import PACKAGE_DIR, code_files, measure_code, minify, submission_script
from lit_golf.export.config import ExportConfig
from lit_golf.export.gptq import dequantize, gptq_quantize, max_code, rtn_quantize
from lit_golf.export.hessians import collect_hessians
from lit_golf.export.pipeline import (
    build_artifact,
    calibration_batches,
    export_from_checkpoint,
    export_model,
    quantize_model,
)
from lit_golf.export.serialize import (
    ArtifactFormatError,
    StoredTensor,
    byte_shuffle,
    byte_unshuffle,
    pack,
    read_artifact,
    unpack,
)
from lit_golf.model import GPT, rebank_state_dict, unbank_state_dict

TINY = {**TINY_GPT, "vocab_size": 128, "model_dim": 64, "num_heads": 4, "num_kv_heads": 2, "mlp_mult": 4.0}
# Everything in quantized_matrices() quantized (tiny matrices), fast compression, a budget that fits.
SMALL_EXPORT = dict(passthrough_max_numel=0, brotli_quality=5, budget_bytes=10**9, calibration_batches=3,
                    calibration_seq_len=32, calibration_batch_seqs=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_gpt(seed: int = 0, looping: bool = True, **overrides) -> GPT:
    """Tiny model with every feature on and random (non-identity) weights, as after training."""
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for param in gpt.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    gpt.looping_active = looping
    return gpt.eval()


def token_batches(n: int, shape=(2, 32), vocab: int = 128, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, shape, generator=gen) for _ in range(n)]


class FakeDataModule:
    """Stands in for GolfDataModule.calibration_batches: seeded, identical on every call."""

    def __init__(self, vocab: int = 128):
        self.vocab = vocab
        self.calls = []

    def calibration_batches(self, n, seq_len, batch_seqs, seed=None):
        self.calls.append((n, seq_len, batch_seqs, seed))
        return iter(token_batches(n, (batch_seqs, seq_len), self.vocab, seed=seed or 0))


# ----------------------------------------------------------------------------- quantizers
def correlated_inputs(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Inputs with strongly correlated features, like real activations (a few shared directions)."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 4, generator=gen) @ torch.randn(4, dim, generator=gen)
    return 3.0 * shared + torch.randn(n, dim, generator=gen) @ torch.randn(dim, dim, generator=gen) / dim**0.5


def test_rtn_error_is_within_half_a_scale_step_for_every_unclipped_element():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 300, generator=gen)
    weight[0, :5] = torch.tensor([40.0, -40.0, 9.0, -9.0, 0.0])  # outliers beyond the clip range
    weight[1] = 0.0  # an all-zero row must not produce NaN
    bits, clip = 4, 3.0
    codes, scale = rtn_quantize(weight, bits, clip)
    assert codes.dtype == torch.int8 and scale.dtype == torch.float16
    expected_scale = (weight.std(dim=1) * clip / max_code(bits)).half().clamp_min(2.0**-24)
    assert torch.equal(scale, expected_scale)
    step = scale.float()[:, None].expand_as(weight)
    error = (weight - dequantize(codes, scale)).abs()
    unclipped = (weight / step).abs() <= max_code(bits)
    assert unclipped.float().mean() > 0.9
    assert bool((error[unclipped] <= step[unclipped] / 2 * (1 + 1e-6)).all())
    clipped = ~unclipped
    assert clipped.any()
    assert torch.equal(codes[clipped].abs(), torch.full_like(codes[clipped], max_code(bits)))
    assert torch.equal(codes[clipped].sign(), weight[clipped].sign().to(torch.int8))
    assert not codes[1].any() and torch.isfinite(dequantize(codes, scale)).all()


def test_gptq_with_uncorrelated_inputs_is_round_to_nearest():
    """With a diagonal Hessian there is no error to push onto other columns: GPTQ must equal RTN."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(48, 200, generator=gen)
    hessian = torch.diag(torch.rand(200, generator=gen) + 0.1)
    codes, scale = gptq_quantize(weight, hessian, bits=6, clip_sigmas=12.0, block_size=64)
    rtn_codes, rtn_scale = rtn_quantize(weight, 6, 12.0)
    assert torch.equal(scale, rtn_scale)
    assert torch.equal(codes, rtn_codes)


@pytest.mark.parametrize("bits", [4, 6])
def test_gptq_output_error_is_lower_than_rtn_on_correlated_inputs(bits):
    inputs = correlated_inputs(4096, 256)
    hessian = inputs.T @ inputs / inputs.shape[0]
    weight = torch.randn(128, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    gptq = dequantize(*gptq_quantize(weight, hessian, bits, clip_sigmas=12.0))
    rtn = dequantize(*rtn_quantize(weight, bits, 12.0))
    gptq_error = torch.linalg.norm((weight - gptq) @ inputs.T)
    rtn_error = torch.linalg.norm((weight - rtn) @ inputs.T)
    assert gptq_error < 0.75 * rtn_error, (float(gptq_error), float(rtn_error))


def test_gptq_zeroes_dead_columns_and_checks_shapes():
    inputs = correlated_inputs(512, 64)
    inputs[:, [3, 17]] = 0.0  # features that never fire
    hessian = inputs.T @ inputs / 512
    weight = torch.randn(32, 64)
    codes, scale = gptq_quantize(weight, hessian, 6, 12.0, block_size=16)
    assert not codes[:, [3, 17]].any()
    assert codes.abs().max() <= max_code(6) and codes[:, 0].any()
    with pytest.raises(ValueError, match="does not match weight columns 64"):
        gptq_quantize(weight, hessian[:10, :10], 6, 12.0)


# ----------------------------------------------------------------------------- Hessians
def test_hessians_are_the_mean_of_x_xT_over_every_token_and_visit():
    gpt = tiny_gpt()
    batches = [torch.randint(0, 128, (1, 16)), torch.randint(0, 128, (3, 8))]  # different token counts
    seen = []
    handle = gpt.blocks[1].attn.qkv_tap.register_forward_hook(lambda m, i, o: seen.append(i[0].reshape(-1, 64)))
    hessians = collect_hessians(gpt, batches)
    handle.remove()
    assert len(seen) == 4  # block 1 is looped: two visits per forward
    inputs = torch.cat(seen)
    torch.testing.assert_close(hessians["blocks.1.attn.q"], inputs.T @ inputs / inputs.shape[0])
    assert hessians["blocks.1.attn.k"] is hessians["blocks.1.attn.q"]
    names = {m.name for m in gpt.quantized_matrices()}
    assert set(hessians) == names
    assert hessians["blocks.0.mlp.down"].shape == (256, 256) and hessians["tok_emb"].shape == (64, 64)
    with pytest.raises(ValueError, match="no calibration tokens"):
        collect_hessians(gpt, [])


def test_hessians_restore_training_mode_and_all_reduce_in_a_process_group(tmp_path):
    gpt = tiny_gpt().train()
    batches = token_batches(2)
    alone = collect_hessians(gpt, batches)
    assert gpt.training
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        grouped = collect_hessians(gpt, batches)
    finally:
        dist.destroy_process_group()
    for name, hessian in alone.items():
        torch.testing.assert_close(grouped[name], hessian)


def test_calibration_batches_split_disjointly_across_ranks():
    cfg = ExportConfig(calibration_batches=5, calibration_seq_len=8, calibration_batch_seqs=2, calibration_seed=3)
    shares = [list(calibration_batches(FakeDataModule(), cfg, rank, 2)) for rank in range(2)]
    everything = token_batches(5, (2, 8), seed=3)
    assert [len(s) for s in shares] == [3, 2]
    assert all(torch.equal(a, b) for a, b in zip(shares[0] + shares[1], everything[0::2] + everything[1::2], strict=True))
    with pytest.raises(ValueError, match="has no calibration_batches"):
        calibration_batches(object(), cfg)


# ----------------------------------------------------------------------------- file format
def test_byte_shuffle_groups_bytes_by_position_and_round_trips():
    assert byte_shuffle(b"\x01\x02\x03\x04\x05") == b"\x01\x03\x05\x02\x04"
    data = bytes(range(256)) * 3 + b"\x07"
    assert byte_unshuffle(byte_shuffle(data)) == data


def sample_tensors() -> dict[str, StoredTensor]:
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(-31, 32, (40, 24), generator=gen, dtype=torch.int8)
    return {
        "w": StoredTensor("attn", codes, torch.rand(40, generator=gen).half(), 6),
        "gain": StoredTensor("passthrough", torch.randn(24, generator=gen).half()),
        "bf": StoredTensor("passthrough", torch.randn(3, 4, 2, generator=gen).bfloat16()),
        "step": StoredTensor("passthrough", torch.tensor(7, dtype=torch.int64)),
        "mask": StoredTensor("passthrough", torch.tensor([True, False, True])),
    }


@pytest.mark.parametrize("compressor", ["brotli", "lzma"])
def test_pack_unpack_round_trips_every_dtype_deterministically(compressor, monkeypatch):
    monkeypatch.setattr(serialize, "CHUNK_BYTES", 256)  # several chunks per section
    tensors = sample_tensors()
    blob, parts = pack({"note": "x"}, tensors, compressor, brotli_quality=5)
    assert blob == pack({"note": "x"}, tensors, compressor, brotli_quality=5)[0]
    assert sum(p.compressed for p in parts.values()) == len(blob)
    assert set(parts) == {"header", "attn", "passthrough"}
    header, loaded = unpack(blob)
    assert header["note"] == "x" and header["compressor"] == compressor
    assert list(loaded) == list(tensors)
    for name, stored in tensors.items():
        got = loaded[name]
        assert got.data.dtype == stored.data.dtype and torch.equal(got.data, stored.data), name
        assert (got.scale is None) == (stored.scale is None) and got.bits == stored.bits and got.group == stored.group
    assert torch.equal(loaded["w"].scale, tensors["w"].scale)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One tiny export shared by the format tests: (report, model, batches, config)."""
    gpt, batches = tiny_gpt(), token_batches(3)
    cfg = ExportConfig(**SMALL_EXPORT)
    report = export_model(gpt, batches, cfg, tmp_path_factory.mktemp("export"))
    return report, gpt, batches, cfg


def test_artifact_round_trip_reproduces_dequantized_weights_and_logits_bit_exactly(exported):
    report, gpt, batches, cfg = exported
    stored, _ = quantize_model(gpt, collect_hessians(gpt, batches), cfg)  # recomputed independently of the file
    expected = {}
    for name, s in stored.items():
        expected[name] = dequantize(s.data, s.scale) if s.quantized else s.data.float()
    loaded = artifact.load(report.artifact_path)
    assert not loaded.training and loaded.looping_active and loaded.config == gpt.config
    flat = unbank_state_dict(loaded.state_dict(), loaded.config)
    assert set(flat) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(flat[name], tensor), name
    assert sum(s.quantized for s in stored.values()) == len(gpt.quantized_matrices())

    reference = GPT(gpt.config)
    reference.load_state_dict(rebank_state_dict(expected, gpt.config))
    reference.looping_active = True
    tokens = token_batches(1, (2, 24), seed=9)[0]
    with torch.no_grad():
        logits = loaded(tokens)
        assert torch.equal(logits, reference.eval()(tokens))
        original = gpt(tokens)
    cosine = torch.nn.functional.cosine_similarity(logits.flatten(), original.flatten(), dim=0)
    assert cosine > 0.85, float(cosine)  # quantization noise (amplified by a random net), not another model


def test_export_is_deterministic_and_writes_a_json_report(exported, tmp_path):
    report, gpt, batches, cfg = exported
    again = export_model(gpt, batches, cfg, tmp_path)
    assert again.artifact_path.read_bytes() == report.artifact_path.read_bytes()
    summary = json.loads(report.json_path.read_text())
    assert summary["artifact_bytes"] == report.artifact_path.stat().st_size
    assert summary["total_bytes"] == summary["artifact_bytes"] + summary["code_bytes"] == report.total_bytes
    # the counted code is written beside the artifact: the file the run folder and the submission ship
    assert (report.artifact_path.parent / "train_gpt.py").read_bytes() == report.code.script
    assert len(report.code.script) == summary["code_bytes"]
    assert summary["export_config"]["matrix_bits"] == 6 and summary["gpt_config"]["num_layers"] == 4
    assert [row["part"] for row in summary["parts"]] == ["attn", "mlp", "embed", "passthrough", "header", "code"]
    assert 0 < report.relative_errors["mlp"] < 0.05 and 0 < report.relative_errors["embed"] < 0.05


def test_small_matrices_pass_through_as_float16():
    gpt = tiny_gpt()
    hessians = collect_hessians(gpt, token_batches(1))
    kv_numel = gpt.config.kv_dim * gpt.config.model_dim
    stored, _ = quantize_model(gpt, hessians, ExportConfig(passthrough_max_numel=kv_numel))
    assert not stored["blocks.0.attn.k"].quantized and stored["blocks.0.attn.k"].data.dtype == torch.float16
    assert stored["blocks.0.attn.q"].quantized and stored["blocks.0.attn.q"].bits == 6
    assert stored["tok_emb.weight"].bits == 7 and stored["tok_emb.weight"].group == "embed"
    assert stored["skip_weights"].data.dtype == torch.float16


def damaged(blob: bytes, where: int) -> bytes:
    return blob[:where] + bytes([blob[where] ^ 0xFF]) + blob[where + 1:]


def test_corrupt_truncated_and_foreign_files_are_rejected_naming_the_file(exported, tmp_path):
    blob = exported[0].artifact_path.read_bytes()
    cases = {
        "truncated.ptz": (blob[:-100], "truncated artifact"),
        "empty.ptz": (b"", "truncated artifact"),
        "tail.ptz": (blob + b"\0", "corrupt artifact"),
        "payload.ptz": (damaged(blob, len(blob) - 500), "corrupt artifact .checksum mismatch in section"),
        "header.ptz": (damaged(blob, serialize.PREAMBLE.size + 3), "corrupt artifact .header checksum"),
        "foreign.ptz": (b"PK\x03\x04" + blob[4:], "not a lit_golf artifact"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ArtifactFormatError, match=f"{re.escape(str(path))}: {message}") as info:
            artifact.load(path)
        assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.ptz does not exist"):
        read_artifact(tmp_path / "missing.ptz")


# ----------------------------------------------------------------------------- sizes and budget
def test_budget_check_trips_with_the_table_in_the_message(tmp_path):
    cfg = ExportConfig(**{**SMALL_EXPORT, "budget_bytes": 1000})
    with pytest.raises(ArtifactTooLarge) as info:
        export_model(tiny_gpt(), token_batches(1), cfg, tmp_path)
    first, *table = str(info.value).splitlines()
    assert re.match(r"artifact \+ code = [\d,]+ bytes, [\d,]+ over the 1,000-byte budget; ", first)
    for part in ("attn", "mlp", "embed", "passthrough", "header", "code", "total", "budget", "margin"):
        assert any(line.startswith(part) for line in table), part
    assert (tmp_path / "artifact.ptz").is_file()  # kept for inspection


def test_size_table_adds_up():
    rows = [SizeRow("attn", 300, 900, 4, 800, 1e-3), SizeRow("code", 50, 120, 3)]
    table = size_table(rows, 1000)
    assert re.search(r"^total\s+800\s+1,020\s+350\s+3\.500$", table, re.M)
    assert re.search(r"^margin\s+\+650$", table, re.M)
    check_budget(rows, 350)
    with pytest.raises(ArtifactTooLarge, match="351 bytes, 1 over"):
        check_budget(rows + [SizeRow("header", 1)], 350)


def test_code_size_is_the_size_of_the_submission_script_holding_what_a_run_imports():
    names = {p.relative_to(PACKAGE_DIR.parent).as_posix() for p in code_files()}
    for needed in ("lit_golf/model.py", "lit_golf/artifact.py", "lit_golf/module.py", "lit_golf/cli.py",
                   "lit_golf/callbacks/export.py", "lit_golf/export/gptq.py", "lit_golf/lightning_cli.py",
                   "lit_golf/kernels/fused_ce.py",  # imported inside a function: still shipped
                   "lit_golf/export/schemes/lqer_asym.py", "lit_golf/data/__init__.py"):
        assert needed in names, needed
    for tool in ("lit_golf/data/prepare.py", "lit_golf/data/download.py", "lit_golf/demo.py", "lit_golf/sweep.py",
                 "lit_golf/submission/submit.py", "lit_golf/data/caseops.py"):  # never run by a submission
        assert tool not in names, tool
    size = measure_code("brotli", 11, config_text="seed_everything: 1\n")
    assert size.compressed_bytes == len(submission_script("seed_everything: 1\n", "brotli", 11))
    assert 0 < size.compressed_bytes < size.minified_bytes < size.raw_bytes


def test_minify_drops_comments_and_docstrings_but_keeps_behaviour():
    source = '"""Module doc."""\n\n# a comment\ndef f(x):\n    """Doc."""\n    return x + 1  # trailing\n\n\nclass C:\n    """Only a docstring."""\n'
    small = minify(source)
    assert "doc" not in small.lower() and "#" not in small and len(small) < len(source) / 2
    namespace = {}
    exec(small, namespace)
    assert namespace["f"](2) == 3 and isinstance(namespace["C"](), namespace["C"])


# ----------------------------------------------------------------------------- callback and checkpoint
class RecordingExperiment:
    def __init__(self):
        self.texts = []

    def add_text(self, tag, text, global_step=None):
        self.texts.append((tag, text, global_step))


def fake_trainer(log_dir, datamodule):
    return SimpleNamespace(
        log_dir=str(log_dir), default_root_dir=str(log_dir), datamodule=datamodule, global_rank=0, world_size=1,
        is_global_zero=True, strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj),
        logger=SimpleNamespace(experiment=RecordingExperiment()), global_step=7,
    )


def test_callback_exports_into_the_log_dir_and_publishes_the_table(tmp_path):
    from lit_golf.callbacks.export import GPTQExport

    trainer, module = fake_trainer(tmp_path, FakeDataModule()), SimpleNamespace(gpt=tiny_gpt(), device=torch.device("cpu"))
    callback = GPTQExport(ExportConfig(**SMALL_EXPORT))
    callback.export(trainer, module)
    assert callback.artifact_path == tmp_path / "artifact" / "artifact.ptz" and callback.artifact_path.is_file()
    assert trainer.datamodule.calls == [(3, 32, 2, None)]
    (tag, text, step), = trainer.logger.experiment.texts
    assert tag == "export/size_table" and step == 7 and "    total" in text
    assert callback.report.artifact_path == callback.artifact_path
    assert f"{callback.report.total_bytes:,} bytes with code" in text and callback.report.table.splitlines()[0] in text
    assert artifact.load(callback.artifact_path).config == module.gpt.config

    over = GPTQExport(ExportConfig(**{**SMALL_EXPORT, "budget_bytes": 100, "out_dir": str(tmp_path / "o")}))
    with pytest.raises(ArtifactTooLarge, match="over the 100-byte budget"):
        over.export(trainer, module)
    assert (tmp_path / "o" / "artifact.json").is_file()


def test_export_from_a_lightning_checkpoint(tmp_path):
    gpt = tiny_gpt(seed=3)
    state = {f"gpt.{k}": v for k, v in gpt.state_dict().items()}
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"gpt": gpt.config.to_dict()}, "looping_active": False}, ckpt)
    cfg = ExportConfig(**SMALL_EXPORT)
    report = export_from_checkpoint(None, FakeDataModule(), ckpt, tmp_path / "out", cfg, device="cpu")
    loaded = artifact.load(report.artifact_path)
    assert loaded.config == gpt.config and loaded.looping_active is False
    gpt.looping_active = False
    direct = build_artifact(gpt, collect_hessians(gpt, calibration_batches(FakeDataModule(), cfg)), cfg, tmp_path / "d")
    assert direct.artifact_path.read_bytes() == report.artifact_path.read_bytes()
    with pytest.raises(ValueError, match="export needs a checkpoint"):
        export_from_checkpoint(None, FakeDataModule(), None, tmp_path, cfg)
    with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
        export_from_checkpoint(None, FakeDataModule(), tmp_path / "nope.ckpt", tmp_path, cfg)


# ----------------------------------------------------------------------------- record size
@pytest.mark.slow
def test_record_size_model_export_on_cpu_prints_its_byte_table(tmp_path, capsys):
    """The 35.9M-parameter default model (random weights, 256 calibration tokens): sizes near the record's."""
    start = time.perf_counter()
    config = GPTConfig(attention_backend="sdpa", fused_mlp=False)
    torch.manual_seed(0)
    gpt = GPT(config)
    with torch.no_grad():  # zero-initialized projections would compress to nothing: give every matrix spread
        for name in ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank"):
            bank = getattr(gpt, name)
            bank.normal_(0.0, bank.shape[-1] ** -0.5)
    gpt.looping_active = True
    n_params = sum(p.numel() for p in gpt.parameters())
    assert 35_800_000 < n_params < 36_000_000
    cfg = ExportConfig(brotli_quality=9)  # q11 (the default) is ~11% smaller here but 5x slower on 2 cores
    hessians = collect_hessians(gpt, token_batches(1, (1, 256), vocab=config.vocab_size))
    report = build_artifact(gpt, hessians, cfg, tmp_path)  # random weights: the budget check is not the point
    with capsys.disabled():
        print(f"\nrecord-size export ({n_params:,} params, brotli q{cfg.brotli_quality}, "
              f"{time.perf_counter() - start:.1f}s):\n{report.table}")
    sizes = {row.part: row for row in report.rows}
    assert sizes["mlp"].params == 11 * 2 * 2048 * 512 and sizes["embed"].params == 8192 * 512
    assert 12_000_000 < report.total_bytes < 19_000_000


class CalibratedData(L.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randint(0, 128, (4, 2, 16))), batch_size=None)

    def calibration_batches(self, n, seq_len, batch_seqs, seed=None):
        return iter(token_batches(n, (batch_seqs, seq_len), seed=seed or 0))


class TinyFit(L.LightningModule):
    def __init__(self):
        from lit_golf.progress import TrainingProgress

        super().__init__()
        self.gpt = tiny_gpt().train()
        self.progress = TrainingProgress()  # as GolfLightningModule: EMA registers its average there

    def configure_optimizers(self):
        return torch.optim.SGD(self.gpt.parameters(), lr=0.1)

    def training_step(self, batch, batch_idx):
        tokens = batch[0]
        return self.gpt(tokens[:, :-1], tokens[:, 1:])


@pytest.mark.parametrize("export_first", [False, True])
def test_callback_in_a_real_fit_exports_the_ema_weights_to_the_tensorboard_log_dir(tmp_path, export_first):
    from lightning.pytorch.loggers import TensorBoardLogger

    from lit_golf.callbacks.ema import EMA
    from lit_golf.callbacks.export import GPTQExport

    module, data = TinyFit(), CalibratedData()
    callback = GPTQExport(ExportConfig(**SMALL_EXPORT))
    # The export runs at on_train_end (before Lightning's teardown moves the module to the CPU) and
    # loads the EMA average itself, so the callback order does not matter.
    callbacks = [callback, EMA(decay=0.5)] if export_first else [EMA(decay=0.5), callback]
    trainer = L.Trainer(accelerator="cpu", max_steps=3, callbacks=callbacks,
                        logger=TensorBoardLogger(tmp_path), enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False)
    trainer.fit(module, datamodule=data)
    assert callback.artifact_path == tmp_path / "lightning_logs" / "version_0" / "artifact" / "artifact.ptz"
    assert list((tmp_path / "lightning_logs" / "version_0").glob("events.out.tfevents.*"))
    # After fit the module holds the EMA weights; exporting them again gives the same file.
    module.gpt.eval()
    batches = calibration_batches(data, callback.config)
    again = build_artifact(module.gpt, collect_hessians(module.gpt, batches), callback.config, tmp_path / "again")
    assert again.artifact_path.read_bytes() == callback.artifact_path.read_bytes()


def _rank_hessians() -> dict[str, torch.Tensor]:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    cfg = ExportConfig(**SMALL_EXPORT)
    return collect_hessians(tiny_gpt(), calibration_batches(FakeDataModule(), cfg, rank, world_size))


@pytest.mark.slow
def test_two_ranks_sharing_the_batches_get_the_single_process_hessians(tmp_path):
    per_rank = run_on_ranks(_rank_hessians, 2, tmp_path, start_method="fork")  # fork: no re-import cost
    expected = collect_hessians(tiny_gpt(), calibration_batches(FakeDataModule(), ExportConfig(**SMALL_EXPORT)))
    for got in per_rank:
        for name, hessian in expected.items():
            torch.testing.assert_close(got[name], hessian, rtol=1e-5, atol=1e-6)


def test_test_stage_matches_artifacts_by_architecture_not_kernel_choice(exported, tmp_path):
    """An artifact trained with one attention kernel / MLP path evaluates with another (same weights);
    a different architecture is refused with a one-line error naming the artifact and the field."""
    from dataclasses import replace

    from lit_golf.module import GolfLightningModule

    report, gpt, _, _ = exported
    other_kernels = replace(gpt.config, attention_backend="pure", fused_mlp=not gpt.config.fused_mlp)
    module = GolfLightningModule(gpt=other_kernels, artifact=str(report.artifact_path))
    module.setup("test")
    assert module.gpt.attention_backend_name == "pure"
    stored = artifact.load(report.artifact_path).state_dict()
    assert all(torch.equal(module.gpt.state_dict()[name], tensor) for name, tensor in stored.items())

    deeper = replace(gpt.config, num_layers=gpt.config.num_layers + 1)
    with pytest.raises(ValueError, match=r"artifact.ptz was built for a different model .*'num_layers'"):
        GolfLightningModule(gpt=deeper, artifact=str(report.artifact_path)).setup("test")
    with pytest.raises(Exception, match="missing.ptz"):
        GolfLightningModule(gpt=gpt.config, artifact=str(tmp_path / "missing.ptz")).setup("test")
