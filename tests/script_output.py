"""Helpers for the tests of bench/ scripts: load one, run its `main(argv)` (not a test module itself)."""

from __future__ import annotations


def run_main(main, argv, capsys) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `main([str(a) for a in argv])`."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str, prog: str) -> str:
    """The one `<prog>: error: ...` line that is all of `err`; never a traceback."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def load_bench_script(name: str):
    """`bench/<name>.py` as a module (bench/ is no package), registered so its dataclasses find their module."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
