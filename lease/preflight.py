"""Parse every `lit_golf.cli` command of lease queues before a lease spends device time on a typo.

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


def cli_args(command: str, scratch: Path) -> list[str] | None:
    """The arguments of `command`'s lit_golf.cli call with the queue's variables pointed into `scratch`."""
    match = CLI.search(command)
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


def check(queues: list[str]) -> int:
    failed = 0
    errors: dict[tuple[str, ...], str | None] = {}  # a command that several queues repeat is parsed once
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
                args = cli_args(command, Path(scratch))
                if args is None:
                    print(f"{queue} {name}: no lit_golf.cli command (not checked)")
                    continue
                key = tuple(args)
                if key not in errors:
                    errors[key] = parse_error(args)
                if errors[key] is None:
                    print(f"{queue} {name}: parses")
                else:
                    print(f"{queue} {name}: FAILS: {errors[key]}")
                    failed = 1
    return failed


if __name__ == "__main__":
    raise SystemExit(check(sys.argv[1:]))
