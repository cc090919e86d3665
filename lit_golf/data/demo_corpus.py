"""A small English corpus that ships with every Python install: the standard library's docstrings.

`make demo` must run on a fresh machine without network access, so it trains its tokenizer and
model on the docstrings of the standard-library modules, classes and functions.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from lit_golf.files import atomic_path

# Modules whose import opens windows or browsers, prints, grabs the terminal, or is just huge.
SKIPPED_MODULES = frozenset(
    {"antigravity", "this", "tkinter", "idlelib", "turtle", "turtledemo", "readline", "test", "tests", "idle_test",
     "pydoc_data"}
)
MIN_DOC_CHARS = 40
DEFAULT_MAX_DOCS = 20_000
MAX_CORPUS_BYTES = 4_000_000


def stdlib_module_names() -> list[str]:
    """Public top-level standard-library modules, sorted, without the ones that misbehave on import."""
    names = getattr(sys, "stdlib_module_names", None)
    if names is None:  # Python 3.9: fall back to what the interpreter was built with
        names = sys.builtin_module_names
    return sorted(n for n in names if _is_public(n))


def _is_public(name: str) -> bool:
    return not any(part.startswith("_") or part in SKIPPED_MODULES for part in name.split("."))


def stdlib_modules() -> Iterator[object]:
    """Importable public standard-library modules and their public submodules, depth first, sorted."""
    for name in stdlib_module_names():
        module = _import_quietly(name)
        if module is None:
            continue
        yield module
        if hasattr(module, "__path__"):
            found = pkgutil.walk_packages(module.__path__, prefix=f"{name}.", onerror=lambda _name: None)
            for sub_name in sorted(info.name for info in found if _is_public(info.name)):
                submodule = _import_quietly(sub_name)
                if submodule is not None:
                    yield submodule


def _import_quietly(name: str):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except Exception:  # noqa: BLE001 - platform-specific modules fail in many ways; skip them all
            return None


def _own_members(owner, module_name: str) -> Iterator[tuple[str, object]]:
    """Classes and functions defined in `module_name` (not re-exported ones), sorted by name."""
    for name, member in sorted(vars(owner).items()):
        if name.startswith("_"):
            continue
        if (inspect.isclass(member) or inspect.isroutine(member)) and getattr(member, "__module__", None) == module_name:
            yield name, member


def module_documents(module) -> Iterator[str]:
    """Docstrings of a module, its classes and functions, and the classes' methods, in a fixed order."""
    name = module.__name__
    objects: list[tuple[str, object]] = [(name, module)]
    for member_name, member in _own_members(module, name):
        objects.append((f"{name}.{member_name}", member))
        if inspect.isclass(member):
            objects.extend((f"{name}.{member_name}.{m}", v) for m, v in _own_members(member, name))
    for qualified_name, obj in objects:
        doc = getattr(obj, "__doc__", None)  # a class's own docstring: __doc__ is not inherited
        if isinstance(doc, str):
            doc = inspect.cleandoc(doc)
            if len(doc) >= MIN_DOC_CHARS:
                yield f"{qualified_name}\n\n{doc}"


def stdlib_documents() -> Iterator[str]:
    """Unique docstring documents of all importable standard-library modules."""
    seen: set[str] = set()
    for module in stdlib_modules():
        for doc in module_documents(module):
            body = doc.split("\n\n", 1)[1]
            if body not in seen:
                seen.add(body)
                yield doc


def write_stdlib_corpus(path: str | Path, max_docs: int = DEFAULT_MAX_DOCS, max_bytes: int = MAX_CORPUS_BYTES) -> int:
    """Write standard-library docstrings as jsonl (`{"text": ...}` per line); return the document count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = size = 0
    with atomic_path(path) as partial, open(partial, "w", encoding="utf-8") as f:
        for doc in stdlib_documents():
            if written >= max_docs or size + len(doc.encode("utf-8")) > max_bytes:
                break
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            written += 1
            size += len(doc.encode("utf-8"))
    return written
