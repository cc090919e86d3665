"""The `lit-golf` console script: a thin dispatcher that starts without Lightning or torch.

`fit`, `validate`, `test`, `export` and `run` are LightningCLI subcommands built in `lit_golf.lightning_cli`,
imported only when one of them runs; `prepare-data`, `download`, `demo`, `submit` and `check` are plain argparse tools
whose modules are imported only for their own command, so `lit-golf --help` and `lit-golf download
--help` answer at once. `--config NAME` picks a shipped config (`lit_golf.config_files`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys

from lit_golf.config_files import resolve_config_args
from lit_golf.files import FOLDER_ERRNOS

USAGE = """usage: lit-golf <command> [options]

LightningCLI commands (see `lit-golf <command> --help`, configs by name, e.g. --config record):
  fit            train (callbacks export the artifact and enforce the wall-clock budget)
  validate       plain validation bits-per-byte of a checkpoint
  test           evaluation: plain, sliding and phased-TTT bits-per-byte (--artifact PATH or --ckpt PATH)
  export         GPTQ-quantize a checkpoint into a <=16,000,000-byte artifact (--ckpt PATH)
  run            the challenge's launch: fit, export and the phased-TTT test of the artifact; writes results.json

Tools:
  prepare-data   tokenize documents (jsonl/txt, plain/.gz/.xz) into upstream-format shards
  download       fetch the published FineWeb SP-1024/SP-8192 shards from the Hugging Face hub
  demo           the whole pipeline on CPU on a corpus built from Python's own documentation
  submit         turn run folders into a records/ folder: train_gpt.py, submission.json, README.md, logs
  check          the challenge's rules, one line each, for a run folder or a submission folder
  sweep          a grid of dotted overrides x seeds (one launch per trial, resumable), then one results table
"""


# The LightningCLI subcommands (LightningCLI's own four and GolfCLI's `export` and `run`).
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict", "export", "run")

# Each tool: the module whose `cli_main(argv) -> int` runs it, imported only when the tool runs.
TOOLS = {"prepare-data": "lit_golf.data.prepare", "download": "lit_golf.data.download", "demo": "lit_golf.demo",
         "submit": "lit_golf.submission.submit", "check": "lit_golf.submission.check", "sweep": "lit_golf.sweep"}

# Bad input reported in one line by the tools (`lit_golf.lightning_cli.USER_ERRORS` adds Lightning's own).
USER_ERRORS = (ValueError, FileNotFoundError, argparse.ArgumentError)

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


def _user_errors() -> tuple[type[BaseException], ...]:
    """The tools' USER_ERRORS, plus Lightning's and the budget's once Lightning is loaded (a demo loads it)."""
    loaded = sys.modules.get("lit_golf.lightning_cli")
    return loaded.USER_ERRORS if loaded is not None else USER_ERRORS


def _folder_error(error: BaseException) -> str | None:
    """The line for a file the command could not write (full disk, read-only folder, no permission), else None."""
    if not isinstance(error, OSError) or error.errno not in FOLDER_ERRNOS:
        return None
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror}{where} (free space, or choose a folder you can write to, and run the command again)"


def run_lightning_cli(argv: list[str]):
    """Build and run the LightningCLI for `argv` (`lit_golf.lightning_cli.run_lightning_cli`); returns the GolfCLI."""
    from lit_golf.lightning_cli import run_lightning_cli as run

    return run(argv)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is now (redirected or captured), not the one seen at start-up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


# Where Lightning, torchrun and SLURM put a process's global rank (the order Lightning reads them in).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def process_rank() -> int:
    """This process's global rank: Lightning's once it has set it, else the launcher's environment, else 0."""
    rank_zero = sys.modules.get("lightning_utilities.core.rank_zero")  # loaded with Lightning; never imported here
    rank = getattr(getattr(rank_zero, "rank_zero_only", None), "rank", None)
    if isinstance(rank, int):
        return rank
    for name in _RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


class RankZeroFilter(logging.Filter):
    """INFO and below print on rank 0 only (one line per run, not one per GPU); warnings and errors print
    on every rank, marked `[rank N]` off rank 0, since they may concern that rank alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank = process_rank()
        record.rank_prefix = f"[rank {rank}] " if rank else ""
        return rank == 0 or record.levelno >= logging.WARNING


def _configure_logging() -> None:
    """Our own INFO lines on stderr, once per run (rank 0); other libraries keep their levels."""
    logger = logging.getLogger("lit_golf")
    if not logger.handlers:
        handler = _CurrentStderrHandler()
        handler.addFilter(RankZeroFilter())  # on the handler, so records of child loggers pass it too
        handler.setFormatter(logging.Formatter("%(asctime)s %(rank_prefix)s%(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _configure_logging()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    try:
        if argv[0] in TOOLS:
            return int(importlib.import_module(TOOLS[argv[0]]).cli_main(argv[1:]) or 0)
        argv = resolve_config_args(argv)
        from lit_golf.lightning_cli import check_config_files

        check_config_files(argv)
        run_lightning_cli(argv)
    except Exception as error:
        if os.environ.get("LIT_GOLF_TRACEBACK") or not (isinstance(error, _user_errors()) or _folder_error(error)):
            raise
        message = _folder_error(error) or one_line(str(error))
        if isinstance(error, argparse.ArgumentError):
            message = " ".join(line.strip() for line in message.splitlines())
            command = f"{argv[0]} " if argv[0] in LIGHTNING_COMMANDS else ""
            message += f" (see `lit-golf {command}--help`)"
        print(f"lit-golf {argv[0]}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
