"""The `lit-golf` dispatcher: no import cycle inside lit_golf, help without Lightning, configs by name."""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lit_golf
from lit_golf.cli import main
from lit_golf.config_files import CONFIG_DIR, config_names, resolve_config, resolve_config_args

PACKAGE = Path(lit_golf.__file__).resolve().parent
REPO = PACKAGE.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(name: str, source: str, is_package: bool, modules: set[str]) -> set[str]:
    """The lit_golf modules `name` imports anywhere in its source, function-local imports included."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            while target and target not in modules:  # `from pkg import mod` names mod; `from mod import f` names mod
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "configs" not in p.parts}
    return {name: _imports(name, path.read_text(), path.name == "__init__.py", set(files))
            for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_inside_lit_golf():
    graph = import_graph()
    assert "lit_golf.demo" not in graph["lit_golf.lightning_cli"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    # the shape cli.py <-> demo.py had: a module-level import one way, a function-local one back
    modules = {"lit_golf.cli", "lit_golf.demo", "lit_golf.data", "lit_golf.data.prepare"}
    graph = {
        "lit_golf.cli": _imports("lit_golf.cli", "from lit_golf import demo\n", False, modules),
        "lit_golf.demo": _imports("lit_golf.demo", "def f():\n    from lit_golf.cli import main\n", False, modules),
        "lit_golf.data": set(),
        "lit_golf.data.prepare": _imports("lit_golf.data.prepare", "from . import prepare\nfrom .. import cli\n",
                                          False, modules),
    }
    assert graph["lit_golf.data.prepare"] == {"lit_golf.data", "lit_golf.cli"}
    assert find_cycle(graph) == ["lit_golf.cli", "lit_golf.demo", "lit_golf.cli"]


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_lit_golf_help_answers_in_under_two_seconds():
    code = "import sys; from lit_golf.cli import main; sys.exit(main(['--help']))"
    _run(code)  # warm the file cache, so the bound measures the dispatch, not the disk
    started = time.perf_counter()
    done = _run(code)
    seconds = time.perf_counter() - started
    assert done.returncode == 0 and "prepare-data" in done.stdout, done.stderr
    assert seconds < 2.0, f"lit-golf --help took {seconds:.2f}s"


def test_help_of_every_tool_loads_neither_lightning_nor_torch():
    code = """
import contextlib, io, json, sys
from lit_golf.cli import TOOLS, main
seen = {}
for argv in (["--help"], *([tool, "--help"] for tool in TOOLS)):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit:
            pass
    seen[" ".join(argv)] = (out.getvalue().startswith("usage"), sorted(m for m in ("lightning", "torch") if m in sys.modules))
print(json.dumps(seen))
"""
    done = _run(code)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {k: [True, []] for k in seen} and len(seen) == 7, seen  # --help and the six tools


def test_shipped_configs_are_addressable_by_name():
    assert {"record", "tiny_cpu", "overrides/fixed_steps_cpu", "overrides/fixed_steps_1gpu"} <= set(config_names())
    assert Path(resolve_config("record")) == CONFIG_DIR / "record.yaml"
    assert Path(resolve_config("overrides/fixed_steps_cpu.yaml")).is_file()
    assert resolve_config("configs/tiny_cpu.yaml") == "configs/tiny_cpu.yaml"  # an existing path stays a path
    assert resolve_config("no_such_config") == "no_such_config"
    assert resolve_config("{trainer: {max_steps: 3}}") == "{trainer: {max_steps: 3}}"  # inline YAML
    argv = resolve_config_args(["fit", "-c", "tiny_cpu", "--config=record", "--trainer.max_steps", "tiny_cpu"])
    assert argv[2].endswith("tiny_cpu.yaml") and argv[3].endswith("record.yaml") and argv[5] == "tiny_cpu"
    assert (REPO / "configs" / "record.yaml").read_text() == (CONFIG_DIR / "record.yaml").read_text()


@pytest.mark.parametrize("name", config_names())
def test_every_shipped_config_parses(name, capsys):
    from lit_golf.cli import main

    record = ["--config", "record"]  # overlays are layered on the config they were written for
    bases = {"overrides/fixed_steps_cpu": ["--config", "tiny_cpu"], "overrides/fixed_steps_1gpu": record,
             "frontier": record}
    with pytest.raises(SystemExit) as done:
        main(["fit", *bases.get(name, []), "--config", name, "--print_config"])
    assert done.value.code in (0, None)
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["gpt"]["vocab_size"] >= 1 and printed["trainer"]["strategy"]


def test_the_evaluation_owns_the_validation_window_batch_and_documents(tiny_data, monkeypatch):
    """`data.eval_seq_len`, `val_batch_seqs`, `max_val_docs` and `max_val_tokens` follow `model.evaluation` through
    the CLI's links."""
    from lit_golf.lightning_cli import GolfTrainer, run_lightning_cli

    monkeypatch.setattr(GolfTrainer, "fit", lambda *args, **kwargs: None)  # parse and build, do not train
    common = ["fit", "--config", str(CONFIG_DIR / "tiny_cpu.yaml"), "--data.data_dir", str(tiny_data.data_dir),
              "--model.gpt.vocab_size", str(tiny_data.vocab_size), "--trainer.logger", "false"]
    cli = run_lightning_cli([*common, "--model.evaluation.plain.batch_seqs", "4", "--model.evaluation.max_docs", "7"])
    dm, evaluation = cli.datamodule, cli.model.eval_config
    assert (dm.eval_seq_len, dm.val_batch_seqs, dm.max_val_docs) == (256, 4, 7)
    assert (evaluation.plain.seq_len, evaluation.plain.batch_seqs, evaluation.max_docs) == (256, 4, 7)
    defaults = run_lightning_cli(common).datamodule  # tiny_cpu.yaml's own values
    assert (defaults.eval_seq_len, defaults.val_batch_seqs, defaults.max_val_docs, defaults.max_val_tokens) == \
        (256, 8, 64, 16384)


