"""The argument parser of every `lit-golf` tool (`prepare-data`, `download`, `demo`, `submit`, `check`, `sweep`).

jsonargparse, like the LightningCLI commands: the same flags as an argparse parser, plus `--config FILE`
(a YAML file of the flags, keys with underscores: `vocab_size: 8192`; not for `demo` and `sweep`, whose
`--config` names the training config they launch) and `--print_config`. Parse errors
raise `argparse.ArgumentError`, which `lit_golf.cli` reports in one line with exit code 2. jsonargparse
loads without torch or Lightning, so every tool's `--help` still answers at once.
"""

from __future__ import annotations

import sys
from argparse import Action, ArgumentError, Namespace
from collections.abc import Callable, Sequence

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter


class ToolHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help (it appends type and default), except for a help text that states its default itself:
    that one is printed as written, so `--help` never says `(default: data) (default: data)`."""

    def _get_help_string(self, action: Action) -> str:
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def tool_parser(prog: str, description: str, config_file: bool = True) -> ArgumentParser:
    """`config_file=False` for a tool whose own `--config` names the training config it launches (demo, sweep)."""
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, formatter_class=ToolHelpFormatter)
    if config_file:
        parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    return parser


def run_tool(parser: ArgumentParser, argv: Sequence[str] | None, body: Callable[[Namespace], object]) -> int:
    """Run `body(parsed argv)`, exit code 0: a bad flag is one line and 2, bad input (ValueError, OSError)
    one line and 1, for scripts run outside `lit_golf.cli` (bench/), which does the same for the tools."""
    try:
        args = parser.parse_args(argv)
    except ArgumentError as exc:
        print(f"{parser.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    try:
        body(args)
    except (ValueError, OSError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0
