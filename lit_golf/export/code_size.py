"""Bytes of the code an artifact needs to run, counted the way the challenge counts its script.

The 16,000,000-byte limit covers model *and* code. Upstream measures its single script after
minification and compression; here the code is every module the loader and the evaluation need:
`CODE_ROOTS` plus everything they import from `lit_golf` (package `__init__` files included, since
importing a submodule runs them). Each file is minified (comments, docstrings and formatting dropped
via `ast`), the files are concatenated and the result is compressed with the artifact's compressor.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from lit_golf.export.serialize import compress

PACKAGE = "lit_golf"
PACKAGE_DIR = Path(__file__).resolve().parents[1]

# What running an artifact needs: model definition, loader + file format, evaluation. Paths relative
# to the package directory; a directory means every module in it.
CODE_ROOTS = (
    "config.py",
    "model.py",
    "attention.py",
    "artifact.py",
    "export/serialize.py",
    "eval",
)


@dataclass
class CodeSize:
    files: list[str]
    raw_bytes: int
    minified_bytes: int
    compressed_bytes: int


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


def _module_file(module: str, package_dir: Path) -> Path | None:
    """File of a `lit_golf...` module, or None when `module` is not one (e.g. an attribute import)."""
    parts = module.split(".")[1:]
    base = package_dir.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _imported_modules(path: Path, package_dir: Path) -> set[str]:
    """Every `lit_golf` module that `path` imports, absolute or relative, anywhere in the file."""
    this = _module_name(path, package_dir)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def _parent_inits(path: Path, package_dir: Path) -> list[Path]:
    inits, folder = [], path.parent
    while folder == package_dir or package_dir in folder.parents:
        inits.append(folder / "__init__.py")
        folder = folder.parent
    return [p for p in inits if p.is_file()]


def code_files(roots: tuple[str, ...] = CODE_ROOTS, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """`roots` and their `lit_golf` import closure, sorted; a missing root is a clear error."""
    pending = []
    for root in roots:
        path = package_dir / root
        if path.is_dir():
            pending += sorted(path.glob("*.py"))
        elif path.is_file():
            pending.append(path)
        else:
            raise FileNotFoundError(f"code-size root {path} does not exist; update CODE_ROOTS in {__file__}")
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        pending += _parent_inits(path, package_dir)
        for module in _imported_modules(path, package_dir):
            found = _module_file(module, package_dir)
            if found is not None:
                pending.append(found)
    return sorted(seen)


def measure_code(
    compressor: str = "brotli", brotli_quality: int = 11, roots: tuple[str, ...] = CODE_ROOTS,
    package_dir: Path = PACKAGE_DIR,
) -> CodeSize:
    files = code_files(roots, package_dir)
    sources = [p.read_text(encoding="utf-8") for p in files]
    names = [str(p.relative_to(package_dir.parent)) for p in files]
    bundle = "\n".join(f"# {name}\n{minify(src)}" for name, src in zip(names, sources, strict=True)).encode()
    return CodeSize(
        files=names,
        raw_bytes=sum(len(s.encode()) for s in sources),
        minified_bytes=len(bundle),
        compressed_bytes=len(compress(bundle, compressor, brotli_quality)),
    )
