"""The `lit-golf` console script.

`fit`, `validate`, `test` and `export` are LightningCLI subcommands (YAML configs, `--print_config`,
every field overridable on the command line); `export` is a method of `GolfTrainer`, the LightningCLI
way of adding a subcommand. `prepare-data`, `download` and `demo` are plain argparse tools.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from lit_golf import strategy  # noqa: F401  (registers the golf_ddp strategy name)
from lit_golf.callbacks.export import GPTQExport, publish_table
from lit_golf.data.datamodule import GolfDataModule
from lit_golf.export.budget import ArtifactTooLarge
from lit_golf.export.config import ExportConfig
from lit_golf.export.pipeline import ExportReport, export_from_checkpoint
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
USER_ERRORS = (ValueError, FileNotFoundError, ArtifactTooLarge)

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
        run_lightning_cli(argv)
    except USER_ERRORS as error:
        if os.environ.get("LIT_GOLF_TRACEBACK"):
            raise
        print(f"lit-golf {argv[0]}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
