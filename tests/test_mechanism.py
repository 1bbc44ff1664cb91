"""The closed-form model, hidden attention (analysis/analytic.py, hidden_attention.py), interventions
through model.run / model.trace (model/interventions.py) and the torch-free mechanism charts
(viz/mechanism.py)."""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.analytic import CH_CONST, MEMORY_CHANNELS, evaluate
from analysis.hidden_attention import MAX_LEN, hidden_attention, layer_A, layer_D, mean_abs_attention
from model import MambaConfig, MambaLM, load_checkpoint, run, save_checkpoint, trace
from model.interventions import AblateSSM, ClampDelta, PatchState, ZeroState
from tasks import INDUCTION
from tasks.measures import layer_ratios
from tasks.measures import memory_channels as select_memory_channels

TRAINED = Path("checkpoints/induction-2layer.safetensors")
P = 20                                      # trigger position for the fixed-position batches


@pytest.fixture(scope="module")
def batch():
    return INDUCTION.batch(32, 128, seed=11, trigger_pos=P)


def predict(lm, tokens, ivs=()) -> np.ndarray:
    """argmax at the last position: tokens numpy [B, L] -> [B]."""
    logits = run(lm, torch.from_numpy(np.asarray(tokens)), ivs, num_last_tokens=1).logits
    return logits[:, -1].argmax(-1).numpy()                               # [B]


# ---------------------------------------------------------------------------------------------
# the closed-form model

@pytest.mark.parametrize("log2, n", [(6, 32), (8, 32), (10, 16), (12, 4), (14, 2)])
def test_closed_form_solves_the_task(analytic, log2, n):
    r = evaluate(analytic, 2 ** log2, n, seed=log2)
    assert r["accuracy"] == 1.0, r
    assert r["min_margin"] > 10.0, r          # 11.3 by construction, independent of L


def test_closed_form_checkpoint_round_trip(analytic, tmp_path):
    path = tmp_path / "analytic.safetensors"
    save_checkpoint(analytic, path, task=analytic.task)
    lm = load_checkpoint(path)
    assert lm.task["construction"] == "closed-form"
    tok = torch.from_numpy(INDUCTION.batch(4, 64, seed=1).tokens)
    with torch.no_grad():
        assert torch.equal(lm(tok), analytic(tok))


def test_closed_form_delta_is_selective(analytic):
    """Δ on the memory channels is large only at the memory token; ~1e-13 everywhere else."""
    d = INDUCTION.batch(1, 96, seed=5)
    p = int(d.trigger_pos[0, 0])
    delta = trace(analytic, d.tokens[0]).layers[1].delta[:, list(MEMORY_CHANNELS)]   # [L, 16]
    assert (delta[p + 1] > 10).all()
    others = np.delete(delta, p + 1, axis=0)
    assert others.max() < 1e-12
    assert np.exp(-others.max() * 1.0).astype(np.float32) == np.float32(1.0)   # no decay in fp32


# ---------------------------------------------------------------------------------------------
# hidden attention

def _scan_fp64(u, delta, A, B, C, D):
    """The recurrence of kernels/scan_reference.py in fp64, for one sequence ([L, D] / [L, N])."""
    h = np.zeros(A.shape)
    ys = []
    for t in range(u.shape[0]):
        h = np.exp(delta[t][:, None] * A) * h + (delta[t] * u[t])[:, None] * B[t][None, :]
        ys.append(h @ C[t] + D * u[t])
    return np.stack(ys)


@pytest.mark.parametrize("which", ["random", "analytic"])
@pytest.mark.parametrize("layer", [0, 1])
def test_hidden_attention_reproduces_the_scan(which, layer, analytic, one_thread):
    torch.manual_seed(0)
    lm = analytic if which == "analytic" else MambaLM(MambaConfig()).eval()
    tokens = INDUCTION.batch(1, 97, seed=3).tokens[0]
    lt = trace(lm, tokens).layers[layer]
    A, Dv = layer_A(lm, layer).astype(np.float64), layer_D(lm, layer).astype(np.float64)
    u, delta, B, C = (x.astype(np.float64) for x in (lt.ssm_input, lt.delta, lt.B, lt.C))
    alpha = hidden_attention(delta, A, B, C)                             # [D, L, L]
    assert alpha.shape == (lm.config.d_inner, 97, 97)
    assert np.all(np.triu(alpha, 1) == 0)
    y_attn = np.einsum("dij,jd->id", alpha, u) + Dv * u                   # [L, D]
    y_ref = _scan_fp64(u, delta, A, B, C, Dv)
    rel = np.abs(y_attn - y_ref).max() / np.abs(y_ref).max()
    assert rel < 1e-6, rel
    # and the model's own fp32 scan output, before the gate
    assert np.abs(y_attn - lt.ssm_output).max() / np.abs(lt.ssm_output).max() < 1e-4


