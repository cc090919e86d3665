"""LightningCLI construction: `fit`, `validate`, `test`, `export`, `run` (imported only when one of them runs).

`lit_golf.cli` dispatches without importing this module, so `lit-golf --help` and the data tools start
without Lightning or torch. `export` and `run` are methods of `GolfTrainer`, the LightningCLI way of
adding a subcommand; `GolfCLI` checks inputs before anything is built.
"""

from __future__ import annotations

import argparse
import logging
import re
import warnings
from pathlib import Path

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from lit_golf import strategy  # noqa: F401  (registers the golf_ddp strategy name)
from lit_golf.callbacks import NAMED_CALLBACKS
from lit_golf.callbacks.export import publish_table
from lit_golf.config_files import config_names
from lit_golf.data.datamodule import GolfDataModule
from lit_golf.data.vocab import check_data_for_vocab
from lit_golf.eval.config import LEGACY_FIELDS
from lit_golf.export.budget import ArtifactTooLarge
from lit_golf.export.code_size import set_run_config
from lit_golf.export.pipeline import (
    ExportReport,
    check_checkpoint,
    export_from_checkpoint,
)
from lit_golf.module import GolfLightningModule
from lit_golf.results import read_results, summary_lines

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
    ) -> ExportReport:
        """GPTQ-quantize `model` (weights from `ckpt_path`) and write `artifact.ptz` + `artifact.json`,
        with the config's `gptq` settings (`--gptq.config.*`).

        Args:
            ckpt_path: Lightning checkpoint whose `gpt.*` weights are exported.
            out_dir: folder for the artifact files.
        """
        report = export_from_checkpoint(model, datamodule, ckpt_path, out_dir, self.named_callbacks["gptq"].config)
        publish_table(self, report)
        report.check_budget()
        return report

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


class RunCSVLogger(CSVLogger):
    """`metrics.csv` in the run folder of the logger it follows (TensorBoard's `version_N`), beside its events."""

    def __init__(self, follows: Logger) -> None:
        super().__init__(save_dir=follows.save_dir, name=follows.name)
        self._follows = follows

    @property
    def version(self) -> int | str:
        return self._follows.version


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
            check_inputs(subcommand, self.config[subcommand])

    def before_instantiate_classes(self) -> None:
        # After `--ckpt`'s hyperparameters replaced the model's: the vocabulary checked is the one that loads.
        config = self.config[self.config.subcommand]
        if self.config.subcommand in ("test", "validate"):
            log_into_fit_run(config)
        # The submission script embeds the resolved config, as LightningCLI saves it into the run folder.
        set_run_config(self._parser(self.config.subcommand).dump(config, skip_none=False))
        vocab, data_dir = config.get("model.gpt.vocab_size"), config.get("data.data_dir")
        if isinstance(vocab, int) and vocab >= 1 and data_dir:
            source = "model.gpt.vocab_size" + (", from the checkpoint" if config.get("ckpt_path") else "")
            check_data_for_vocab(vocab, data_dir, source)


# Flags of the layout before the evaluation settings were nested (an old config.yaml, a submission's embedded
# config), named in a parse error.
MOVED_FLAGS = {
    **{f"model.evaluation.{old}": f"model.evaluation.{new}" for old, new in LEGACY_FIELDS.items()},
    "data.max_val_tokens": "model.evaluation.max_docs, a document count",
}


def moved_flags_hint(message: str) -> str:
    """` (X is now Y)` for each flag of the old layout that `message` names, else nothing."""
    moved = [f"{old} is now {new}" for old, new in MOVED_FLAGS.items() if re.search(rf"\b{re.escape(old)}\b", message)]
    return f" ({'; '.join(moved)})" if moved else ""


def log_into_fit_run(config) -> None:
    """`test --artifact RUN/artifact/artifact.ptz` logs into RUN, the fit's folder, next to its training curves
    and results.json (instead of a new version folder that nothing links to the fit)."""
    artifact, logger = config.get("model.artifact"), config.get("trainer.logger")
    init = getattr(logger, "init_args", None)
    if not artifact or init is None or not {"save_dir", "name", "version"} <= set(vars(init)):
        return
    run = next((p for p in Path(artifact).resolve().parents if (p / "hparams.yaml").is_file()), None)
    if run is not None:
        init.save_dir, init.name, init.version = str(run.parent.parent), run.parent.name, run.name
        log.info("test: logging into the fit's run folder %s", run)


def check_inputs(subcommand: str, config) -> None:
    """Refuse, before anything is built, what would fail later or silently score the wrong weights."""
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
    accelerator = config.get("trainer.accelerator")
    if isinstance(accelerator, str) and accelerator.lower() in ("gpu", "cuda") and not torch.cuda.is_available():
        if not (accelerator.lower() == "gpu" and torch.backends.mps.is_available()):
            raise ValueError(
                f"trainer.accelerator={accelerator} needs CUDA GPUs and this machine has none "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
                "for a CPU run use --config configs/tiny_cpu.yaml"
            )


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
    return GolfCLI(
        GolfLightningModule,
        GolfDataModule,
        trainer_class=GolfTrainer,
        args=_expand_aliases(argv),
        seed_everything_default=1337,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "inference_mode": False,  # test-time training needs autograd inside `test`
            "use_distributed_sampler": False,  # the DataModule splits data across ranks itself
            "num_sanity_val_steps": 0,
        },
    )
