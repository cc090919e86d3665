"""The data layer sits below evaluation: no `lit_golf.data` module imports `lit_golf.eval`."""

from __future__ import annotations

from test_cli_dispatch import import_graph


def test_data_modules_import_nothing_from_eval():
    upward = {name: sorted(t for t in targets if t.startswith("lit_golf.eval"))
              for name, targets in import_graph().items() if name.startswith("lit_golf.data")}
    assert "lit_golf.data.documents" in upward  # the graph sees the data package
    assert {name: found for name, found in upward.items() if found} == {}
