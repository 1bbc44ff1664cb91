"""The closed-form model, hidden attention and interventions (model/analytic.py, hidden_attention.py,
interventions.py) and the torch-free mechanism charts (viz/mechanism.py)."""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from model import MambaConfig, MambaLM, load_checkpoint, save_checkpoint
from model.analytic import CH_CONST, MEMORY_CHANNELS, build_analytic_lm, evaluate
from model.data import induction_batch
from model.hidden_attention import MAX_LEN, hidden_attention, layer_A, layer_D, mean_abs_attention
from model.interventions import (AblateSSM, ClampDelta, PatchState, ZeroState, run_interventions,
                                 run_with_interventions)

TRAINED = Path("checkpoints/induction-2layer.safetensors")
P = 20                                      # trigger position for the fixed-position batches


@pytest.fixture(scope="module")
def one_thread():
    """1 torch thread: several times faster on a shared 2-core machine (no spin-waiting)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def analytic(one_thread):
    return build_analytic_lm()


@pytest.fixture(scope="module")
def batch():
    return induction_batch(32, 128, seed=11, trigger_pos=P)


def predict(lm, tokens, ivs=()):
    logits, _, _ = run_interventions(lm, tokens, ivs, num_last_tokens=1)
    return logits[:, -1].argmax(-1)                                       # [B]


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
    tok = induction_batch(4, 64, seed=1).tokens
    with torch.no_grad():
        assert torch.equal(lm(tok), analytic(tok))


def test_closed_form_delta_is_selective(analytic):
    """Δ on the memory channels is large only at the memory token; ~1e-13 everywhere else."""
    d = induction_batch(1, 96, seed=5)
    p = int(d.trigger_pos[0, 0])
    delta = analytic.trace(d.tokens[0]).layers[1].delta[:, list(MEMORY_CHANNELS)]   # [L, 16]
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
    tokens = induction_batch(1, 97, seed=3).tokens[0]
    lt = lm.trace(tokens).layers[layer]
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
    lt = lm.trace(induction_batch(1, 40, seed=2).tokens[0]).layers[0]
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
    tok = induction_batch(1, 150, seed=4).tokens[0]
    a, b = lm.trace(tok), run_with_interventions(lm, tok, [])
    assert np.array_equal(a.logits, b.logits)
    for la, lb in zip(a.layers, b.layers):
        for f in ("delta", "ssm_output", "state_norm", "resid_post"):
            assert np.array_equal(getattr(la, f), getattr(lb, f))
    # an intervention window outside the sequence changes nothing either
    c = run_with_interventions(lm, tok, [ClampDelta(0, [1, 2], from_t=500)])
    assert np.array_equal(a.logits, c.logits)


def test_interventions_across_stream_chunks(analytic):
    """State edits and clamps land on absolute times even when the run is cut into chunks."""
    d = induction_batch(4, 300, seed=9, trigger_pos=150)
    ivs = [ClampDelta(1, list(MEMORY_CHANNELS), from_t=151, to_t=152)]
    full, _, _ = run_interventions(analytic, d.tokens, ivs, num_last_tokens=1)
    chunked, _, _ = run_interventions(analytic, d.tokens, ivs, num_last_tokens=1, chunk_len=64)
    assert torch.equal(full, chunked)
    assert (full[:, -1].argmax(-1) != d.target).all()


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
    tr = run_with_interventions(analytic, batch.tokens[0],
                                [ClampDelta(1, list(MEMORY_CHANNELS), from_t=P + 2, to_t=P + 42, value=1.0)])
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
    other = induction_batch(32, 128, seed=12, trigger_pos=P)
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
            run_interventions(analytic, batch.tokens, [iv])


@pytest.mark.skipif(not TRAINED.exists(), reason=f"{TRAINED} not trained yet")
def test_trained_checkpoint_clamp_at_the_write(one_thread):
    """On the trained model: the channels whose Δ spikes while M is in the conv window (P+1 .. P+4)
    and stays tiny over the filler carry M -- clamping their Δ to 0 there breaks recall -- while as
    many random channels of the same layer do not matter."""
    lm = load_checkpoint(TRAINED)
    d = induction_batch(64, 256, seed=21, trigger_pos=P)
    W0, W1 = P + 1, P + 1 + lm.config.d_conv
    _, _, recs = run_interventions(lm, d.tokens[:16], [], records=True)
    best = None
    for li, r in enumerate(recs):
        delta = r["delta"].double()                                         # [16, L, D]
        filler = delta[:, W1 + 1:-1].reshape(-1, delta.shape[-1]).median(0).values
        ratio = delta[:, W0:W1].mean(0).max(0).values / filler
        if best is None or ratio.max() > best[1].max():
            best = (li, ratio)
    layer, ratio = best
    mem = [int(c) for c in torch.argsort(ratio, descending=True) if ratio[c] > 100][:48]
    assert len(mem) >= 1
    base = (predict(lm, d.tokens) == d.target).float().mean()
    assert base > 0.9
    broken = (predict(lm, d.tokens, [ClampDelta(layer, mem, from_t=W0, to_t=W1)]) == d.target).float().mean()
    others = [c for c in range(lm.config.d_inner) if c not in mem]
    rng = np.random.default_rng(1)
    draws = [rng.choice(others, min(len(mem), len(others)), replace=False).tolist() for _ in range(3)]
    rand = [(predict(lm, d.tokens, [ClampDelta(layer, ch, from_t=W0, to_t=W1)]) == d.target).float().mean()
            for ch in draws]
    assert broken < 0.5 * base, (layer, mem, base, broken)
    assert min(rand) > base - 0.1, (layer, mem, base, rand)


# ---------------------------------------------------------------------------------------------
# charts

def test_mechanism_charts_are_torch_free_and_render():
    src = Path("viz/mechanism.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+(torch|gradio)\b", src, re.M)
    from viz.mechanism import (delta_ratio_chart, hidden_attention_chart, horizon_chart, intervention_chart,
                               probe_accuracy_chart, state_evolution_chart)
    rng = np.random.default_rng(0)
    charts = [delta_ratio_chart(rng.random((2, 128)) * 1e3, "x", [(1, 3)]),
              probe_accuracy_chart(rng.random((3, 128)), [0, 8, 64], 1),
              state_evolution_chart({"a": {"distance": [16, 64], "rho": [1.0, 0.5], "acc": [1.0, math.nan]},
                                     "b": {"distance": [16], "rho": [0.1], "acc": [0.0]}}),
              hidden_attention_chart(np.tril(rng.random((12, 12))), tokens=list(range(12))),
              horizon_chart(["a", "b"], [1e3, 1e13], [900.0, 2.0 ** 20], [False, True]),
              intervention_chart(["a", "a"], ["none", "clamp"], [1.0, 0.0])]
    for ch in charts:
        spec = ch.to_dict()
        assert "$schema" in spec
    # the heatmap holds the lower triangle only
    assert len(hidden_attention_chart(np.ones((12, 12))).data) == 12 * 13 // 2
