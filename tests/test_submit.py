"""`lit-golf submit`: the records/ folder from run folders, and the significance test behind its p-value."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from lit_golf.cli import main
from lit_golf.config_files import resolve_config
from lit_golf.export.code_size import PACKAGE_DIR, code_files, latin1_literal, submission_script
from lit_golf.submission.stats import gains_in_nats, improvement_p_value, t_upper_tail
from tests.test_check import legal_results, scored, write_run


def t_tail_by_integration(t: float, dof: int, steps: int = 20000) -> float:
    """P(T > t) from Student's density, integrated with Simpson's rule after x = tan(u) (a finite range)."""
    norm = math.gamma((dof + 1) / 2) / (math.sqrt(dof * math.pi) * math.gamma(dof / 2))

    def density_in_u(u: float) -> float:
        x = math.tan(u)
        return norm * (1 + x * x / dof) ** (-(dof + 1) / 2) / math.cos(u) ** 2

    a, b = math.atan(t), math.pi / 2 - 1e-9
    h = (b - a) / steps
    total = density_in_u(a) + density_in_u(b)
    total += sum((4 if i % 2 else 2) * density_in_u(a + i * h) for i in range(1, steps))
    return total * h / 3


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 7, 10])
@pytest.mark.parametrize("t", [-1.5, 0.0, 0.8, 2.5, 6.0])
def test_student_t_tail_matches_the_integrated_density(t, dof):
    assert t_upper_tail(t, dof) == pytest.approx(t_tail_by_integration(t, dof), abs=1e-7)


def test_p_value_is_a_one_sided_test_of_the_mean_gain_against_the_threshold():
    gains = [0.009, 0.011, 0.010]
    t = (statistics.fmean(gains) - 0.005) / (statistics.stdev(gains) / math.sqrt(3))
    assert improvement_p_value(gains) == pytest.approx(t_upper_tail(t, 2))
    assert improvement_p_value(gains) < 0.01
    assert improvement_p_value([0.006, 0.004, 0.005]) > 0.4  # mean exactly at the threshold: no evidence
    assert improvement_p_value([0.02]) is None


def test_gains_are_converted_to_nats_per_token_with_each_seeds_own_ratio():
    # 2 bytes per token: loss (nats/token) = bpb * ln 2 * 2
    bpb = 1.0
    loss = bpb * math.log(2) * 2
    assert gains_in_nats(1.01, [bpb], [loss]) == pytest.approx([0.01 * math.log(2) * 2])


def fake_run(folder: Path, seed: int, bpb: float, config_text: str) -> Path:
    return write_run(folder, scored(legal_results(seed, folder), bpb), config_text)


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    record = Path(resolve_config("record")).read_text()
    changed = record.replace("matrix_lr: 0.026", "matrix_lr: 0.03")
    assert changed != record
    return [fake_run(tmp_path / f"run{s}", s, bpb, changed) for s, bpb in ((1, 1.0610), (2, 1.0605), (3, 1.0612))]


def test_submit_writes_the_records_folder_from_the_runs(tmp_path, runs, capsys):
    out = tmp_path / "sub"
    assert main(["submit", *map(str, runs), "--out", str(out), "--baseline-bpb", "1.0810", "--author", "Ada",
                 "--github-id", "ada", "--name", "Test record", "--technique-summary", "higher matrix LR"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"train_gpt.py", "requirements.txt", "config.yaml", "submission.json", "README.md"} <= names
    assert {f"train_seed{s}.log" for s in (1, 2, 3)} | {f"results_seed{s}.json" for s in (1, 2, 3)} <= names
    assert (out / "train_gpt.py").read_bytes() == (runs[0] / "train_gpt.py").read_bytes()
    requirements = (out / "requirements.txt").read_text()
    assert "torch" in requirements and "lit_golf" not in requirements.replace("-", "_")

    record = json.loads((out / "submission.json").read_text())
    bpbs = [1.0610, 1.0605, 1.0612]
    assert record["seeds"] == [1, 2, 3] and record["track"] == "10min_16mb" and record["author"] == "Ada"
    assert record["val_bpb"] == pytest.approx(statistics.fmean(bpbs), abs=1e-8)
    assert record["val_bpb_std"] == pytest.approx(statistics.stdev(bpbs), abs=1e-8)
    script = (out / "train_gpt.py").stat().st_size
    assert record["seed_results"]["2"]["artifact_bytes"] == 15_900_000 + script
    gains = gains_in_nats(1.0810, bpbs, [b * 2.6 for b in bpbs])
    assert record["p_value"] == pytest.approx(improvement_p_value(gains)) and record["p_value"] < 0.01
    assert record["compliance"] == dict.fromkeys(
        ("artifact_under_16mb", "train_under_600s", "gptq_within_budget", "eval_under_600s", "full_val_set",
         "score_matches_log", "score_first_ttt", "no_val_data_in_training", "three_seeds", "submission_matches_seeds"),
        True)

    readme = (out / "README.md").read_text()
    assert "| `model.optim.matrix_lr` | 0.026 | 0.03 |" in readme
    assert readme.count("| 1 |") + readme.count("| 2 |") + readme.count("| 3 |") >= 3
    assert "SEED=1 torchrun --standalone --nproc_per_node=8 train_gpt.py" in readme
    assert main(["check", str(out)]) == 0
    capsys.readouterr()


def test_requirements_name_the_zpaq_package_when_the_config_compresses_per_group(tmp_path):
    """A frontier export (per-group ZPAQ) cannot load without `zpaq`: the submission must install it."""
    record = Path(resolve_config("record")).read_text()
    per_group = record + "\n".join(["", "gptq:", "  config:", "    per_group:", "      enabled: true", ""])
    outs = {}
    for name, text in (("brotli", record), ("zpaq", per_group)):
        runs = [fake_run(tmp_path / f"{name}{s}", s, 1.06, text) for s in (1, 2, 3)]
        outs[name] = tmp_path / f"sub_{name}"
        assert main(["submit", *map(str, runs), "--out", str(outs[name])]) == 0
    names = {k: {line.split(">")[0].split("<")[0] for line in (o / "requirements.txt").read_text().split()}
             for k, o in outs.items()}
    assert "zpaq" in names["zpaq"] and "zpaq" not in names["brotli"]
    assert names["zpaq"] - {"zpaq"} == names["brotli"]


def test_submit_refuses_repeated_seeds_and_incomplete_runs(tmp_path, runs, capsys):
    assert main(["submit", str(runs[0]), str(runs[0]), "--out", str(tmp_path / "a")]) == 2
    assert "repeat a seed" in capsys.readouterr().err
    results = json.loads((runs[1] / "results.json").read_text())
    del results["final_bpb"]
    (runs[1] / "results.json").write_text(json.dumps(results))
    assert main(["submit", str(runs[1]), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no final_bpb" in err


def test_submit_and_check_help_load_neither_lightning_nor_torch():
    code = """
