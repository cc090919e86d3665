"""The code bytes of a submission: the size of the `train_gpt.py` that ships it, built here.

The 16,000,000-byte limit covers the artifact *and* the code, and the challenge counts the code as
the bytes of the submission's `train_gpt.py`. A lit_golf submission ships what a run executes (it
trains, exports and evaluates), so `submission_script` writes one self-contained file: a short
launcher and, in one compressed string, every module the entry point imports (`code_files`;
minified: comments, docstrings and formatting dropped via `ast`) plus the resolved config of the run. Export counts
exactly that file's bytes (`measure_code`), and `lit-golf submit` writes the same bytes, so the budget
checked during fit is the real one. Run from such a file (`SCRIPT_ENV` set by its launcher), the
file itself is measured.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lit_golf.export.serialize import compress

PACKAGE = "lit_golf"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
SCRIPT_NAME = "train_gpt.py"
# Set by a submission's launcher to its own path: the file whose bytes count.
SCRIPT_ENV = "LIT_GOLF_SCRIPT"

# The resolved config of the run in this process (`set_run_config`, called by the CLI): part of the script.
_run_config = ""

# The launcher: unpack the package and config into a temporary folder, import lit_golf from there and
# run `lit-golf run` with the challenge's environment variables. Latin-1 source, so that the compressed
# bytes sit in a string literal one character per byte (escapes only for quote, backslash, CR, LF, NUL).
LAUNCHER = """# -*- coding: latin-1 -*-
# lit_golf {version}: {files} package modules and the run's config, {compressor}-compressed JSON below.
# Run: torchrun --standalone --nproc_per_node=8 train_gpt.py (or python train_gpt.py); env DATA_DIR, SEED.
import atexit,json,os,shutil,sys,tempfile
from pathlib import Path
def main():
 import {compressor} as c
 p=json.loads(c.decompress(B.encode('latin-1')))
 d=Path(tempfile.mkdtemp(prefix='lit_golf_'));atexit.register(shutil.rmtree,d,True)
 for n,s in p['files'].items():
  f=d/n;f.parent.mkdir(parents=True,exist_ok=True);f.write_text(s,encoding='utf-8')
 (d/'config.yaml').write_text(p['config'],encoding='utf-8')
 sys.path.insert(0,str(d));os.environ['{env}']=os.path.abspath(__file__)
 a=['run','--config',str(d/'config.yaml')]
 for k,o in (('DATA_DIR','--data.data_dir'),('SEED','--seed_everything')):
  if os.environ.get(k):a+=[o,os.environ[k]]
 from lit_golf.cli import main as m
 sys.exit(m(a+sys.argv[1:]))
B={blob}
if __name__=='__main__':main()
"""


@dataclass
class CodeSize:
    files: list[str]
    raw_bytes: int  # the package's source files as written
    minified_bytes: int  # the JSON payload (minified modules + config) before compression
    compressed_bytes: int  # the bytes of train_gpt.py: what counts
    script: bytes = field(repr=False, default=b"")  # that train_gpt.py itself (the export writes it out)


def set_run_config(config_text: str) -> None:
    """Record the resolved config of this process's run: the script that counts embeds it."""
    global _run_config
    _run_config = config_text


def current_run_config() -> str:
    """The resolved config recorded by `set_run_config` ("" outside a CLI run)."""
    return _run_config


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]


def minify(source: str) -> str:
    """Source without comments, docstrings or formatting (re-generated from the syntax tree)."""
    tree = ast.parse(source)
    _strip_docstrings(tree)
    return ast.unparse(tree)


# What a submission runs: `train_gpt.py` calls `lit_golf.cli.main(["run", ...])`.
ENTRY_MODULE = "lit_golf.cli"


def _module_path(name: str, package_dir: Path) -> Path | None:
    base = package_dir.parent / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def code_files(package_dir: Path = PACKAGE_DIR, entry: str = ENTRY_MODULE) -> list[Path]:
    """The modules a submission runs, sorted: the import closure of `entry` inside the package.

    Function-local imports count (the CLI imports Lightning's side, and the model its Triton kernels,
    only when used), and so do the packages' `__init__` files. Tools a submission never runs (data
    preparation, download, demo, submit/check, sweep) are reached only through the dispatcher's
    module-name strings, so they are not shipped.
    """
    found: set[Path] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        path = _module_path(name, package_dir)
        if path is None or path in found:
            continue
        found.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
                todo += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return sorted(found)


def payload(config_text: str, files: list[Path], package_dir: Path = PACKAGE_DIR) -> bytes:
    """The JSON the launcher unpacks: `files` (path under the temporary folder -> minified source), `config`."""
    sources = {p.relative_to(package_dir.parent).as_posix(): minify(p.read_text(encoding="utf-8")) for p in files}
    return json.dumps({"files": sources, "config": config_text}, sort_keys=True, separators=(",", ":")).encode()


def latin1_literal(data: bytes) -> str:
    """A Python string literal whose latin-1 encoding is `data` (for a latin-1 source file)."""
    escapes = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\0": "\\x00"}
    return "'" + "".join(escapes.get(ch, ch) for ch in data.decode("latin-1")) + "'"


def submission_script(
    config_text: str, compressor: str = "brotli", brotli_quality: int = 11, package_dir: Path = PACKAGE_DIR
) -> bytes:
    """The bytes of `train_gpt.py`: the launcher with the package and `config_text` compressed inside."""
    files = code_files(package_dir)
    return _launcher(payload(config_text, files, package_dir), len(files), compressor, brotli_quality)


def _launcher(data: bytes, num_files: int, compressor: str, brotli_quality: int) -> bytes:
    from lit_golf import __version__

    blob = compress(data, compressor, brotli_quality)
    text = LAUNCHER.format(version=__version__, files=num_files, compressor=compressor, env=SCRIPT_ENV,
                           blob=latin1_literal(blob))
    return text.encode("latin-1")


def measure_code(
    compressor: str = "brotli", brotli_quality: int = 11, config_text: str | None = None,
    package_dir: Path = PACKAGE_DIR,
) -> CodeSize:
    """Code bytes as the challenge counts them: the size of the `train_gpt.py` that ships this run.

    `config_text` defaults to the run's resolved config (`set_run_config`); inside a submission
    (`SCRIPT_ENV` set) the running script's own size is what counts.
    """
    files = code_files(package_dir)
    config_text = current_run_config() if config_text is None else config_text
    data = payload(config_text, files, package_dir)
    running = os.environ.get(SCRIPT_ENV)
    script = Path(running).read_bytes() if running else _launcher(data, len(files), compressor, brotli_quality)
    return CodeSize(
        files=[p.relative_to(package_dir.parent).as_posix() for p in files],
        raw_bytes=sum(p.stat().st_size for p in files),
        minified_bytes=len(data),
        compressed_bytes=len(script),
        script=script,
    )