def test_hidden_attention_channel_subsets_and_mean(one_thread):
    torch.manual_seed(1)
    lm = MambaLM(MambaConfig()).eval()
    lt = trace(lm, INDUCTION.batch(1, 40, seed=2).tokens[0]).layers[0]
    args = (lt.delta, layer_A(lm, 0), lt.B, lt.C)
    full = hidden_attention(*args)
    sub = hidden_attention(*args, channels=[5, 77], max_bytes=1)        # one channel per block
    np.testing.assert_allclose(sub, full[[5, 77]], rtol=0, atol=0)
    np.testing.assert_allclose(mean_abs_attention(*args, max_bytes=40 * 40 * 8 * 3 * 7),
                               np.abs(full).mean(0), rtol=1e-12, atol=0)


def test_hidden_attention_refuses_long_sequences():
    L = MAX_LEN + 1
    with pytest.raises(ValueError, match=f"L={L} is over the limit of {MAX_LEN}"):
        hidden_attention(np.zeros((L, 2)), -np.ones((2, 3)), np.zeros((L, 3)), np.zeros((L, 3)))
    with pytest.raises(ValueError, match="channel 9 is out of range"):
        hidden_attention(np.zeros((4, 2)), -np.ones((2, 3)), np.zeros((4, 3)), np.zeros((4, 3)), channels=[9])


# ---------------------------------------------------------------------------------------------
# interventions

def test_no_intervention_is_bit_identical(one_thread):
    torch.manual_seed(2)
    lm = MambaLM(MambaConfig()).eval()
    tok = INDUCTION.batch(1, 150, seed=4).tokens[0]
    a, b = trace(lm, tok), trace(lm, tok, interventions=[])
    assert np.array_equal(a.logits, b.logits)
    for la, lb in zip(a.layers, b.layers):
        for f in ("delta", "ssm_output", "state_norm", "resid_post"):
            assert np.array_equal(getattr(la, f), getattr(lb, f))
    # an intervention window outside the sequence changes nothing either
    c = trace(lm, tok, interventions=[ClampDelta(0, [1, 2], from_t=500)])
    assert np.array_equal(a.logits, c.logits)
    for la, lc in zip(a.layers, c.layers):
        assert np.array_equal(la.delta, lc.delta)


def test_interventions_across_stream_chunks(analytic):
    """State edits and clamps land on absolute times even when the run is cut into chunks."""
    d = INDUCTION.batch(4, 300, seed=9, trigger_pos=150)
    tokens = torch.from_numpy(d.tokens)
    ivs = [ClampDelta(1, list(MEMORY_CHANNELS), from_t=151, to_t=152)]
    full = run(analytic, tokens, ivs, num_last_tokens=1).logits
    chunked = run(analytic, tokens, ivs, num_last_tokens=1, chunk_len=64).logits
    assert torch.equal(full, chunked)
    assert (full[:, -1].argmax(-1).numpy() != d.target).all()


def test_clamp_delta_at_the_write_breaks_memory_channels_only(analytic, batch):
    assert (predict(analytic, batch.tokens) == batch.target).all()
    mem = list(MEMORY_CHANNELS)
    broken = predict(analytic, batch.tokens, [ClampDelta(1, mem, from_t=P + 1, to_t=P + 2, value=0.0)])
    assert (broken != batch.target).all()
    rng = np.random.default_rng(0)
    for _ in range(3):
        rand = rng.choice(np.arange(CH_CONST + 1, 128), size=len(mem), replace=False).tolist()
        kept = predict(analytic, batch.tokens, [ClampDelta(1, rand, from_t=P + 1, to_t=P + 2, value=0.0)])
        assert (kept == batch.target).all()
    # the same clamp one step later (Δ is ~1e-13 there anyway) changes nothing
    late = predict(analytic, batch.tokens, [ClampDelta(1, mem, from_t=P + 2, value=0.0)])
    assert (late == batch.target).all()


def test_clamp_delta_to_a_value_makes_the_memory_decay(analytic, batch):
    """Δ = 1 (with A = -1) for 40 filler steps multiplies the stored value by e^-40: M is lost."""
    tr = trace(analytic, batch.tokens[0],
               interventions=[ClampDelta(1, list(MEMORY_CHANNELS), from_t=P + 2, to_t=P + 42, value=1.0)])
    assert np.all(tr.layers[1].delta[P + 2:P + 42, :16] == 1.0)
    assert np.all(tr.layers[1].delta[P + 42:, :16] < 1e-12)
    m = int(batch.target[0])     # (filler tokens also enter while Δ = 1, so the state is not 0)
    assert tr.layers[1].state_norm[P + 42, m] < 1e-4 * tr.layers[1].state_norm[P + 1, m]
    assert int(tr.logits[-1].argmax()) != int(batch.target[0])
    assert tr.meta["interventions"][0]["kind"] == "ClampDelta"


