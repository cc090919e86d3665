"""Bad input to the FP8 switch (`--model.gpt.fp8_training`) and to its benchmark (`bench/train_step_levers.py`):
one line, exit code 2, before any step runs; a benchmark never writes over an earlier result."""

from __future__ import annotations

import pytest
from test_bad_inputs_cli import assert_one_line_error, common
from test_train_step_levers import levers_bench

from lit_golf.cli import main


@pytest.mark.parametrize(("argv", "needles"), [
    (["--model.gpt.fp8_training", "on"], ["fp8_training='on' must be one of ('off', 'forward', 'forward_dgrad')"]),
    (["--model.gpt.fp8_training", "forward", "--model.gpt.model_dim", "72"],  # tiny_cpu: 4 heads, 2 KV heads
     ["fp8_training='forward' needs model_dim, kv_dim", "divisible by 16: model_dim=72, kv_dim=36"]),
])
def test_fit_refuses_an_fp8_switch_it_cannot_run(argv, needles, tiny_data, tmp_path, capsys):
    rc = main(["fit", *common(tiny_data, tmp_path), *argv])
    assert_one_line_error(rc, capsys.readouterr().err, "fit", needles)


def bench_error(monkeypatch, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        levers_bench(monkeypatch).main(["--smoke", *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("train_step_levers.py: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(("argv", "needle"), [
    (["--levers", "bf16", "fa4+fp9"], "--levers: unknown ['fp9']; known: ['bf16', 'fp8_forward'"),
    (["--steps", "0"], "--warmup 5 and --steps 0 must both be >= 1"),
    (["--models", "upstream"], "argument --models: invalid choice: 'upstream'"),
])
def test_levers_bench_refuses_bad_arguments(monkeypatch, tmp_path, capsys, argv, needle):
    assert needle in bench_error(monkeypatch, ["--out", str(tmp_path / "levers.json"), *argv], capsys)
    assert not (tmp_path / "levers.json").exists()


def test_levers_bench_never_overwrites_a_result_nor_writes_under_a_file(monkeypatch, tmp_path, capsys):
    earlier = tmp_path / "levers.json"
    earlier.write_text("{}")
    refusal = bench_error(monkeypatch, ["--out", str(earlier)], capsys)
    assert "exists; results are never overwritten: pass a new path" in refusal
    assert earlier.read_text() == "{}"
    under_a_file = bench_error(monkeypatch, ["--out", str(earlier / "levers.json")], capsys)
    assert "--out" in under_a_file and "cannot write there" in under_a_file
