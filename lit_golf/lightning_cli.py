"""LightningCLI construction: `fit`, `validate`, `test`, `export`, `run` (imported only when one of them runs).

`lit_golf.cli` dispatches without importing this module, so `lit-golf --help` and the data tools start
without Lightning or torch. `export` and `run` are methods of `GolfTrainer`, the LightningCLI way of
adding a subcommand; `GolfCLI` checks inputs before anything is built.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import re
import shutil
import warnings
from pathlib import Path

import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from lit_golf import strategy  # noqa: F401  (registers the golf_ddp strategy name)
from lit_golf.callbacks import NAMED_CALLBACKS
from lit_golf.callbacks.checkpoint import check_resume, latest_run_checkpoint
from lit_golf.config_files import config_names, resolve_config_args
from lit_golf.data.datamodule import GolfDataModule
from lit_golf.data.vocab import check_data_for_vocab
from lit_golf.eval.config import LEGACY_FIELDS
from lit_golf.export.budget import ArtifactTooLarge
from lit_golf.export.code_size import set_run_config
from lit_golf.export.pipeline import (
    ExportReport,
    check_artifact_target,
    check_checkpoint,
    export_from_checkpoint,
)
from lit_golf.files import check_writable, write_atomic
from lit_golf.loggers import RunCSVLogger
from lit_golf.module import GolfLightningModule
from lit_golf.results import RESULTS_NAME, fit_run_of, read_results, summary_lines

log = logging.getLogger("lit_golf")

# Bad input (files, configs, budgets) is reported in one line; LIT_GOLF_TRACEBACK=1 shows the traceback.
USER_ERRORS = (ValueError, FileNotFoundError, ArtifactTooLarge, MisconfigurationException, argparse.ArgumentError)


# One source per knob (target: source): the data follows the model's vocabulary (a checkpoint's hyperparameters
# set both at once) and the evaluation's window, batch and document count, so in-training validation scores
# what `test` scores. The targets are derived, never given: a flag or a config file that sets one is an error.
LINKED = {
    "data.vocab_size": "model.gpt.vocab_size",
    "data.eval_seq_len": "model.evaluation.plain.seq_len",
    "data.val_batch_seqs": "model.evaluation.plain.batch_seqs",
    "data.max_val_docs": "model.evaluation.max_docs",
    "data.max_val_tokens": "model.evaluation.max_tokens",
}


class GolfTrainer(Trainer):
    """A Trainer with two more entry points: `export`, and `run` (fit + export + test in one launch).

    `named_callbacks` holds the config's named callbacks (`lit_golf.callbacks.NAMED_CALLBACKS`) by
    section name, set by `GolfCLI` when it builds the trainer.
    """

    named_callbacks: dict[str, Callback]

    def export(
        self,
        model: GolfLightningModule,
        datamodule: GolfDataModule,
        ckpt_path: str | None = None,
        out_dir: str = "artifact",
        overwrite: bool = False,
    ) -> ExportReport:
        """GPTQ-quantize `model` (weights from `ckpt_path`) and write `artifact.ptz` + `artifact.json`,
        with the config's `gptq` settings (`--gptq.config.*`). Its record is `artifact.json` beside the
        artifact (sizes, table, settings); it opens no logger folder.

        Args:
            ckpt_path: Lightning checkpoint whose `gpt.*` weights are exported.
            out_dir: folder for the artifact files.
            overwrite: replace an artifact already in `out_dir` (never a run's own, which its results.json records).
        """
        return export_from_checkpoint(model, datamodule, ckpt_path, out_dir, self.named_callbacks["gptq"].config,
                                      overwrite=overwrite)

    def run(self, model: GolfLightningModule, datamodule: GolfDataModule, ckpt_path: str | None = None) -> dict:
        """The challenge's whole launch: fit (wall clock), export (the export callback), then the test
        of the exported artifact; ends with one summary and `results.json` in the run folder.

        Args:
            ckpt_path: resume the fit from this checkpoint (`last`: the newest run's `last.ckpt`).
        """
        self.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)  # the gptq callback sets model.artifact
        self.test(model, datamodule=datamodule)
        recorder = self.named_callbacks["results"]
        results = read_results(recorder.run_dir) if self.is_global_zero else {}
        if self.is_global_zero:
            log.info("run %s:\n%s", recorder.run_dir, "\n".join(summary_lines(results)))
        return results


class RunConfigSaver(SaveConfigCallback):
    """LightningCLI's `config.yaml` in the run folder, written atomically (`lit_golf.files`)."""

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # a collective: every rank asks
        if trainer.is_global_zero:
            write_atomic(Path(log_dir) / self.config_filename, self.parser.dump(self.config, skip_none=False))
        self.already_saved = True


class GolfCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = dict(LightningCLI.subcommands())
        commands["export"] = {"model", "datamodule"}
        commands["run"] = {"model", "datamodule"}
        return commands

    def add_arguments_to_parser(self, parser) -> None:
        # Each callback is a named section (`--ema.decay`, `gptq: {config: {...}}`), so a later config or
        # flag changes one field and keeps the rest, which a `trainer.callbacks` list cannot do.
        for name, callback in NAMED_CALLBACKS.items():
            parser.add_lightning_class_args(callback, name)
        for target, source in LINKED.items():
            parser.link_arguments(source, target)

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]) -> Trainer:
        # Named callbacks the trainer's own switches turn off (Lightning refuses a progress bar or a
        # checkpoint callback together with enable_progress_bar/enable_checkpointing false).
        named = dict(zip(NAMED_CALLBACKS, callbacks, strict=True))
        if config.get("enable_progress_bar") is False:
            named = {k: cb for k, cb in named.items() if not isinstance(cb, ProgressBar)}
        if config.get("enable_checkpointing") is False:
            named = {k: cb for k, cb in named.items() if not isinstance(cb, ModelCheckpoint)}
        logger = config.get("logger")
        if isinstance(logger, TensorBoardLogger):
            config["logger"] = [logger, RunCSVLogger(logger)]
        trainer = super()._instantiate_trainer(config, list(named.values()))
        trainer.named_callbacks = named
        return trainer

    def init_parser(self, **kwargs):
        # Parse errors raise (`main` prints their one line) instead of printing 60+ lines of usage.
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as error:
            link = re.match(r"argument (\S+) --> (\S+):", str(error))
            if link and link[2] in LINKED:  # a derived flag given (jsonargparse words it oddly for an `int | None`)
                raise argparse.ArgumentError(None, f'Linked "{link[2]}" must be given via "{link[1]}".') from None
            raise argparse.ArgumentError(None, f"{error}{moved_flags_hint(str(error))}") from None
        subcommand = self.config.get("subcommand")
        if subcommand:
            if subcommand in ("test", "validate", "export"):  # before LightningCLI reads the checkpoint's hparams
                resolve_last_checkpoint(subcommand, self.config[subcommand])
            check_inputs(subcommand, self.config[subcommand])

    def before_instantiate_classes(self) -> None:
        # After `--ckpt`'s hyperparameters replaced the model's: the vocabulary checked is the one that loads.
        config = self.config[self.config.subcommand]
        if self.config.subcommand in ("test", "validate"):
            choose_record_folder(self.config.subcommand, config)
        # The submission script embeds the resolved config, as LightningCLI saves it into the run folder.
        set_run_config(self._parser(self.config.subcommand).dump(config, skip_none=False))
        vocab, data_dir = config.get("model.gpt.vocab_size"), config.get("data.data_dir")
        if isinstance(vocab, int) and vocab >= 1 and data_dir:
            source = "model.gpt.vocab_size" + (", from the checkpoint" if config.get("ckpt_path") else "")
            check_data_for_vocab(vocab, data_dir, source)

    def _run_subcommand(self, subcommand: str) -> None:
        existed = existing_record_folders(self.trainer)
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            discard_unused_record_folder(self.trainer, existed)
            raise