import contextlib, io, sys
from lit_golf.cli import main
for tool in ("submit", "check"):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([tool, "--help"])
print(sorted(m for m in ("lightning", "torch") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_script_literal_holds_any_bytes_one_character_each():
    data = bytes(range(256)) * 3 + b"\r\n\r\0'\\\"'''"
    source = ("# -*- coding: latin-1 -*-\nB=" + latin1_literal(data) + "\n").encode("latin-1")
    namespace: dict = {}
    exec(compile(source, "script", "exec"), namespace)
    assert namespace["B"].encode("latin-1") == data
    # one character per byte; escapes (one extra character, three for NUL) only for quote, backslash, CR, LF, NUL
    escapes = sum(data.count(c) for c in (b"'", b"\\", b"\r", b"\n")) + 3 * data.count(b"\0")
    assert len(latin1_literal(data)) == 2 + len(data) + escapes


def test_the_script_carries_every_module_and_the_config():
    import ast

    import brotli

    script = submission_script("seed_everything: 7\n")
    blob = next(node.value.value for node in ast.parse(script).body
                if isinstance(node, ast.Assign) and node.targets[0].id == "B")
    payload = json.loads(brotli.decompress(blob.encode("latin-1")))
    assert payload["config"] == "seed_everything: 7\n"
    assert set(payload["files"]) == {p.relative_to(PACKAGE_DIR.parent).as_posix() for p in code_files()}
    assert "lit_golf/lightning_cli.py" in payload["files"] and "lit_golf/model.py" in payload["files"]


def test_each_seed_counts_its_own_script_and_seeds_may_differ_in_seed_and_paths(tmp_path, capsys):
    """A run's train_gpt.py embeds its config, seed and paths included, so two seeds' scripts differ in size:
    each seed's `artifact_bytes` is its artifact + its own script; seeds and paths do not make configs differ."""
    runs = []
    for seed, code_bytes in ((1, 80_000), (2, 80_060)):
        config = (f"seed_everything: {seed}\ndata:\n  seed: {seed}\n  data_dir: /data{seed}\n  vocab_size: 8192\n"
                  f"trainer:\n  max_steps: 4500\n  logger:\n    init_args:\n      save_dir: logs{seed}\n")
        runs.append(write_run(tmp_path / f"run{seed}", {**legal_results(seed, tmp_path), "code_bytes": code_bytes},
                              config))
    out = tmp_path / "sub"
    assert main(["submit", *map(str, runs), "--out", str(out)]) == 0
    record = json.loads((out / "submission.json").read_text())
    assert {s: r["artifact_bytes"] for s, r in record["seed_results"].items()} == {"1": 15_980_000, "2": 15_980_060}
    assert (out / "train_gpt.py").stat().st_size == 80_000  # the first run's script ships
    assert "| 15,980,060 |" in (out / "README.md").read_text()
    capsys.readouterr()
    assert main(["check", str(out)]) == 1  # two seeds, nothing else
    assert capsys.readouterr().out.count("✗") == 1


def test_the_readme_table_names_every_switch_the_run_turns_on_not_only_those_record_yaml_states():
    """The frontier's gates, LQER and ZPAQ are off by default, so record.yaml never mentions them."""
    import yaml

    from lit_golf.lightning_cli import printed_config
    from lit_golf.submission.submit import config_differences

    run_config = printed_config(["fit", "--config", "record", "--config", "frontier", "--data.data_dir", "/elsewhere",
                                 "--model.training.compile_cache", "/tmp/cache.bin"])
    differences = {key: (record, run) for key, record, run in config_differences(yaml.safe_dump(run_config))}
    assert differences["model.gpt.smear_gate"] == (False, True)
    assert differences["gptq.config.schemes.attn"] == ("gptq", "lqer_asym")
    assert differences["gptq.config.per_group.enabled"] == (False, True)
    assert differences["model.optim.beta2"] == (0.95, 0.99)  # one record.yaml states, as before
    assert not {"data.data_dir", "model.training.compile_cache"} & set(differences)  # this machine's paths
