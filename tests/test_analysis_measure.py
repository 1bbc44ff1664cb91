"""The mechanism study end to end on the closed-form model at tiny settings (python -m analysis.mechanism),
its CLI, and the Mechanism tab's analysis side (analysis/compare.py) on the same model."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis import cache, compare
from analysis.analytic import MEMORY_CHANNELS, MEMORY_LAYER
from analysis.mechanism import Settings, main, parser
from analysis.runs import states_at
from model import run
from tasks import INDUCTION

ANALYTIC = Path("checkpoints/analytic-2layer.safetensors")
TINY = ["--length", "64", "--trigger-pos", "8", "--distances", "0,4,40", "--probe-train", "48", "--probe-test", "32",
        "--delta-seqs", "8", "--attn-seqs", "2", "--interv-seqs", "8", "--freeze-log2", "7", "--freeze-seqs", "4",
        "--long-seqs", "2", "--long-max-log2", "8"]


def test_every_flag_has_help():
    ap = parser()
    flags = [a for a in ap._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in flags} >= {f for f in Settings.__dataclass_fields__}
    for a in flags:
        assert a.help and a.help.strip(), a.dest
    assert "P: S at P, M at P+1" in ap.format_help()


def test_settings_are_checked_at_the_boundary():
    with pytest.raises(ValueError, match=r"probe distances must be in 0..221 \(P\+1\+τ <= L-2 for P = 32, L = 256\)"):
        Settings(distances=(0, 300))
    with pytest.raises(ValueError, match="trigger_pos 300 is out of range 0..253"):
        Settings(trigger_pos=300)
    with pytest.raises(SystemExit, match="--distances must be comma-separated whole numbers, got 'a,1'"):
        main(["--distances", "a,1"])


def test_the_study_takes_the_induction_models_and_names_the_rest(tmp_path, capsys):
    """`make mechanism` reads every file in checkpoints/: the memory-task models there have their own
    study (analysis.memory_report) and are skipped with a line saying so, not a traceback."""
    from analysis.mechanism import checkpoint_paths
    shutil.copy(ANALYTIC, tmp_path / ANALYTIC.name)
    shutil.copy("checkpoints/selective-copy-2layer.safetensors", tmp_path / "sc.safetensors")
    cfg = Settings(checkpoints=str(tmp_path))
    assert checkpoint_paths(cfg) == [tmp_path / ANALYTIC.name]
    assert "sc: skipped, a selective_copying model (its study: python -m analysis.memory_report)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="is a selective_copying model"):
        checkpoint_paths(cfg, only=["sc"])


def test_mechanism_end_to_end_on_the_closed_form(tmp_path, one_thread, capsys):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    shutil.copy(ANALYTIC, ckpts / ANALYTIC.name)
    out, figs = tmp_path / "doc.md", tmp_path / "doc"
    argv = TINY + ["--checkpoints", str(ckpts), "--out", str(out), "--fig-dir", str(figs)]
    main(argv)
    cfg = Settings(**{**Settings().__dict__, "checkpoints": str(ckpts), "out": str(out), "fig_dir": str(figs),
                      "length": 64, "trigger_pos": 8, "distances": (0, 4, 40), "probe_train": 48, "probe_test": 32,
                      "delta_seqs": 8, "attn_seqs": 2, "interv_seqs": 8, "freeze_log2": 7, "freeze_seqs": 4,
                      "long_seqs": 2, "long_max_log2": 8})
    r = cache.load(figs / "results-analytic-2layer.json", ckpts / ANALYTIC.name, cfg)
    assert r is not None                                         # stored under exactly these settings
    # what the construction promises (analysis/analytic.py's docstring)
    assert r.memory_layer == MEMORY_LAYER
    assert r.memory_channels == list(MEMORY_CHANNELS)
    assert r.delta.accuracy == 1.0
    assert np.all(r.on_memory(r.delta.ratio) > 1e13) and np.all(r.delta.ratio[0] == 1.0)
    assert np.all(r.on_memory(r.delta.write_offset) == 1)      # writes at M itself, P+1
    iv = r.interventions
    assert (iv.none, iv.clamp_memory, iv.zero_state, iv.patch_source) == (1.0, 0.0, 0.0, 1.0)
    assert iv.clamp_random == [1.0, 1.0, 1.0] and iv.ablate == [0.0, 0.0]
    assert (iv.ablate_first_at_write, iv.ablate_first_after_write) == (0.0, 1.0)
    assert r.long.distances == [16, 64, 256] and r.long.accuracy == [1.0, 1.0, 1.0]
    assert r.long.rho == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    assert r.freeze_horizon is None and (r.freeze.baseline, r.freeze.frozen) == (1.0, 1.0)
    assert r.decay.horizon > 1e12                               # 1/(Δ_filler |A|) ~ 1e13
    assert r.attention.contribution_share > 0.99
    assert r.probes.layers[1].acc[16] == 1.0                     # all 16 channels decode M
    text = out.read_text()
    assert "- Memory in layer 2, as conjectured: analytic-2layer; in layer 1: none." in text
    assert (figs / "figures.json").exists()
    # a second run reuses the stored measurement
    capsys.readouterr()
    main(argv + ["--reuse"])
    assert "analytic-2layer: reusing" in capsys.readouterr().out


def test_states_at_matches_a_run_cut_there(analytic):
    tokens = torch.from_numpy(INDUCTION.batch(3, 40, seed=2, trigger_pos=5).tokens)
    st = states_at(analytic, tokens, [6, 30])
    assert st[6].shape == (2, 3, analytic.config.d_inner, analytic.config.d_state) and st[6].dtype == torch.float64
    ref = run(analytic, tokens[:, :31], num_last_tokens=1).final_states
    for li in range(2):
        torch.testing.assert_close(st[30][li], ref[li].ssm.double())
    assert st[6][1].abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# the Mechanism tab's side

def test_compare_on_the_closed_form(analytic):
    tokens = INDUCTION.batch(1, 96, seed=5, trigger_pos=30).tokens[0]
    pred, ratio = compare.query_summary(analytic, tokens)
    m = int(tokens[31])
    assert (pred.memory, pred.top) == (m, m) and pred.p_memory == pred.p_top > 0.99
    assert pred.p_memory_t.shape == (96,)
    assert ratio.shape == (2, analytic.config.d_inner)
    assert np.all(ratio[1, :16] > 1e13) and np.all(ratio[1, 16:] < 10)
    assert compare.memory_channels(analytic, tokens, 1) == list(range(16))
    assert compare.memory_channel_pairs(ratio) == [(1, c) for c in range(16)]
    iv = compare.make_intervention("clamp Δ", 1, list(range(16)), 31, None, 0.0, 96)
    before, after = compare.run_intervention(analytic, tokens, iv)
    assert before.top == m and after.top == 16                   # M -> S, as the README says
    iv = compare.make_intervention("clamp Δ", 1, list(range(40, 56)), 31, None, 0.0, 96)
    assert compare.run_intervention(analytic, tokens, iv)[1].top == m
    # no write: no memory token, no ratio
    no_s = np.array([1, 2, 3, 4, 16])
    pred, ratio = compare.query_summary(analytic, no_s)
    assert pred.memory is None and ratio is None
    with pytest.raises(ValueError, match="needs a trigger S followed by a memory token"):
        compare.memory_channels(analytic, no_s, 1)


def test_compare_attention_map_and_its_limits(analytic):
    tokens = INDUCTION.batch(1, 48, seed=1, trigger_pos=10).tokens[0]
    one = compare.attention_map(analytic, tokens, 1, 3)
    assert one.shape == (48, 48) and np.all(np.triu(one, 1) == 0)
    assert compare.attention_map(analytic, tokens, 1, None).shape == (48, 48)
    with pytest.raises(ValueError, match="layer 3 is out of range 1..2"):
        compare.attention_map(analytic, tokens, 2, 0)
    assert compare.mean_max_len(128) == 2048 and compare.mean_max_len(1536) == 591   # work ~ units * L^2
    with pytest.raises(ValueError, match="needs a sequence of at most 2048 tokens"):
        compare.attention_map(analytic, np.zeros(2049, dtype=np.int64), 0, None)


def test_channel_mean_is_capped_by_its_work(analytic, monkeypatch):
    monkeypatch.setattr(compare, "MEAN_MAX_WORK", 128 * 40 ** 2)             # 40 tokens at 128 channels
    tokens = INDUCTION.batch(1, 41, seed=1, trigger_pos=10).tokens[0]
    assert compare.attention_map(analytic, tokens[:40], 0, None).shape == (40, 40)
    with pytest.raises(ValueError, match="the mean over channels is limited to 40 tokens"):
        compare.attention_map(analytic, tokens, 0, None)
    assert compare.attention_map(analytic, tokens, 0, 5).shape == (41, 41)   # one channel is not capped there