def test_zero_and_patch_state(analytic, batch):
    mem = list(MEMORY_CHANNELS)
    zeroed = predict(analytic, batch.tokens, [ZeroState(1, mem, t=P + 10)])
    assert (zeroed != batch.target).all()
    assert (predict(analytic, batch.tokens, [ZeroState(1, list(range(40, 56)), t=P + 10)]) == batch.target).all()
    # zeroing before the write has no effect: the write erases the state anyway
    assert (predict(analytic, batch.tokens, [ZeroState(1, mem, t=P)]) == batch.target).all()
    other = INDUCTION.batch(32, 128, seed=12, trigger_pos=P)
    assert (other.target != batch.target).any()
    patched = predict(analytic, batch.tokens, [PatchState(1, mem, t=P + 10, source_tokens=other.tokens)])
    assert (patched == other.target).all()


def test_ablate_ssm(analytic, batch):
    # layer 2 holds and reads the memory; layer 1 supplies the write signal at P+1 only
    assert (predict(analytic, batch.tokens, [AblateSSM(1)]) != batch.target).all()
    assert (predict(analytic, batch.tokens, [AblateSSM(0)]) != batch.target).all()
    assert (predict(analytic, batch.tokens, [AblateSSM(0, from_t=P + 2)]) == batch.target).all()
    assert (predict(analytic, batch.tokens, [AblateSSM(0, from_t=P + 1, to_t=P + 2)]) != batch.target).all()


def test_interventions_validate(analytic, batch):
    for iv, msg in [(ClampDelta(5, [0]), "layer 5 is out of range"),
                    (ClampDelta(0, [128]), "channel 128 is out of range"),
                    (ZeroState(0, [1], t=999), "t=999 is out of range"),
                    (PatchState(0, [1], t=50, source_tokens=np.zeros(10, dtype=np.int64)), "fewer than t=50")]:
        with pytest.raises(ValueError, match=msg):
            run(analytic, torch.from_numpy(batch.tokens), [iv])


@pytest.mark.skipif(not TRAINED.exists(), reason=f"{TRAINED} not trained yet")
def test_trained_checkpoint_clamp_at_the_write(one_thread):
    """On the trained model: the channels whose Δ spikes while M is in the conv window (P+1 .. P+4)
    and stays tiny over the filler carry M -- clamping their Δ to 0 there breaks recall -- while as
    many random channels of the same layer do not matter. (Δ ratio and memory channels: tasks/measures.py.)"""
    lm = load_checkpoint(TRAINED)
    d = INDUCTION.batch(64, 256, seed=21, trigger_pos=P)
    W0, W1 = P + 1, P + 1 + lm.config.d_conv
    recs = run(lm, torch.from_numpy(d.tokens[:16]), include=("delta",), num_last_tokens=1).records
    ratios = layer_ratios([r["delta"].double().numpy() for r in recs], INDUCTION.positions(d.tokens[0]),
                          lm.config.d_conv)                                 # over the 16 sequences
    layer = int(np.argmax([r.ratio.max() for r in ratios]))
    mem = select_memory_channels(ratios[layer].ratio, k=48, min_ratio=100)
    assert len(mem) >= 1
    base = (predict(lm, d.tokens) == d.target).mean()
    assert base > 0.9
    broken = (predict(lm, d.tokens, [ClampDelta(layer, mem, from_t=W0, to_t=W1)]) == d.target).mean()
    others = [c for c in range(lm.config.d_inner) if c not in mem]
    rng = np.random.default_rng(1)
    draws = [rng.choice(others, min(len(mem), len(others)), replace=False).tolist() for _ in range(3)]
    rand = [(predict(lm, d.tokens, [ClampDelta(layer, ch, from_t=W0, to_t=W1)]) == d.target).mean()
            for ch in draws]
    assert broken < 0.5 * base, (layer, mem, base, broken)
    assert min(rand) > base - 0.1, (layer, mem, base, rand)


# ---------------------------------------------------------------------------------------------
# charts

def _data(chart) -> list:
    """The rows a chart draws (Altair puts a DataFrame's rows in the spec's datasets)."""
    spec = chart.to_dict()
    (rows,) = spec["datasets"].values()
    return rows


