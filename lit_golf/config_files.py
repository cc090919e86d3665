"""The shipped YAML configs, addressable by name: `--config record` is `configs/record.yaml`.

The files live in the repository's `configs/` folder (the one source of truth, edited in place);
`lit_golf/configs` links to it so they are package data too and an installed lit_golf finds them.
Standard library only: the command line resolves names before it imports Lightning.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SUFFIXES = (".yaml", ".yml")


def config_names() -> list[str]:
    """Every shipped config by name (`record`, `tiny_cpu`, `overrides/fixed_steps_cpu`, ...)."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix()
                  for p in CONFIG_DIR.rglob("*") if p.suffix in SUFFIXES)


def resolve_config(value: str) -> str:
    """A shipped config's path for its name; anything else (a file path, inline YAML) unchanged.

    An existing file wins over a name, so `configs/record.yaml` and `./record` keep meaning files.
    """
    if not value or Path(value).exists() or any(c in value for c in ":{}\n"):
        return value
    for candidate in (CONFIG_DIR / value, *(CONFIG_DIR / f"{value}{s}" for s in SUFFIXES)):
        if candidate.is_file() and candidate.resolve().is_relative_to(CONFIG_DIR.resolve()):
            return str(candidate)
    return value


def resolve_config_args(argv: list[str]) -> list[str]:
    """`argv` with every `--config NAME` / `--config=NAME` / `-c NAME` replaced by the shipped file's path."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in ("-c", "--config") and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    return out
