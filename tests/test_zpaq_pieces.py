"""bench/zpaq_pieces.py: whole vs cut ZPAQ sections of an artifact, both bit-exact, every piece timed."""

from __future__ import annotations

import importlib.util
import json

import pytest
from script_output import error_line, load_bench_script, run_main
from test_export_schemes import one_of_each_scheme

from lit_golf.export.serialize import pack, write_artifact

pytestmark = pytest.mark.skipif(importlib.util.find_spec("zpaq") is None, reason="needs `pip install zpaq`")
bench = load_bench_script("zpaq_pieces")


def test_pieces_report_bytes_counts_and_times_from_the_artifact(tmp_path, capsys):
    artifact = write_artifact(tmp_path / "artifact.ptz", pack({}, one_of_each_scheme(), "brotli", 11, 1, ())[0])
    out = tmp_path / "zpaq_pieces.json"
    rc, printed, _ = run_main(bench.main, [artifact, "--chunk-bytes", 20_000, "--zpaq-level", 1, "--reorder-roles",
                                           "--out", out, "--write-pieces", tmp_path / "pieces.ptz"], capsys)
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["whole_is_the_artifact"] and report["whole"]["bytes"] == report["artifact_bytes"]
    assert (tmp_path / "pieces.ptz").stat().st_size == report["pieces"]["bytes"]
    assert report["whole"]["pieces"] == 1 and report["pieces"]["pieces"] == 4  # attn.q: 65,536 B in 4
    assert report["extra_bytes"] == report["pieces"]["bytes"] - report["whole"]["bytes"] > 0
    assert len(report["pieces"]["piece_s"]["attn.q"]) == 4
    assert report["pieces"]["longest_piece_s"] == max(report["pieces"]["piece_s"]["attn.q"])
    assert "pieces: " in printed and report["commit"]


def test_a_file_that_is_no_artifact_is_one_line(tmp_path, capsys):
    bad = tmp_path / "artifact.ptz"
    bad.write_bytes(b"not an artifact")
    rc, _, err = run_main(bench.main, [bad, "--out", tmp_path / "x.json"], capsys)
    assert rc == 1 and str(bad) in error_line(err, "zpaq_pieces.py")
    assert not (tmp_path / "x.json").exists()