# Flags of the layout before the evaluation settings were nested (an old config.yaml, a submission's embedded
# config), named in a parse error.
MOVED_FLAGS = {
    **{f"model.evaluation.{old}": f"model.evaluation.{new}" for old, new in LEGACY_FIELDS.items()},
}


def moved_flags_hint(message: str) -> str:
    """` (X is now Y)` for each flag of the old layout that `message` names, else nothing."""
    moved = [f"{old} is now {new}" for old, new in MOVED_FLAGS.items() if re.search(rf"\b{re.escape(old)}\b", message)]
    return f" ({'; '.join(moved)})" if moved else ""


def choose_record_folder(subcommand: str, config) -> None:
    """Where `test`/`validate` record, never over an earlier launch's files: for a fit's artifact or checkpoint
    (`RUN/artifact/artifact.ptz`, `RUN/checkpoints/...`) a folder of their own inside RUN, `RUN/test_N`
    (`validate_N`), beside the fit's curves and results (a new version folder would not say which fit it
    scored); with the logger off (`--trainer.logger false`), `<default_root_dir>/test_N`; otherwise the
    logger's own new version folder."""
    weights = config.get("model.artifact") or config.get("ckpt_path")
    run = fit_run_of(weights) if weights else None
    logger = config.get("trainer.logger")
    init = getattr(logger, "init_args", None)
    folder_logger = init is not None and {"save_dir", "name", "version"} <= set(vars(init))
    if logger is not False and (run is None or not folder_logger):
        return
    base = run or Path(config.get("trainer.default_root_dir") or ".")
    check_writable(base, f"{subcommand} records into")
    taken = {p.name for p in base.iterdir()} if base.is_dir() else set()
    folder = base / next(name for n in itertools.count() if (name := f"{subcommand}_{n}") not in taken)
    if logger is False:
        config["trainer.default_root_dir"] = str(folder)
        log.info("%s: trainer.logger is off (no TensorBoard, no metrics.csv): results.json, train.log and config.yaml "
                 "go to %s", subcommand, folder)
    else:
        init.save_dir, init.name, init.version = str(run.parent), run.name, folder.name
        log.info("%s: recording into %s, inside the fit's run folder", subcommand, folder)


