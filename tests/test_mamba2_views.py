"""Mamba-2 through the views: traces (fields, shapes, hook names, round trip), the charts (heads where
Mamba-1 has channels), hidden attention (the SSD mask reproduces the layer), and the Mechanism
tab's analysis (analysis.compare) on a Mamba-2 model beside a Mamba-1 one.

Small random models (2 layers, d_model 64: H = 8 heads of 16 channels) keep each test fast."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from analysis import compare
from analysis.hidden_attention import hidden_attention, layer_A, layer_D, mean_abs_attention
from model import MambaConfig, MambaLM, Trace, run, trace
from model.interventions import ClampDelta
from tasks import INDUCTION
from viz import charts, frames, summary
from viz.frames import TraceView

H, P, N, D = 8, 16, 16, 128                  # heads, headdim, d_state, d_inner
M2 = {"layer": "Mamba2", "d_state": N, "headdim": P, "chunk_size": 32}


def mamba2(seed=0, **ssm):
    """A random Mamba-2 LM, its parameters moved off their init (D = 1, norm weights = 1) so a
    mixed-up parameter cannot hide behind a constant."""
    torch.manual_seed(seed)
    lm = MambaLM(MambaConfig(ssm_cfg={**M2, **ssm}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return lm.eval()


@pytest.fixture(scope="module")
def lm():
    return mamba2(ngroups=2, dt_limit=[0.0, 0.08])    # G = 2 groups; a Δ limit that some steps reach


@pytest.fixture(scope="module")
def paper():
    """The paper's setup at L = 256: S M at a fixed place, filler, S at the end."""
    return INDUCTION.batch(1, 256, seed=3, trigger_pos=60).tokens[0]


# ---------------------------------------------------------------- traces
def test_trace_fields_and_shapes(lm):
    L = 45
    tr = lm.trace(torch.randint(0, 17, (L,), generator=torch.Generator().manual_seed(0)), full_states=True)
    assert tr.units == tr.meta["units"] == "head"
    for lt in tr.layers:
        assert lt.delta.shape == lt.decay.shape == lt.state_norm.shape == (L, H)
        assert lt.B.shape == lt.C.shape == (L, 2, N)
        assert lt.ssm_input.shape == lt.ssm_output.shape == (L, D)
        assert lt.resid_post.shape == (L, 64) and lt.states.shape == (L, H, P, N)
        assert np.abs(lt.state_norm - np.linalg.norm(lt.states, axis=(-2, -1))).max() < 1e-5
    with torch.no_grad():
        assert np.abs(tr.logits - lm(torch.as_tensor(tr.tokens)[None])[0].numpy()).max() < 1e-5


def test_delta_B_C_decay_are_recomputed_independently(lm):
    """Layer 1's Δ (dt_bias, softplus, dt_limit), B, C (conv + SiLU, per group) and decay exp(Δ A)
    from the weights with plain torch ops."""
    L = 40
    tokens = torch.randint(0, 17, (L,), generator=torch.Generator().manual_seed(1))
    lt = lm.trace(tokens).layers[0]
    m = lm.backbone.layers[0].mixer
    with torch.no_grad():
        hid = lm.backbone.layers[0].norm(lm.backbone.embedding(tokens[None]))
        z, xBC, dt = torch.split(m.in_proj(hid), [D, D + 2 * 2 * N, H], dim=-1)
        xBC = F.silu(m.conv1d(xBC.transpose(1, 2))[..., :L]).transpose(1, 2)      # [1, L, D + 2GN]
        x, B, C = torch.split(xBC, [D, 2 * N, 2 * N], dim=-1)
        delta = F.softplus(dt + m.dt_bias).clamp(0.0, 0.08)[0]                      # [L, H]
        A = -torch.exp(m.A_log)                                                      # [H]
    assert (delta == 0.08).any() and (delta < 0.08).any()          # the limit is reached and applied
    assert np.abs(lt.delta - delta.numpy()).max() < 1e-6
    assert np.abs(lt.B - B[0].reshape(L, 2, N).numpy()).max() < 1e-5
    assert np.abs(lt.C - C[0].reshape(L, 2, N).numpy()).max() < 1e-5
    assert np.abs(lt.ssm_input - x[0].numpy()).max() < 1e-5
    np.testing.assert_allclose(lt.decay, torch.exp(delta * A).numpy(), rtol=1e-6)
    assert ((lt.decay > 0) & (lt.decay < 1)).all()