def _encoding(chart) -> dict:
    spec = chart.to_dict()
    return (spec.get("spec") or spec)["encoding"]


def test_mechanism_charts_are_torch_free_and_render():
    src = Path("viz/mechanism.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+(torch|gradio|model|analysis)\b", src, re.M)
    from viz.mechanism import (hidden_attention_chart, horizon_chart, intervention_chart, probe_accuracy_chart,
                               state_evolution_chart)
    rng = np.random.default_rng(0)
    acc = rng.random((3, 128))
    rows = _data(probe_accuracy_chart(acc, [0, 8, 64], 1))
    assert len(rows) == 3 * 128
    assert {(r["distance"], r["channel"]): r["accuracy"] for r in rows}[(8, 5)] == acc[1, 5]
    assert _encoding(probe_accuracy_chart(acc, [0, 8, 64], 1))["color"]["field"] == "accuracy"
    rows = _data(state_evolution_chart({"a": {"distance": [16, 64], "rho": [1.0, 0.5], "acc": [1.0, math.nan]},
                                        "b": {"distance": [16], "rho": [0.1], "acc": [0.0]}}))
    # NaN = not measured: left out, every other point drawn once
    assert sorted((r["checkpoint"], r["quantity"], r["distance"], r["value"]) for r in rows) == [
        ("a", "acc", 16, 1.0), ("a", "rho", 16, 1.0), ("a", "rho", 64, 0.5), ("b", "acc", 16, 0.0), ("b", "rho", 16, 0.1)]
    rows = _data(hidden_attention_chart(np.tril(rng.random((12, 12))), tokens=list(range(12))))
    assert {r["token_j"] for r in rows} == set(range(12))
    h = horizon_chart(["a", "b"], [1e3, 1e13], [900.0, 2.0 ** 20], [False, True]).to_dict()
    points = [r for rows in h["datasets"].values() for r in rows if "checkpoint" in r]   # not the diagonal
    assert [(r["checkpoint"], r["predicted"], r["measured is a lower bound"]) for r in points] == [
        ("a", 1e3, False), ("b", 1e13, True)]
    rows = _data(intervention_chart(["a", "a"], ["none", "clamp"], [1.0, 0.0]))
    assert [(r["intervention"], r["accuracy"]) for r in rows] == [("none", 1.0), ("clamp", 0.0)]
    # the heatmap holds the lower triangle only
    assert len(hidden_attention_chart(np.ones((12, 12))).data) == 12 * 13 // 2


@pytest.mark.parametrize("highlight", [[(1, 3), (1, 5)], [(np.int64(1), np.int64(3)), (np.int32(1), 5)],
                                       np.array([[1, 3], [1, 5]]), [[1.0, 3.0], [1, 5]]])
def test_delta_ratio_chart_highlights_memory_channels(highlight):
    """Issue #14: every channel was drawn as not-memory. Any int-like pairs mark exactly their points."""
    from viz.mechanism import DELTA_RATIO_TITLE, MEMORY, OTHER, delta_ratio_chart
    ratio = np.arange(2 * 8, dtype=float).reshape(2, 8) + 1
    chart = delta_ratio_chart(ratio, "x", highlight)
    rows = _data(chart)
    assert len(rows) == 16
    marked = sorted((r["layer"], r["channel"]) for r in rows if r["kind"] == MEMORY)
    assert marked == [(2, 3), (2, 5)]                                   # layers shown 1-based
    assert all(r["kind"] == OTHER for r in rows if (r["layer"], r["channel"]) not in marked)
    assert {(r["layer"], r["channel"]): r["ratio"] for r in rows}[(2, 3)] == ratio[1, 3]
    spec = chart.to_dict()
    assert spec["spec"]["encoding"]["color"]["field"] == "kind"
    assert spec["spec"]["encoding"]["color"]["scale"]["range"][1] == "#d62728"       # memory: red
    assert spec["title"]["subtitle"] == DELTA_RATIO_TITLE == ("max Δ over the write window / median Δ over the "
                                                              "filler after it")


def test_delta_ratio_chart_without_highlight_and_bad_pairs():
    from viz.mechanism import OTHER, delta_ratio_chart
    chart = delta_ratio_chart(np.ones((2, 4)))
    assert {r["kind"] for r in _data(chart)} == {OTHER}
    assert chart.to_dict()["spec"]["encoding"]["color"] == {"value": "#9aa5b1"}     # no memory legend
    with pytest.raises(ValueError, match="layer 2, channel 0"):
        delta_ratio_chart(np.ones((2, 4)), highlight=[(2, 0)])
    with pytest.raises(ValueError, match="whole"):
        delta_ratio_chart(np.ones((2, 4)), highlight=[(1, 0.5)])
