"""Mamba's hidden attention matrices (Ali, Zimerman & Wolf 2024, "The Hidden Attention of Mamba Models").

Mamba-1. Unrolling the selective scan h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t·h_t + D u_t
(one channel d, h_{-1} = 0) gives y = α̃ u + D u with, for j <= i,

    α̃[i, j] = Σ_n C_i[n] · exp(A[n] · Σ_{k=j+1..i} Δ_k) · Δ_j B_j[n]          (0 for j > i)

i.e. how much token j's input u_j contributes to output i in that channel, before the silu(z) gate
(the paper's eq. 9-11, with Mamba-1's Euler B̄ = Δ B as in mamba_ssm). Shapes, for one layer:
    delta [L, D] (after softplus), A [D, N], B, C [L, N]   ->   α̃ [n_channels, L, L]

Mamba-2 (SSD; Dao & Gu 2024 §3-§4): A is one scalar per head, so the decay factors out of the sum
over n and the mask is a scalar decay times CᵀB, one [L, L] matrix per head, shared by the head's
P channels: y_t[h, p] = Σ_s α̃_h[t, s] x_s[h, p] + D_h x_t[h, p] with

    α̃_h[t, s] = (C_t · B_s) · exp(A_h · Σ_{r=s+1..t} Δ_r[h]) · Δ_s[h]        (0 for s > t)

(B, C of the head's group g = h // (H / G); TransformerLens's Mamba-2 `compute_effective_attention`
with include_dt_scaling=True is the same matrix.) Shapes, for one layer:
    delta [L, H], A [H], B, C [L, G, N]   ->   α̃ [n_heads, L, L]
The functions below take either form and tell them apart by A's rank: "channels" are then heads.

The exponent is computed as (S_i - S_j) A with S the fp64 cumulative sum of Δ; it is clamped at 0
above the diagonal before exp, so nothing overflows, then masked to 0 there.

Cost and memory: one [G, L, L] block per step for G units at a time, G chosen so a block stays
under `max_bytes`; L is capped at MAX_LEN = 2048 (a [128, 2048, 2048] fp64 tensor would be 4 GiB).
The unit average is `mean_abs_attention`: the mean of |α̃| over channels / heads (|·| because units
of opposite sign would otherwise cancel, and the question is "where does each unit look").
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from model import trace as run_trace

MAX_LEN = 2048
DEFAULT_MAX_BYTES = 256 << 20    # per [G, L, L] fp64 block


def _check(delta, A, B, C):
    """(L, U, n_groups or None) of one layer's arrays: Mamba-1 (A [D, N], B [L, N]; groups None)
    or Mamba-2 (A [H], B [L, G, N] with G dividing H)."""
    if delta.dim() != 2:
        raise ValueError(f"delta must be [L, units], got {tuple(delta.shape)}")
    L, U = delta.shape
    if L > MAX_LEN:
        raise ValueError(f"hidden attention is [L, L] per unit; L={L} is over the limit of {MAX_LEN} "
                         f"({L * L * 8 / 2**20:.0f} MiB per unit in fp64); trace a shorter window")
    if A.dim() == 1:                                                   # Mamba-2: one A per head
        ok = (A.shape[0] == U and B.dim() == 3 and B.shape[0] == L and B.shape[1] >= 1
              and U % B.shape[1] == 0 and C.shape == B.shape)
        if not ok:
            raise ValueError(f"Mamba-2 layers need delta [L, H], A [H], B and C [L, G, N] with G dividing H; got "
                             f"delta {tuple(delta.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}")
        return L, U, B.shape[1]
    if A.dim() != 2 or A.shape[0] != U or B.shape != (L, A.shape[1]) or C.shape != B.shape:
        raise ValueError(f"expected delta [L, D], A [D, N], B and C [L, N] (Mamba-1) or delta [L, H], A [H], "
                         f"B and C [L, G, N] (Mamba-2); got delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)}")
    return L, U, None


def _blocks(delta, A, B, C, channels, max_bytes):
    """Yield (unit indices [G], α̃ [G, L, L] fp64 tensor) block by block."""
    delta = torch.as_tensor(np.asarray(delta), dtype=torch.float64)   # [L, U]
    A = torch.as_tensor(np.asarray(A), dtype=torch.float64)           # [D, N] or [H]
    B = torch.as_tensor(np.asarray(B), dtype=torch.float64)           # [L, N] or [L, G, N]
    C = torch.as_tensor(np.asarray(C), dtype=torch.float64)           # [L, N] or [L, G, N]
    L, U, groups = _check(delta, A, B, C)
    chans = list(range(U)) if channels is None else [int(c) for c in channels]
    bad = [c for c in chans if not 0 <= c < U]
    if bad:
        raise ValueError(f"{'head' if groups else 'channel'} {bad[0]} is out of range 0..{U - 1}")
    S = torch.cumsum(delta, dim=0)                                    # [L, U]  S_i = Σ_{k<=i} Δ_k
    tril = torch.ones(L, L, dtype=torch.bool).tril()                  # j <= i
    G = max(1, int(max_bytes // (3 * L * L * 8)))
    if groups:                                                        # per group, C_i · B_j: [G, L, L]
        CB = torch.einsum("ign,jgn->gij", C, B)
    for g0 in range(0, len(chans), G):
        idx = torch.tensor(chans[g0:g0 + G])
        Sg = S[:, idx].T                                              # [G, L]
        gap = (Sg[:, :, None] - Sg[:, None, :]).clamp_(min=0)         # [G, L(i), L(j)]  Σ_{j<k<=i} Δ_k
        dj = delta[:, idx].T                                          # [G, L(j)]
        if groups:                                                    # Mamba-2: scalar decay per head
            out = CB[idx // (U // groups)] * torch.exp(gap * A[idx][:, None, None]) * dj[:, None, :]
        else:
            out = torch.zeros(len(idx), L, L, dtype=torch.float64)
            for n in range(A.shape[1]):
                w = torch.exp(gap * A[idx, n][:, None, None])         # [G, L, L] decay i <- j
                out.addcmul_(w, C[:, n][None, :, None] * (dj * B[:, n][None, :])[:, None, :])
        out.masked_fill_(~tril, 0.0)
        yield idx.tolist(), out


def hidden_attention(delta, A, B, C, channels: Optional[Sequence[int]] = None,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """α̃ for the given channels (Mamba-1) or heads (Mamba-2), all by default: numpy [n, L, L] fp64.

    delta [L, D] after softplus, A [D, N] (negative), B, C [L, N]; or for Mamba-2 delta [L, H],
    A [H], B, C [L, G, N] -- e.g. from a model.Trace layer and `layer_A(lm, i)`. Row i is output
    time, column j input time.
    """
    return torch.cat([blk for _, blk in _blocks(delta, A, B, C, channels, max_bytes)]).numpy()


def mean_abs_attention(delta, A, B, C, channels: Optional[Sequence[int]] = None,
                       max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Mean over channels (heads) of |α̃|: numpy [L, L] fp64, without holding every unit at once."""
    acc, n = None, 0
    for idx, blk in _blocks(delta, A, B, C, channels, max_bytes):
        s = blk.abs().sum(0)
        acc = s if acc is None else acc + s
        n += len(idx)
    return (acc / n).numpy()