def test_round_trip_and_hook_names(lm, tmp_path):
    tr = lm.trace(torch.randint(0, 17, (30,)), full_states=True)
    path = tmp_path / "m2.safetensors"
    tr.save(path)
    back = Trace.load(path)
    fields = ("ssm_input", "delta", "decay", "B", "C", "state_norm", "ssm_output", "resid_post", "states")
    for a, b in zip(tr.layers, back.layers):
        for f in fields:
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert back.units == "head" and back.meta["config"]["ssm_cfg"]["layer"] == "Mamba2"
    assert np.array_equal(back.probs, tr.probs) and np.array_equal(back.tokens, tr.tokens)
    with safe_open(str(path), framework="numpy") as f:
        keys = set(f.keys())
    hooks = {"hook_ssm_input", "hook_delta", "hook_decay", "hook_B", "hook_C", "hook_state_norm",
             "hook_ssm_output", "hook_resid_post", "hook_h"}
    assert keys == {f"blocks.{i}.{h}" for i in range(2) for h in hooks} | {"tokens", "hook_logits", "hook_probs", "hook_top_k_ids",
                                                                            "hook_top_k_probs", "hook_p_next", "hook_logp_next"}


def test_include_and_the_states_cap(lm):
    tokens = torch.randint(0, 17, (60,))
    full = lm.trace(tokens)
    part = lm.trace(tokens, include=("decay", "state_norm"), chunk_len=16)
    for a, b in zip(full.layers, part.layers):
        assert np.abs(a.decay - b.decay).max() < 1e-6 and np.abs(a.state_norm - b.state_norm).max() < 1e-5
        assert b.delta is None and b.B is None and b.states is None
    with pytest.raises(ValueError, match="max_state_elems"):      # L * H * P * N * n_layer floats
        lm.trace(tokens, full_states=True, max_state_elems=60 * D * N * 2 - 1)


def test_mamba1_traces_have_no_decay():
    torch.manual_seed(0)
    m1 = MambaLM(MambaConfig()).eval()
    assert m1.trace([1, 2, 3]).layers[0].decay is None
    with pytest.raises(ValueError, match=r"Mamba1 layers cannot record \['decay'\]"):
        m1.trace([1, 2, 3], include=("decay",))


# ---------------------------------------------------------------- views
def test_frames_and_dashboard_label_heads(lm, paper):
    view = TraceView.from_trace(lm.trace(paper, include=("delta", "state_norm")), INDUCTION, label="m2")
    assert (view.unit, view.n_units) == ("head", H)
    bins = frames.time_bins(0, 256, 64)
    f = frames.heatmap_frame(view.delta[0], bins)
    assert len(f) == 64 * H and f.channel.max() == H - 1
    assert len(frames.ratio_frame(view.ratios[1])) == H
    spec = charts.dashboard(view, sort="ratio", max_bins=64).to_dict()        # to_dict validates
    text = json.dumps(spec, ensure_ascii=False)
    assert "Layer 1: Δ (step size, after softplus) per head" in text and "‖h_t[head]‖" in text
    assert "over all heads" in text and "over all channels" not in text and "‖h_t[d,:]‖" not in text
    heat = [u for u in _units(spec) if u.get("mark", {}) == {"type": "image", "aspect": False, "smooth": False}]
    assert len(heat) == 4
    for u in heat:
        assert u["encoding"]["y"]["title"] == "head (by Δ ratio)" and u["encoding"]["y"]["scale"]["domain"] == [0, H]
    readouts = [u["mark"]["text"]["expr"] for u in _units(spec) if u["mark"].get("type") == "text"]
    assert readouts and all("'head '" in e and "'channel '" not in e for e in readouts)
    bars = [u for u in _units(spec) if u.get("encoding", {}).get("y", {}).get("field") == "channel"]
    assert len(bars) == 2 and bars[0]["height"] == charts.unit_px(H) * H == 128
    assert bars[0]["encoding"]["tooltip"][0]["title"] == "head"
    assert "per **head** (8 heads per layer)" in summary.describe(view)
    with pytest.raises(ValueError, match="unknown unit 'neuron'"):
        TraceView(tokens=view.tokens, probs=view.probs, delta=view.delta, state_norm=view.state_norm,
                  task=INDUCTION, unit="neuron")