def resolve_last_checkpoint(subcommand: str, config) -> None:
    """`--ckpt last` for `test`/`validate`/`export`: the newest `last.ckpt` of the configured runs, as a path (so
    its hyperparameters build the model and its run folder is known), or one line when there is none."""
    if config.get("ckpt_path") != "last":
        return
    dirpath, init = config.get("checkpoint.dirpath"), getattr(config.get("trainer.logger"), "init_args", None)
    if getattr(init, "save_dir", None) and not dirpath:  # runs as version_N folders: the newest one's
        where = Path(init.save_dir) / (getattr(init, "name", None) or "")
        found = latest_run_checkpoint(where)
    else:  # one checkpoint folder
        where = Path(dirpath) if dirpath else Path(config.get("trainer.default_root_dir") or ".") / "checkpoints"
        found = where / "last.ckpt" if (where / "last.ckpt").is_file() else None
    if found is None:
        raise FileNotFoundError(f"--ckpt last: no last.ckpt under {where}; pass --ckpt PATH of a fit's checkpoint")
    config["ckpt_path"] = str(found)
    log.info("%s: --ckpt last is %s", subcommand, found)


def existing_record_folders(trainer: Trainer) -> set[Path]:
    """The folders a launch could record into, and their parents, that exist before it starts (no collective:
    callable after a failure)."""
    roots = [Path(trainer.default_root_dir).resolve()]
    if isinstance(trainer.logger, TensorBoardLogger):
        roots.append(Path(trainer.logger.root_dir).resolve())
    children = {p.resolve() for root in roots if root.is_dir() for p in root.iterdir()}
    return children | {p for root in roots for p in (root, *root.parents) if p.exists()}


def discard_unused_record_folder(trainer: Trainer, existed: set[Path]) -> None:
    """After a failed launch: remove the folder it created (and the empty parents it created) when it holds no
    record (no step trained, no results), so a failed fit or test leaves no empty `version_N`/`test_N` behind."""
    if not trainer.is_global_zero or trainer.global_step > 0:
        return
    logger = trainer.logger
    folder = Path(logger.log_dir if isinstance(logger, TensorBoardLogger) else trainer.default_root_dir).resolve()
    if not folder.is_dir() or folder in existed or (folder / RESULTS_NAME).exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if parent in existed or any(parent.iterdir()):
            break
        parent.rmdir()


def check_inputs(subcommand: str, config) -> None:
    """Refuse, before anything is built, what would fail later, write over a record, or silently score the
    wrong weights or train nothing."""
    ckpt = config.get("ckpt_path")
    artifact = config.get("model.artifact") if subcommand in ("test", "validate") else None
    if subcommand in ("test", "validate"):
        if ckpt and artifact:
            raise ValueError(
                f"got both --artifact {artifact} and --ckpt {ckpt}: pass one (--artifact scores the exported, "
                "quantized submission; --ckpt the checkpoint's weights)"
            )
        if not ckpt and not artifact:
            raise ValueError(
                f"{subcommand} needs weights to score: pass --artifact PATH (an artifact.ptz written by fit or export) "
                "or --ckpt PATH (a .ckpt written by `lit-golf fit`); without either it would score a randomly "
                "initialised model"
            )
    if ckpt:
        check_checkpoint(ckpt)
    if subcommand in ("fit", "run"):
        check_training(config)
    if subcommand == "export":
        out_dir = config.get("out_dir") or "artifact"
        check_artifact_target(out_dir, bool(config.get("overwrite")), "--out_dir")
        check_writable(out_dir, "--out_dir")
    accelerator = config.get("trainer.accelerator")
    if isinstance(accelerator, str) and accelerator.lower() in ("gpu", "cuda") and not torch.cuda.is_available():
        if not (accelerator.lower() == "gpu" and torch.backends.mps.is_available()):
            raise ValueError(
                f"trainer.accelerator={accelerator} needs CUDA GPUs and this machine has none "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
                "for a CPU run use --config configs/tiny_cpu.yaml"
            )