def test_lit_golf_log_lines_print_once_per_run_not_per_rank():
    code = """
import logging
from lit_golf.cli import _configure_logging
_configure_logging()
log = logging.getLogger("lit_golf")
log.info("info line")
log.warning("warning line")
"""
    by_rank = {}
    for rank in ("0", "1", "3"):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID")}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              env={**env, "RANK": rank})
        by_rank[rank] = [line.split(" ", 1)[1] for line in done.stderr.splitlines()]
    assert by_rank["0"] == ["info line", "warning line"]
    assert by_rank["1"] == ["[rank 1] warning line"] and by_rank["3"] == ["[rank 3] warning line"]


def test_rank_zero_filter_follows_lightnings_rank(monkeypatch):
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from lit_golf.cli import RankZeroFilter, process_rank

    info = logging.LogRecord("lit_golf", logging.INFO, __file__, 1, "info", None, None)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(rank_zero_only, "rank", 2)  # the strategy sets it once the process group is up
    assert process_rank() == 2 and not RankZeroFilter().filter(info)
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert RankZeroFilter().filter(info) and info.rank_prefix == ""


@pytest.mark.slow
def test_a_built_wheel_ships_the_configs_and_runs_them_by_name_outside_the_repo(tmp_path):
    import shutil
    import zipfile

    pytest.importorskip("setuptools", reason="building without isolation needs setuptools in this environment")
    source = tmp_path / "src"
    shutil.copytree(PACKAGE, source / "lit_golf", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "configs", source / "configs")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "wheel")], cwd=source, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("lit_golf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"lit_golf/configs/{n}.yaml" for n in config_names()} <= set(names)
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    code = ("import sys, lit_golf; from lit_golf.cli import main; print(lit_golf.__file__); "
            "sys.exit(main(['fit', '--config', 'record', '--print_config']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=outside, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(tmp_path / "site")) and "num_layers: 11" in done.stdout


@pytest.mark.parametrize("tool, yaml_text, expected", [
    ("download", "variant: sp1024\ntrain_shards: 3\n", {"variant": "sp1024", "train_shards": 3}),
    ("prepare-data", "input: [docs.jsonl]\nvocab_size: 300\ncaseops: true\n",
     {"input": ["docs.jsonl"], "vocab_size": 300, "caseops": True}),
])
def test_data_tools_read_a_config_file_and_print_their_config(tool, yaml_text, expected, tmp_path, capsys):
    import yaml

    config = tmp_path / "tool.yaml"
    config.write_text(yaml_text)
    with pytest.raises(SystemExit) as done:
        main([tool, "--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {k: printed[k] for k in expected} == expected


def test_a_tool_s_unknown_flag_is_one_line(capsys):
    assert main(["download", "--bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lit-golf download: error:") and "--bogus" in err and "\n" not in err


@pytest.mark.parametrize("cuda", [True, False])
def test_lightning_commands_run_fp32_matmuls_on_tf32_on_cuda_only(cuda, monkeypatch, capsys):
    """The record's script sets matmul precision "high"; on a CPU (AMX) it would change what the tests compare."""
    import torch

    from lit_golf.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    before = torch.get_float32_matmul_precision()
    try:
        with pytest.raises(SystemExit):
            main(["fit", "--config", "tiny_cpu", "--print_config"])
        assert torch.get_float32_matmul_precision() == ("high" if cuda else before)
    finally:
        torch.set_float32_matmul_precision(before)
    capsys.readouterr()