def _units(spec):
    if "mark" in spec:
        yield spec
    for key in ("vconcat", "hconcat", "layer"):
        for sub in spec.get(key, []):
            yield from _units(sub)


# ---------------------------------------------------------------- hidden attention
@pytest.mark.parametrize("ngroups", [1, 2])
def test_ssd_mask_reproduces_the_layer(ngroups):
    """y_t[h, p] = Σ_s α̃_h[t, s] x_s[h, p] + D_h x_t[h, p] with α̃_h[t, s] = C_t·B_s exp(A_h Σ_{s<r<=t} Δ_r) Δ_s:
    the model's own scan output (before the gate), to 1e-5."""
    lm = mamba2(seed=ngroups, ngroups=ngroups)
    L = 90
    tokens = torch.randint(0, 17, (1, L), generator=torch.Generator().manual_seed(ngroups))
    res = run(lm, tokens, include=("delta", "B", "C", "ssm_input", "ssm_output"), backend="reference")
    for i, rec in enumerate(res.records):
        r = {k: v[0].numpy() for k, v in rec.items()}
        alpha = hidden_attention(r["delta"], layer_A(lm, i), r["B"], r["C"])         # [H, L, L]
        assert alpha.shape == (H, L, L) and np.all(np.triu(alpha, 1) == 0)
        x = r["ssm_input"].reshape(L, H, P).astype(np.float64)
        y = np.einsum("hts,shp->thp", alpha, x) + layer_D(lm, i)[None, :, None] * x
        assert np.abs(y.reshape(L, D) - r["ssm_output"]).max() < 1e-5
        # the diagonal: C_t·B_t Δ_t of the head's group (head h reads group h // (H / G))
        h = H - 1
        g = h // (H // ngroups)
        diag = (r["C"][:, g] * r["B"][:, g]).sum(-1) * r["delta"][:, h]
        np.testing.assert_allclose(np.diag(alpha[h]), diag, rtol=1e-5, atol=1e-7)


def test_ssd_mask_subsets_mean_and_errors(lm):
    lt = lm.trace(torch.randint(0, 17, (40,))).layers[1]
    args = (lt.delta, layer_A(lm, 1), lt.B, lt.C)
    assert layer_A(lm, 1).shape == (H,)
    full = hidden_attention(*args)
    np.testing.assert_array_equal(hidden_attention(*args, channels=[6, 1], max_bytes=1), full[[6, 1]])
    np.testing.assert_allclose(mean_abs_attention(*args, channels=[0, 5]), np.abs(full[[0, 5]]).mean(0), rtol=1e-12)
    with pytest.raises(ValueError, match="head 8 is out of range 0..7"):
        hidden_attention(*args, channels=[8])
    with pytest.raises(ValueError, match=r"Mamba-2 layers need delta \[L, H\], A \[H\], B and C \[L, G, N\]"):
        hidden_attention(lt.delta, layer_A(lm, 1), lt.B[:, :1].repeat(3, 1), lt.C[:, :1].repeat(3, 1))


