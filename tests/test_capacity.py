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
    assert "| d_state N | state per layer | D=1 | D=3 | pairs recalled (most) | training (min) |" in md and "Largest D recalled" in md and "V = 64" in md
    assert "Not learned: d_state 2, 4 recall under 90% even at D = 1" in md        # 2 steps learn nothing
    saved = json.loads((out / "results.json").read_text())["settings"]
    assert saved["vocab"] == 64 and saved["length"] == 10
    # a second process with another size adds its rows; --score-only re-scores a trained size
    capacity.main(["--d-states", "3", "--pairs", "1,3", "--length", "10", "--d-model", "8", "--steps", "2",
                   "--samples", "3", "--runs", str(tmp_path / "runs"), "--out", str(out)])
    capacity.main(["--d-states", "2", "--pairs", "1,3", "--length", "10", "--d-model", "8", "--steps", "2",
                   "--samples", "3", "--runs", str(tmp_path / "runs"), "--out", str(out), "--score-only"])
    again = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["d_state"], r["pairs"]) for r in again] == [(2, 1), (2, 3), (3, 1), (3, 3), (4, 1), (4, 3)]
    assert [r["accuracy"] for r in again if r["d_state"] == 2] == [r["accuracy"] for r in rows if r["d_state"] == 2]
    with pytest.raises(SystemExit, match="no trained model"):
        capacity.main(["--d-states", "5", "--pairs", "1", "--length", "10", "--runs", str(tmp_path / "runs"),
                       "--out", str(out), "--score-only"])
    with pytest.raises(SystemExit, match="does not fit"):
        capacity.main(["--pairs", "50", "--length", "64"])
    with pytest.raises(SystemExit, match="needs that many distinct keys; --vocab 16 has 7"):
        capacity.main(["--pairs", "8", "--length", "64", "--vocab", "16"])
    with pytest.raises(SystemExit, match="--vocab: an MQAR vocabulary must be an even"):
        capacity.main(["--vocab", "63"])
    with pytest.raises(SystemExit, match="comma-separated whole numbers"):
        capacity.main(["--d-states", "four"])


def test_the_pair_mixture_grows_one_d_at_a_time_over_the_first_half():
    assert capacity.growing_mixture([16, 2, 8, 4], 1200) == {
        "0": {"n_pairs": [2, 4]}, "300": {"n_pairs": [2, 4, 8]}, "600": {"n_pairs": [2, 4, 8, 16]}}
    assert capacity.growing_mixture([3], 10) == {"0": {"n_pairs": [3]}}


def test_warm_sweep_starts_every_size_from_one_trained_model(tmp_path):
    """--warm-from: each N starts from the file with its state resized, trains --steps more on the whole
    mixture, takes the file's vocab, width and length, and says so in the report; a file that is not a
    Mamba-1 MQAR model is refused."""
    import torch
    from model import MambaConfig, MambaLM, load_checkpoint, save_checkpoint
    torch.manual_seed(0)
    src = tmp_path / "mqar.safetensors"
    save_checkpoint(MambaLM(MambaConfig(d_model=8, n_layer=2, vocab_size=16, ssm_cfg={"d_state": 3})), src,
                    task={"name": "mqar", "vocab": 16, "train_len": 12, "steps": 5})
    out = tmp_path / "docs" / "capacity-warm"
    capacity.main(["--warm-from", str(src), "--d-states", "2,5", "--pairs", "1,3", "--steps", "2", "--samples", "3",
                   "--runs", str(tmp_path / "runs"), "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert (saved["settings"]["vocab"], saved["settings"]["d_model"], saved["settings"]["length"]) == (16, 8, 12)
    assert saved["settings"]["warm_from"]["d_state"] == 3 and saved["settings"]["warm_from"]["steps"] == 5
    assert [(r["d_state"], r["pairs"]) for r in saved["rows"]] == [(2, 1), (2, 3), (5, 1), (5, 3)]
    for N in (2, 5):
        start = load_checkpoint(tmp_path / "runs" / f"N{N}" / "start.safetensors")
        trained = load_checkpoint(tmp_path / "runs" / f"N{N}" / "model.safetensors")
        assert start.config.d_state == trained.config.d_state == N
        assert trained.task["steps"] == 7 and trained.task["init_from"][0]["step"] == 5
    md = (tmp_path / "docs" / "capacity-warm.md").read_text()
    assert "Every model starts from" in md and "](capacity-warm/capacity.png)" in md
    read = [r["added_dims_read"] for r in saved["rows"] if r["d_state"] == 5]
    assert "added_dims_read" not in saved["rows"][0] and len(set(read)) == 1 and 0 < read[0] < 1
    assert f"N=5: {read[0]:.2f}" in md                                  # 2 steps of lr 1e-3 from C = 0
    with pytest.raises(SystemExit, match="differs from --warm-from's 8"):
        capacity.main(["--warm-from", str(src), "--d-model", "16", "--out", str(out)])
    other = tmp_path / "induction.safetensors"
    save_checkpoint(MambaLM(MambaConfig(d_model=8, n_layer=1)), other, task={"name": "induction_heads"})
    with pytest.raises(SystemExit, match="needs a Mamba-1 MQAR model"):
        capacity.main(["--warm-from", str(other), "--out", str(out)])
