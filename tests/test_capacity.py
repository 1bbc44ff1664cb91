"""The capacity sweep's command end to end at a toy size (the real sweep is `make capacity`)."""
import json

import pytest

from training import capacity


def test_capacity_sweep_writes_results_table_and_figure_data(tmp_path, capsys):
    out = tmp_path / "docs" / "capacity"
    capacity.main(["--d-states", "2,4", "--pairs", "1,3", "--length", "10", "--d-model", "8", "--steps", "2",
                   "--samples", "3", "--threads", "1", "--runs", str(tmp_path / "runs"), "--out", str(out)])
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["d_state"], r["pairs"], r["queries"]) for r in rows] == [(2, 1, 3), (2, 3, 9), (4, 1, 3), (4, 3, 9)]
    assert all(0 <= r["accuracy"] <= 1 for r in rows) and rows[0]["state_per_layer"] == 16 * 2
    fig = json.loads((out / "figures.json").read_text())["capacity"]
    assert fig["chart"] == "capacity_chart" and fig["kwargs"]["pairs"] == [1, 3, 1, 3]
    md = (tmp_path / "docs" / "capacity.md").read_text()
    assert "| d_state N | state per layer | D=1 | D=3 |" in md and "Largest D recalled" in md
    with pytest.raises(SystemExit, match="does not fit"):
        capacity.main(["--pairs", "50", "--length", "64"])
    with pytest.raises(SystemExit, match="comma-separated whole numbers"):
        capacity.main(["--d-states", "four"])