# ---------------------------------------------------------------- the Mechanism tab's analysis
def test_compare_mamba1_beside_mamba2(lm, paper):
    torch.manual_seed(0)
    m1 = MambaLM(MambaConfig()).eval()
    (p1, r1), (p2, r2) = compare.query_summary(m1, paper), compare.query_summary(lm, paper)
    assert r1.shape == (2, D) and r2.shape == (2, H)
    assert p1.memory == p2.memory == int(paper[61]) and 0 < p2.p_memory < 1
    assert (compare.unit_name(m1), compare.n_units(m1), compare.n_memory_units(m1)) == ("channel", D, 16)
    assert (compare.unit_name(lm), compare.n_units(lm), compare.n_memory_units(lm)) == ("head", H, 1)
    heads = compare.memory_channels(lm, paper, 1)
    assert heads == [int(np.argmax(r2[1]))]                          # the top Δ-ratio head of layer 2
    assert compare.memory_channel_pairs(r2, min_ratio=0.0, k=1) == [(0, int(np.argmax(r2[0]))), (1, heads[0])]
    with pytest.raises(ValueError, match="head 9 is out of range 0..7"):
        compare.parse_channels("1, 9", H, "head")


def test_interventions_and_attention_per_head(lm, paper):
    """Clamp Δ of every head of layer 2 to 1000 (decay exp(1000 A) = 0: the state is wiped) from the
    write to the end: the prediction changes; one head's clamp freezes that head's Δ only."""
    iv = compare.make_intervention("clamp Δ", 1, tuple(range(H)), 61, 256, 1000.0, 256)
    before, after = compare.run_intervention(lm, paper, iv)
    assert before.p_memory != after.p_memory and not np.allclose(before.p_memory_t[61:], after.p_memory_t[61:])
    # before the clamp nothing changes (to float rounding: a Δ hook hands the scan Δ as given, so
    # softplus runs in torch instead of inside the compiled kernel)
    np.testing.assert_allclose(before.p_memory_t[:61], after.p_memory_t[:61], rtol=1e-6, atol=1e-9)
    tr = trace(lm, paper, include=("delta", "decay"), interventions=[ClampDelta(1, [3], from_t=61, value=0.0)])
    assert (tr.layers[1].delta[61:, 3] == 0).all() and (tr.layers[1].decay[61:, 3] == 1).all()
    assert (tr.layers[1].delta[61:, 4] > 0).all()
    with pytest.raises(ValueError, match="ClampDelta: head 8 is out of range 0..7"):
        compare.run_intervention(lm, paper, ClampDelta(1, [8], from_t=61))
    one = compare.attention_map(lm, paper[:64], 1, 2)
    mean = compare.attention_map(lm, paper[:64], 1, None)
    assert one.shape == mean.shape == (64, 64) and (mean >= 0).all()
    with pytest.raises(ValueError, match="head 8 is out of range 0..7"):
        compare.attention_map(lm, paper[:64], 1, 8)


def test_tidy_csv_of_a_mamba2_trace(lm, paper, tmp_path):
    """Every quantity of a Mamba-2 trace goes into the CSV: B and C [L, G, N] as g·N + n, decay per head."""
    import pandas as pd

    from viz.tables import LAYER_QUANTITIES_ALL, write_tidy_csv
    tr = trace(lm, paper[:40])
    rows = write_tidy_csv(tr, tmp_path / "t.csv", quantities=LAYER_QUANTITIES_ALL)
    df = pd.read_csv(tmp_path / "t.csv")
    assert len(df) == rows
    cfg = lm.config
    b = df[(df.layer == 1) & (df.quantity == "B")]
    assert b.channel.max() == cfg.ngroups * cfg.d_state - 1 and len(b) == 40 * cfg.ngroups * cfg.d_state
    got = b[b.t == 7].sort_values("channel").value.to_numpy()
    assert np.allclose(got, tr.layers[1].B[7].reshape(-1), rtol=1e-6)
    d = df[(df.layer == 0) & (df.quantity == "decay")]
    assert np.allclose(d[d.t == 3].sort_values("channel").value.to_numpy(), tr.layers[0].decay[3], rtol=1e-6)


def test_attention_share_takes_a_heads_channels():
    from analysis.measure import unit_input
    u = np.arange(2 * 8, dtype=np.float64).reshape(2, 8)          # L=2, 4 heads of P=2 channels
    assert np.allclose(unit_input(u, [1, 3], 4), [[np.hypot(2, 3), np.hypot(6, 7)], [np.hypot(10, 11), np.hypot(14, 15)]])
    assert np.array_equal(unit_input(u, [1, 3], 8), u[:, [1, 3]])       # Mamba-1: one channel per unit
