"""Mamba's hidden attention matrices (Ali, Zimerman & Wolf 2024, "The Hidden Attention of Mamba Models").

Unrolling the selective scan h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t·h_t + D u_t (one
channel d, h_{-1} = 0) gives y = α̃ u + D u with, for j <= i,

    α̃[i, j] = Σ_n C_i[n] · exp(A[n] · Σ_{k=j+1..i} Δ_k) · Δ_j B_j[n]          (0 for j > i)

i.e. how much token j's input u_j contributes to output i in that channel, before the silu(z) gate
(the paper's eq. 9-11, with Mamba-1's Euler B̄ = Δ B as in mamba_ssm). Shapes, for one layer:
    delta [L, D] (after softplus), A [D, N], B, C [L, N]   ->   α̃ [n_channels, L, L]
The exponent is computed as (S_i - S_j) A[n] with S the fp64 cumulative sum of Δ; it is clamped at
0 above the diagonal before exp, so nothing overflows, then masked to 0 there.

Cost and memory: one [G, L, L] block per step for G channels at a time, G chosen so a block stays
under `max_bytes`; L is capped at MAX_LEN = 2048 (a [128, 2048, 2048] fp64 tensor would be 4 GiB).
The channel average is `mean_abs_attention`: the mean of |α̃| over channels (|·| because channels
of opposite sign would otherwise cancel, and the question is "where does each channel look").
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

MAX_LEN = 2048
DEFAULT_MAX_BYTES = 256 << 20    # per [G, L, L] fp64 block


def _check(delta, A, B, C):
    L, D = delta.shape
    if L > MAX_LEN:
        raise ValueError(f"hidden attention is [L, L] per channel; L={L} is over the limit of {MAX_LEN} "
                         f"({L * L * 8 / 2**20:.0f} MiB per channel in fp64); trace a shorter window")
    if A.shape[0] != D or B.shape != (L, A.shape[1]) or C.shape != B.shape:
        raise ValueError(f"expected delta [L, D], A [D, N], B and C [L, N]; got delta {tuple(delta.shape)}, "
                         f"A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}")
    return L, D


def _blocks(delta, A, B, C, channels, max_bytes):
    """Yield (channel indices [G], α̃ [G, L, L] fp64 tensor) block by block."""
    delta = torch.as_tensor(np.asarray(delta), dtype=torch.float64)   # [L, D]
    A = torch.as_tensor(np.asarray(A), dtype=torch.float64)           # [D, N]
    B = torch.as_tensor(np.asarray(B), dtype=torch.float64)           # [L, N]
    C = torch.as_tensor(np.asarray(C), dtype=torch.float64)           # [L, N]
    L, D = _check(delta, A, B, C)
    N = A.shape[1]
    chans = list(range(D)) if channels is None else [int(c) for c in channels]
    bad = [c for c in chans if not 0 <= c < D]
    if bad:
        raise ValueError(f"channel {bad[0]} is out of range 0..{D - 1}")
    S = torch.cumsum(delta, dim=0)                                    # [L, D]  S_i = Σ_{k<=i} Δ_k
    tril = torch.ones(L, L, dtype=torch.bool).tril()                  # j <= i
    G = max(1, int(max_bytes // (3 * L * L * 8)))
    for g0 in range(0, len(chans), G):
        idx = torch.tensor(chans[g0:g0 + G])
        Sg = S[:, idx].T                                              # [G, L]
        gap = (Sg[:, :, None] - Sg[:, None, :]).clamp_(min=0)         # [G, L(i), L(j)]  Σ_{j<k<=i} Δ_k
        dj = delta[:, idx].T                                          # [G, L(j)]
        out = torch.zeros(len(idx), L, L, dtype=torch.float64)
        for n in range(N):
            w = torch.exp(gap * A[idx, n][:, None, None])             # [G, L, L] decay i <- j
            out.addcmul_(w, C[:, n][None, :, None] * (dj * B[:, n][None, :])[:, None, :])
        out.masked_fill_(~tril, 0.0)
        yield idx.tolist(), out


def hidden_attention(delta, A, B, C, channels: Optional[Sequence[int]] = None,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """α̃ for the given channels (all by default): numpy [n_channels, L, L] fp64.

    delta [L, D] after softplus, A [D, N] (negative), B, C [L, N] -- e.g. from a Trace layer and
    `layer_A(lm, i)`. Row i is output time, column j input time.
    """
    return torch.cat([blk for _, blk in _blocks(delta, A, B, C, channels, max_bytes)]).numpy()


def mean_abs_attention(delta, A, B, C, channels: Optional[Sequence[int]] = None,
                       max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Mean over channels of |α̃|: numpy [L, L] fp64, without holding every channel at once."""
    acc, n = None, 0
    for idx, blk in _blocks(delta, A, B, C, channels, max_bytes):
        s = blk.abs().sum(0)
        acc = s if acc is None else acc + s
        n += len(idx)
    return (acc / n).numpy()


def layer_A(lm, layer: int) -> np.ndarray:
    """A = -exp(A_log) of one layer as numpy [D, N] fp32."""
    n = len(lm.backbone.layers)
    if not 0 <= layer < n:
        raise ValueError(f"layer {layer} is out of range 0..{n - 1}")
    return (-torch.exp(lm.backbone.layers[layer].mixer.A_log.detach().float())).cpu().numpy()


def layer_D(lm, layer: int) -> np.ndarray:
    """The skip D of one layer as numpy [D] fp32."""
    return lm.backbone.layers[layer].mixer.D.detach().float().cpu().numpy()


def hidden_attention_for(lm, tokens, layer: int, channels: Optional[Sequence[int]] = None,
                         reduce: Optional[str] = None, trace=None) -> np.ndarray:
    """Run (or reuse) a trace of `tokens` and return α̃ of `layer`.

    reduce=None: [n_channels, L, L]; "abs_mean": mean |α̃| over the channels, [L, L].
    """
    if reduce not in (None, "abs_mean"):
        raise ValueError(f"reduce must be None or 'abs_mean', got {reduce!r}")
    tr = trace if trace is not None else lm.trace(tokens)
    if tr.length > MAX_LEN:
        raise ValueError(f"hidden attention needs L <= {MAX_LEN}, got a sequence of {tr.length} tokens")
    lt = tr.layers[layer]
    args = (lt.delta, layer_A(lm, layer), lt.B, lt.C)
    fn = hidden_attention if reduce is None else mean_abs_attention
    return fn(*args, channels=channels)