def check_training(config) -> None:
    """`fit`/`run`: a length that trains something, a resume that has steps left, and folders it can write."""
    trainer = config.get("trainer")
    for flag in ("max_steps", "max_epochs", "limit_train_batches"):
        if getattr(trainer, flag, None) == 0:
            raise ValueError(
                f"--trainer.{flag} 0 trains nothing (no step, no checkpoint, no artifact); give a positive "
                f"{flag}, or -1 for max_steps/max_epochs to train until the wall clock (wallclock.budget_seconds) stops it"
            )
    ckpt = config.get("ckpt_path")
    if ckpt and ckpt != "last":  # `last` is checked when RunCheckpoint has found it
        check_resume(ckpt, getattr(trainer, "max_steps", -1))
    init = getattr(getattr(trainer, "logger", None), "init_args", None)
    if getattr(init, "save_dir", None):
        check_writable(init.save_dir, "--trainer.logger.init_args.save_dir")
    out_dir = config.get("gptq.config.out_dir")
    if out_dir:
        check_artifact_target(out_dir, False, "--gptq.config.out_dir")
        check_writable(out_dir, "--gptq.config.out_dir")


# Lightning warnings that do not apply here, so the log stays readable:
QUIET_WARNINGS = (
    "LightningCLI's args parameter is intended",  # every entry point here hands over `args`
    ".*does not have many workers",  # the loaders prefetch in threads of the main process by design
    ".*`IterableDataset` has `__len__` defined",  # validation windows are split across ranks by hand
    ".*sync_dist=True",  # val metrics come from a torchmetrics Metric that reduces across ranks itself
    ".*is not supported by the model summary",
    r".*isinstance\(treespec, LeafSpec\)",  # Lightning's own use of a deprecated torch API
)


def check_config_files(argv: list[str]) -> None:
    """A `--config` file that is missing or not valid YAML: one line with the file, the problem and where."""
    import yaml

    values = [b for a, b in zip(argv, argv[1:], strict=False) if a in ("-c", "--config")]
    values += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for value in values:
        path = Path(value)
        if not path.is_file():
            # jsonargparse reads a value that names no file as inline YAML; one that looks like a path is a typo
            # (a bare word is not a config either: it is neither a file nor a shipped config's name)
            if not any(c in value for c in ":{}\n"):
                what = "file does not exist" if path.suffix in (".yaml", ".yml", ".json") else "no such file or config"
                raise FileNotFoundError(f"--config {value}: {what} (shipped configs, by name: {', '.join(config_names())})")
            continue
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"--config {path} is not valid YAML: {problem}{where}") from None
        # jsonargparse lets the link overwrite a derived field a file sets: refuse it instead of ignoring it
        for target, source in LINKED.items():
            section, key = target.split(".")
            if isinstance(values, dict) and key in (values.get(section) or {}):
                raise ValueError(f"--config {path} sets {target}, which follows {source}: set that instead")


# Short flags users ask for, mapped onto the LightningCLI fields that carry them.
ALIASES = {"--artifact": "--model.artifact", "--ckpt": "--ckpt_path"}


def _expand_aliases(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        out.append(ALIASES.get(key, key) + sep + value if key in ALIASES else arg)
    return out


def run_lightning_cli(argv: list[str]) -> GolfCLI:
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if torch.cuda.is_available():
        # As the record's script: fp32 matmuls (GPTQ's Hessians and updates, LQER) on TF32 tensor cores. The
        # training step's matmuls are bf16 under autocast either way. CUDA only: on a CPU with AMX it would
        # change the CPU results the tests compare.
        torch.set_float32_matmul_precision("high")
    return GolfCLI(
        GolfLightningModule,
        GolfDataModule,
        trainer_class=GolfTrainer,
        args=_expand_aliases(argv),
        seed_everything_default=1337,
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "inference_mode": False,  # test-time training needs autograd inside `test`
            "use_distributed_sampler": False,  # the DataModule splits data across ranks itself
            "num_sanity_val_steps": 0,
        },
    )


def printed_config(argv: list[str]) -> dict:
    """The config `lit-golf <argv>` resolves to, every default filled in (`--print_config`, parsed in this
    process: nothing is built). For a sweep's grid keys and a submission's differences from the record."""
    argv = resolve_config_args([*argv, "--print_config"])
    check_config_files(argv)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
        run_lightning_cli(argv)
    config = yaml.safe_load(printed.getvalue())
    if not isinstance(config, dict):
        raise ValueError(f"`lit-golf {' '.join(argv)}` printed no config: drop --help or --print_config after --")
    return config
