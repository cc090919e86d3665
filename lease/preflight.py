"""Parse every `lit_golf.cli` and `bench/train_step_levers.py` command of lease queues before a lease spends device
time on a typo (a misspelt flag, config key or lever name).

Each command is resolved as `--print_config` would (flag names, types and config files checked; not value
ranges, which the configs' dataclasses check when a run starts; nothing built), all in this one process (half a
second each, where a `lit-golf ... --print_config` subprocess takes five), with the queue's variables ($RUNS,
$LEASE, $DATA, $ART, $a) pointed at a scratch folder. One line per job; exit 1 if any failed or a queue is missing.

    .venv/bin/python lease/preflight.py lease/ttt_budget.queue [QUEUE ...]     # or: bash lease/preflight.sh ...
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLI = re.compile(r"python3 -m lit_golf\.cli ([^;|&]*)")  # a queue line's first lit_golf.cli command
LEVERS = re.compile(r"python3 bench/train_step_levers\.py ([^;|&]*)")  # ... or its levers benchmark


def cli_args(command: str, scratch: Path, pattern: re.Pattern = CLI) -> list[str] | None:
    """The arguments of `command`'s call matched by `pattern` (lit_golf.cli's by default) with the queue's
    variables pointed into `scratch`."""
    match = pattern.search(command)
    if match is None:
        return None
    values = {"RUNS": scratch / "runs", "LEASE": scratch, "DATA": scratch / "data", "ART": scratch / "artifact.ptz",
              "a": scratch / "artifact.ptz"}
    return [re.sub(r"\$\{?(RUNS|LEASE|DATA|ART|a)\b\}?", lambda m: str(values[m[1]]), word)
            for word in shlex.split(match[1])]


def parse_error(args: list[str]) -> str | None:
    """None when `lit-golf <args>` resolves to a config; else the last line it said about why not."""
    from lit_golf.lightning_cli import printed_config

    said = io.StringIO()
    try:  # the queues' --config paths are relative to the repository root, as on the GPU box
        with contextlib.redirect_stderr(said), contextlib.chdir(REPO):
            printed_config(args)
    except Exception as error:  # noqa: BLE001  (every way a command fails to parse is this job's failure)
        lines = [line for line in (said.getvalue() + str(error)).splitlines() if line.strip()]
        return lines[-1] if lines else type(error).__name__
    return None


def levers_error(args: list[str], scratch: Path) -> str | None:
    """None when `train_step_levers.py <args>` parses (its --out moved to a new file in `scratch`); else its error."""
    if str(REPO / "bench") not in sys.path:  # the benchmark imports its bench/ siblings, as when run from there
        sys.path.insert(0, str(REPO / "bench"))
    from train_step_levers import parse_args

    if "--out" in args:
        at = args.index("--out") + 1
        args = [*args[:at], str(Path(tempfile.mkdtemp(dir=scratch)) / "levers.json"), *args[at + 1:]]
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            parse_args(args)
    except SystemExit:
        lines = [line for line in said.getvalue().splitlines() if line.strip()]
        return lines[-1] if lines else "train_step_levers.py refused its arguments"
    return None


def command_error(command: str, scratch: Path) -> tuple[str, str | None] | None:
    """(the tool checked, None or its error) for a queue command, or None when it runs neither tool."""
    args = cli_args(command, scratch)
    if args is not None:
        return "lit_golf.cli", parse_error(args)
    args = cli_args(command, scratch, LEVERS)
    if args is not None:
        return "train_step_levers.py", levers_error(args, scratch)
    return None


def check(queues: list[str]) -> int:
    failed = 0
    errors: dict[str, tuple[str, str | None] | None] = {}  # a command that several queues repeat is parsed once
    with tempfile.TemporaryDirectory() as scratch:
        for queue in queues:
            path = Path(queue)
            if not path.is_file():
                print(f"{queue}: no such queue file", file=sys.stderr)
                failed = 1
                continue
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                name, _, command = line.partition("|")
                key = command.strip()
                if key not in errors:
                    errors[key] = command_error(command, Path(scratch))
                if errors[key] is None:
                    print(f"{queue} {name}: no lit_golf.cli or train_step_levers.py command (not checked)")
                    continue
                tool, error = errors[key]
                if error is None:
                    print(f"{queue} {name}: parses")
                else:
                    print(f"{queue} {name}: FAILS ({tool}): {error}")
                    failed = 1
    return failed


if __name__ == "__main__":
    raise SystemExit(check(sys.argv[1:]))
