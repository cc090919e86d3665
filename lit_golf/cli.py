"""The `lit-golf` console script.

`fit`, `validate`, `test` and `export` are LightningCLI subcommands (YAML configs, `--print_config`,
every field overridable on the command line); `export` is a method of `GolfTrainer`, the LightningCLI
way of adding a subcommand. `prepare-data`, `download` and `demo` are plain argparse tools.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from lit_golf import strategy  # noqa: F401  (registers the golf_ddp strategy name)
from lit_golf.callbacks.export import GPTQExport, publish_table
from lit_golf.data.datamodule import GolfDataModule
from lit_golf.export.budget import ArtifactTooLarge
from lit_golf.export.config import ExportConfig
from lit_golf.export.pipeline import ExportReport, check_checkpoint, check_vocab, export_from_checkpoint
from lit_golf.module import GolfLightningModule

USAGE = """usage: lit-golf <command> [options]

LightningCLI commands (see `lit-golf <command> --help`, configs in configs/*.yaml):
  fit            train (callbacks export the artifact and enforce the wall-clock budget)
  validate       plain validation bits-per-byte of a checkpoint
  test           evaluation: plain, sliding and phased-TTT bits-per-byte (--artifact PATH or --ckpt PATH)
  export         GPTQ-quantize a checkpoint into a <=16,000,000-byte artifact (--ckpt PATH)

Tools:
  prepare-data   tokenize documents (jsonl/txt, plain/.gz/.xz) into upstream-format shards
  download       fetch the published FineWeb SP-1024/SP-8192 shards from the Hugging Face hub
  demo           the whole pipeline on CPU on a corpus built from Python's own documentation
"""


class GolfTrainer(Trainer):
    """A Trainer with one more entry point: `export`."""

    def export(
        self,
        model: GolfLightningModule,
        datamodule: GolfDataModule,
        ckpt_path: str | None = None,
        out_dir: str = "artifact",
        export_config: ExportConfig | None = None,
    ) -> ExportReport:
        """GPTQ-quantize `model` (weights from `ckpt_path`) and write `artifact.ptz` + `artifact.json`.

        Args:
            ckpt_path: Lightning checkpoint whose `gpt.*` weights are exported.
            out_dir: folder for the artifact files.
            export_config: quantization bits, clip sigmas, calibration and byte budget.
        """
        if export_config is None:  # the settings of the config's GPTQExport callback, else the record's
            callback = next((cb for cb in self.callbacks if isinstance(cb, GPTQExport)), None)
            export_config = callback.config if callback is not None else ExportConfig()
        report = export_from_checkpoint(model, datamodule, ckpt_path, out_dir, export_config)
        publish_table(self, report)
        report.check_budget()
        return report


class GolfCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = dict(LightningCLI.subcommands())
        commands["export"] = {"model", "datamodule"}
        return commands

    def init_parser(self, **kwargs):
        # Parse errors raise (`main` prints their one line) instead of printing 60+ lines of usage.
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_inputs(subcommand, self.config[subcommand])

    def before_instantiate_classes(self) -> None:
        # After `--ckpt`'s hyperparameters replaced the model's: the vocabulary checked is the one that loads.
        config = self.config[self.config.subcommand]
        vocab, data_vocab = config.get("model.gpt.vocab_size"), config.get("data.vocab_size")
        if isinstance(vocab, int) and isinstance(data_vocab, int) and min(vocab, data_vocab) >= 1:
            data = SimpleNamespace(vocab_size=data_vocab, data_dir=config.get("data.data_dir"))
            check_vocab(vocab, data, "model.gpt.vocab_size" + (", from the checkpoint" if config.get("ckpt_path") else ""))


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

# Bad input (files, configs, budgets) is reported in one line; LIT_GOLF_TRACEBACK=1 shows the traceback.
USER_ERRORS = (ValueError, FileNotFoundError, ArtifactTooLarge, MisconfigurationException, argparse.ArgumentError)

# Lines of jsonargparse's nested messages that repeat what the user typed or list the types it tried.
_PARSER_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
                 "- Expected a <class 'NoneType'>", "- Problem with given class_path")


def one_line(message: str) -> str:
    """The line that matters of a jsonargparse message (`Parser key "a": ... Parser key "b": reason`).

    Nested keys are joined (`--model.gpt.num_layers: reason`); the union bookkeeping around the reason
    (subtypes tried, the value given, "Expected a NoneType") is dropped. Other messages pass unchanged.
    """
    if not message.startswith(('Parser key "', _PARSER_NOISE[0])):
        return message
    keys, reasons = [], []
    for line in (raw.strip() for raw in message.splitlines()):
        key = re.match(r'Parser key "([^"]+)":\s*(.*)', line)
        if key:
            name, line = key.groups()
            keys.append(name if not keys or name.startswith(keys[-1] + ".") else f"{keys[-1]}.{name}")
        if line and not line.startswith(_PARSER_NOISE):
            reasons.append(line.removeprefix("- "))
    reason = "; ".join(reasons) or message.splitlines()[0]
    return f"--{keys[-1]}: {reason}" if keys else reason


def check_config_files(argv: list[str]) -> None:
    """A `--config` file that is missing or not valid YAML: one line with the file, the problem and where."""
    import yaml

    values = [b for a, b in zip(argv, argv[1:], strict=False) if a in ("-c", "--config")]
    values += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for value in values:
        path = Path(value)
        if not path.is_file():
            # jsonargparse reads a value that names no file as inline YAML; one that looks like a path is a typo
            if path.suffix in (".yaml", ".yml", ".json") and not any(c in value for c in ":{}\n"):
                raise FileNotFoundError(f"--config {value}: file does not exist (the configs are in configs/*.yaml)")
            continue
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"--config {path} is not valid YAML: {problem}{where}") from None

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


def _tools() -> dict[str, Callable[[list[str]], int]]:
    from lit_golf import demo
    from lit_golf.data import download, prepare

    return {"prepare-data": prepare.cli_main, "download": download.cli_main, "demo": demo.cli_main}


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is now (redirected or captured), not the one seen at start-up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _configure_logging() -> None:
    """Our own INFO lines on stderr; other libraries keep their levels."""
    logger = logging.getLogger("lit_golf")
    if not logger.handlers:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _configure_logging()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    tools = _tools()
    try:
        if argv[0] in tools:
            return int(tools[argv[0]](argv[1:]) or 0)
        check_config_files(argv)
        run_lightning_cli(argv)
    except USER_ERRORS as error:
        if os.environ.get("LIT_GOLF_TRACEBACK"):
            raise
        message = one_line(str(error))
        if isinstance(error, argparse.ArgumentError):
            message = " ".join(line.strip() for line in message.splitlines())
            command = f"{argv[0]} " if argv[0] in GolfCLI.subcommands() else ""
            message += f" (see `lit-golf {command}--help`)"
        print(f"lit-golf {argv[0]}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