def layer_A(lm, layer: int) -> np.ndarray:
    """A of one layer as numpy fp32, [D, N] (Mamba-1) or [H] (Mamba-2): the mixer's own `A`, the one
    place -exp(A_log) is computed."""
    n = len(lm.backbone.layers)
    if not 0 <= layer < n:
        raise ValueError(f"layer {layer} is out of range 0..{n - 1}")
    return lm.backbone.layers[layer].mixer.A.detach().float().cpu().numpy()


def layer_D(lm, layer: int) -> np.ndarray:
    """The skip D of one layer as numpy fp32: [D] (Mamba-1), [H] (Mamba-2; [H * P] with D_has_hdim)."""
    return lm.backbone.layers[layer].mixer.D.detach().float().cpu().numpy()


def hidden_attention_for(lm, tokens, layer: int, channels: Optional[Sequence[int]] = None,
                         reduce: Optional[str] = None, trace=None) -> np.ndarray:
    """Run (or reuse) a trace of `tokens` and return α̃ of `layer`.

    reduce=None: [n_units, L, L]; "abs_mean": mean |α̃| over the channels (heads), [L, L].
    trace: a model.Trace of `tokens` holding delta, B and C (one is recorded when None).
    """
    if reduce not in (None, "abs_mean"):
        raise ValueError(f"reduce must be None or 'abs_mean', got {reduce!r}")
    if trace is None and len(tokens) > MAX_LEN:
        raise ValueError(f"hidden attention needs L <= {MAX_LEN}, got a sequence of {len(tokens)} tokens")
    tr = trace if trace is not None else run_trace(lm, tokens, include=("delta", "B", "C"))
    if tr.length > MAX_LEN:
        raise ValueError(f"hidden attention needs L <= {MAX_LEN}, got a sequence of {tr.length} tokens")
    lt = tr.layers[layer]
    args = (lt.delta, layer_A(lm, layer), lt.B, lt.C)
    fn = hidden_attention if reduce is None else mean_abs_attention
    return fn(*args, channels=channels)
