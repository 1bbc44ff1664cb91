"""Hidden attention (analysis/hidden_attention.py) against its definition, a direct loop:

    α̃[d, t, s] = C_t · (Π_{r=s+1..t} exp(Δ_r[d] A[d])) (Δ_s[d] B_s)        (Mamba-1, per channel d)
    α̃[h, t, s] = (C_t · B_s)[g(h)] Π_{r=s+1..t} exp(Δ_r[h] A[h]) Δ_s[h]     (Mamba-2, per head h)

on odd shapes (L = 1, L not a multiple of the time block, channel blocks of odd size), on both
mixers, and on the extreme Δ of the closed-form model (Δ from 1e-13 to 16: ratios ~1e14) and of
synthetic inputs whose decays underflow to 0. The reference multiplies one step's decay at a
time, as the recurrence does, so it shares nothing with the blocked computation."""
import numpy as np
import pytest
import torch

import analysis.hidden_attention as ha
from model import MambaConfig, MambaLM, trace
from tasks import INDUCTION


def direct(delta, A, B, C) -> np.ndarray:
    """α̃ by the recurrence, fp64: delta [L, U]; A [D, N], B, C [L, N] or A [H], B, C [L, G, N]."""
    delta, A, B, C = (np.asarray(v, dtype=np.float64) for v in (delta, A, B, C))
    L, U = delta.shape
    if A.ndim == 1:                                                   # Mamba-2: head h reads group h // (U / G)
        grp = np.arange(U) // (U // B.shape[1])
        A, B, C = A[:, None], B[:, grp], C[:, grp]                    # [H, 1], [L, H, N]
    else:
        B, C = np.broadcast_to(B[:, None], (L, U, B.shape[1])), np.broadcast_to(C[:, None], (L, U, C.shape[1]))
    out = np.zeros((U, L, L))
    for s in range(L):
        h = delta[s][:, None] * B[s]                                  # [U, N]  the input written at s
        for t in range(s, L):
            if t > s:
                h = np.exp(delta[t][:, None] * A) * h                 # one step's decay
            out[:, t, s] = (h * C[t]).sum(-1)
    return out


def check(delta, A, B, C, cancel=1e-13, **kw):
    """α̃ and its unit mean against `direct`: each entry to 1e-10 of itself, plus `cancel` of its
    unit's largest entry (a sum over n of mixed signs can cancel to far below its terms)."""
    ref = direct(delta, A, B, C)
    got = ha.hidden_attention(delta, A, B, C, **kw)
    assert got.shape == ref.shape and np.isfinite(got).all()
    assert np.all(np.triu(got, 1) == 0)
    scale = np.abs(ref).max(axis=(1, 2), keepdims=True)               # [U, 1, 1]
    err = np.abs(got - ref) / (1e-10 * np.abs(ref) + cancel * scale + 1e-300)
    assert err.max() <= 1, (err.max(), np.unravel_index(err.argmax(), err.shape))
    mean = ha.mean_abs_attention(delta, A, B, C, **kw)
    np.testing.assert_allclose(mean, np.abs(ref).mean(0), rtol=1e-10, atol=cancel * scale.max() + 1e-300)
    return got


def mamba2(seed, ngroups):
    torch.manual_seed(seed)
    ssm = {"layer": "Mamba2", "d_state": 16, "headdim": 16, "chunk_size": 32, "ngroups": ngroups}
    return MambaLM(MambaConfig(ssm_cfg=ssm)).eval()


@pytest.mark.parametrize("L", [1, ha.BLOCK - 1, 37, 2 * ha.BLOCK])
@pytest.mark.parametrize("kind", ["mamba1", "mamba2-g1", "mamba2-g2"])
def test_matches_the_recurrence_on_a_model(kind, L, one_thread):
    lm = MambaLM(MambaConfig()).eval() if kind == "mamba1" else mamba2(seed=L, ngroups=int(kind[-1]))
    tokens = torch.randint(0, 17, (L,), generator=torch.Generator().manual_seed(L))
    lt = trace(lm, tokens).layers[1]
    A = ha.layer_A(lm, 1)
    full = check(lt.delta, A, lt.B, lt.C)
    # other unit blocks (a few units per block, the last one short) and a reordered subset
    units = full.shape[0]
    for max_bytes in (200_000, 1_000_000):
        np.testing.assert_array_equal(ha.hidden_attention(lt.delta, A, lt.B, lt.C, max_bytes=max_bytes), full)
    sub = [units - 1, 0, 3]
    np.testing.assert_array_equal(ha.hidden_attention(lt.delta, A, lt.B, lt.C, channels=sub, max_bytes=1), full[sub])


def test_extreme_delta_of_the_closed_form_model(analytic):
    """Layer 2's memory channels: Δ ≈ 16 at the write, ≈ 9.4e-14 elsewhere (a ratio ~1e14)."""
    tokens = INDUCTION.batch(1, 45, seed=4, trigger_pos=9).tokens[0]
    lt = trace(analytic, tokens).layers[1]
    assert lt.delta.max() / lt.delta.min() > 1e13
    alpha = check(lt.delta, ha.layer_A(analytic, 1), lt.B, lt.C, cancel=0)   # one n: no cancellation
    assert np.abs(alpha).max() > 1.0                                # the write is in there


@pytest.mark.parametrize("L", [1, 37, 3 * ha.BLOCK + 5])
def test_decays_that_underflow(L):
    """Δ·A down to -4e4 per step: decays underflow to exactly 0 (the direct product does too, and a
    factorisation exp(A S_t)·exp(-A S_s) would overflow to inf · 0 = nan)."""
    rng = np.random.default_rng(L)
    D, N, H, G = 7, 5, 6, 3
    delta = 10.0 ** rng.uniform(-13, 2, (L, D))                       # [L, D] 1e-13 .. 100
    A = -(10.0 ** rng.uniform(-1, 2.6, (D, N)))                       # [D, N] -0.1 .. -400
    A[:3] = -(10.0 ** rng.uniform(2, 2.6, (3, N)))                    # channels whose every n can underflow
    B, C = rng.standard_normal((L, N)), rng.standard_normal((L, N))
    alpha = check(delta, A, B, C, max_bytes=1)
    if L > 1:
        assert (-A[None] * delta.cumsum(0)[:, :, None]).max() > 800     # exp(-A S_s) would be inf
        below = alpha[:, np.tri(L, k=-1, dtype=bool)]                   # [D, L(L-1)/2]
        assert (below == 0).any() and (below != 0).any()                 # some decays underflowed, not all
    delta2 = 10.0 ** rng.uniform(-13, 2, (L, H))                      # [L, H]
    A2 = -(10.0 ** rng.uniform(-1, 2.6, H))                           # [H]
    B2, C2 = rng.standard_normal((L, G, N)), rng.standard_normal((L, G, N))
    check(delta2, A2, B2, C2)
