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

How it is computed (the exponents are segment sums of Δ, never exp(A S_t)·exp(-A S_s), which
overflows once A·S is below about -700). Time is cut into blocks of T = BLOCK steps:
- inside a block, the segment sum Σ_{j<k<=i} Δ_k is a masked cumulative sum (ssd_minimal's
  `segsum`: a sum of non-negative terms, no cancellation) and the decay is exp'd directly;
- across blocks (j in block J < I, i in block I) the decay factors through the block boundaries,
      exp(A Σ_{j<k<=i} Δ_k) = exp(A pre_i) · Π_{J<m<I} exp(A tot_m) · exp(A suf_j)
  with pre_i the sum over block I up to i, tot_m a whole block, suf_j the rest of block J after j:
  every exponent is <= 0, so each factor is in [0, 1] and can only underflow, where the true value
  is that small too. Mamba-1's sum over n then becomes a matrix product per row block,
      α̃[I, :I·T] = (C_I ⊙ exp(A pre_I)) @ Q_I,   Q_I[n, j] = (decay from j to the start of I) Δ_j B_j[n]
  and Q is carried from block to block (Q_{I+1} = exp(A tot_I) ⊙ Q_I, then block I's columns
  appended), as the SSD chunked scan carries its state (Dao & Gu 2024 §6). That replaces L²·N/2
  exps per channel by L·T·N exps and a matmul: the channel mean at L=512 went from 41-70 s to
  0.5-0.7 s on one thread (`python -m bench.hidden_attention`). Mamba-2's decay is a scalar per
  head: its mask is CᵀB ⊙ exp(A segsum(Δ)) ⊙ Δ_s directly, segsum over the whole [L, L].

Cost and memory: units are processed G at a time, G chosen so their temporaries stay under
`max_bytes`: Mamba-1 comes out in [G, T, <= L] tiles (the carried Q is [G, N, L]), Mamba-2 as
[G, L, L] per block of heads; `mean_abs_attention` adds tiles up and never holds [n, L, L]. L is
capped at MAX_LEN = 2048 (hidden_attention's [128, 2048, 2048] fp64 result would be 4 GiB). Each
unit's values do not depend on which other units share its block. The unit average is
`mean_abs_attention`: the mean of |α̃| over channels / heads (|·| because units of opposite sign
would otherwise cancel, and the question is "where does each unit look").
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from model import trace as run_trace

MAX_LEN = 2048
DEFAULT_MAX_BYTES = 256 << 20    # per block of units (their [G, L, L] fp64 output and temporaries)
BLOCK = 16                       # T, time steps per block: L·T·N exps per channel, the rest a matmul


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


def _segsum_ji(x: torch.Tensor) -> torch.Tensor:
    """x [..., T] -> [..., T(j), T(i)] contiguous, [j, i] = Σ_{j<k<=i} x_k for j <= i (0 for i < j):
    ssd_minimal's `segsum` (a cumulative sum of the masked, repeated x, no differences of sums),
    stored transposed so the sum runs along the contiguous axis (a strided cumsum is ~3x slower)."""
    T = x.shape[-1]
    rep = x[..., None, :].expand(*x.shape[:-1], T, T)                  # [..., T(j), T(k)]  x_k
    after = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)   # k > j
    return rep.masked_fill(~after, 0.0).cumsum(-1)


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """The same as [..., T(i), T(j)]: [i, j] = Σ_{j<k<=i} x_k (0 above the diagonal), a view."""
    return _segsum_ji(x).transpose(-1, -2)


def _mamba1_rows(delta, A, B, C):
    """α̃ of G channels, one block of T rows at a time: delta [G, L], A [G, N], B, C [L, N] (fp64).
    Yields (r0, r1, c0, [G, r1 - r0, c1 - c0]): rows r0..r1-1, columns c0..c1-1 -- per row block the
    columns of earlier blocks (a matmul with the carried Q) and then the diagonal block (direct
    exps); the rest is above the diagonal, 0. See the module docstring."""
    G, L = delta.shape
    N, T = A.shape[1], BLOCK
    K = -(-L // T)
    pad = K * T - L                                                    # zero Δ, B, C: no effect on real rows
    x = torch.nn.functional.pad(delta, (0, pad)).view(G, K, T)        # [G, K, T]
    Bp = torch.nn.functional.pad(B, (0, 0, 0, pad)).view(K, T, N)     # [K, T, N]
    Cp = torch.nn.functional.pad(C, (0, 0, 0, pad)).view(K, T, N)     # [K, T, N]
    pre = x.cumsum(-1)                                                 # [G, K, T]  Σ_{block start<=k<=i} Δ_k
    suf = torch.zeros_like(x)                                          # [G, K, T]  Σ_{j<k<=block end} Δ_k
    suf[..., :-1] = x.flip(-1).cumsum(-1).flip(-1)[..., 1:]
    tot = pre[..., -1]                                                 # [G, K]
    above = ~torch.ones(T, T, dtype=torch.bool).tril()                 # j > i inside a block
    Q = torch.empty(G, N, K * T, dtype=torch.float64)                 # [G, N, L(j)]  carried Δ_j B_j per input j
    An = A[:, None, :]                                                 # [G, 1, N]
    for I in range(K):
        r0, r1 = I * T, min((I + 1) * T, L)
        dB = x[:, I, :, None] * Bp[I][None]                            # [G, T(j), N]  Δ_j B_j
        if I:                                                          # inputs j in earlier blocks
            left = Cp[I][None] * torch.exp(An * pre[:, I, :, None])    # [G, T(i), N]  C_i exp(A pre_i)
            yield r0, r1, 0, torch.bmm(left, Q[:, :, :r0])[:, :r1 - r0]   # [G, T(i), r0]
        w = _segsum(x[:, I])[..., None] * An[:, None]                  # [G, T(i), T(j), N]  A_n Σ_{j<k<=i} Δ_k
        w.exp_().mul_(dB[:, None]).mul_(Cp[I][None, :, None])
        yield r0, r1, r0, w.sum(-1).masked_fill_(above, 0.0)[:, :r1 - r0, :r1 - r0]   # [G, T(i), T(j)]
        if I + 1 < K:                                                  # carry Q past block I, add its inputs
            Q[:, :, :r0] *= torch.exp(A * tot[:, I, None])[:, :, None]
            Q[:, :, r0:r0 + T] = (torch.exp(An * suf[:, I, :, None]) * dB).transpose(1, 2)


def _rows(delta, A, B, C, channels, max_bytes):
    """Yield (unit indices [G], r0, c0, α̃[:, r0:r1, c0:c1] as a [G, r1 - r0, c1 - c0] fp64 tensor):
    the lower triangle of G units at a time, tile by tile; every tile is the caller's to modify."""
    delta = torch.as_tensor(np.asarray(delta), dtype=torch.float64)   # [L, U]
    A = torch.as_tensor(np.asarray(A), dtype=torch.float64)           # [D, N] or [H]
    B = torch.as_tensor(np.asarray(B), dtype=torch.float64)           # [L, N] or [L, G, N]
    C = torch.as_tensor(np.asarray(C), dtype=torch.float64)           # [L, N] or [L, G, N]
    L, U, groups = _check(delta, A, B, C)
    chans = list(range(U)) if channels is None else [int(c) for c in channels]
    if not chans:
        raise ValueError(f"no {'heads' if groups else 'channels'} given; pass None for all {U}")
    bad = [c for c in chans if not 0 <= c < U]
    if bad:
        raise ValueError(f"{'head' if groups else 'channel'} {bad[0]} is out of range 0..{U - 1}")
    if groups:                                                        # per group, C_i · B_j as [G, L(j), L(i)]
        CBt = torch.einsum("jgn,ign->gji", B, C).contiguous()
        before = ~torch.ones(L, L, dtype=torch.bool).triu()           # [j, i] with i < j
        per_unit = 4 * L * L * 8                                      # segsum (3 at its peak), the mask
    else:
        N, T = A.shape[1], BLOCK
        Lp = -(-L // T) * T
        per_unit = 8 * (N * Lp + 2 * T * Lp + 2 * T * T * N)          # Q, a row block (2), the diagonal's w
    G = max(1, int(max_bytes // per_unit))
    for g0 in range(0, len(chans), G):
        idx = torch.tensor(chans[g0:g0 + G])
        dj = delta[:, idx].T.contiguous()                              # [G, L]
        if groups:                                                    # Mamba-2: scalar decay per head
            # built as [G, L(j), L(i)] (every pass contiguous), handed out as the [G, L(i), L(j)] view
            out = _segsum_ji(dj).mul_(A[idx][:, None, None]).exp_().mul_(dj[:, :, None])
            for row, h in enumerate(idx.tolist()):                    # C_i · B_j of the head's group
                out[row].mul_(CBt[h // (U // groups)])
            yield idx.tolist(), 0, 0, out.masked_fill_(before, 0.0).transpose(-1, -2)
        else:
            for r0, _, c0, blk in _mamba1_rows(dj, A[idx], B, C):
                yield idx.tolist(), r0, c0, blk


def hidden_attention(delta, A, B, C, channels: Optional[Sequence[int]] = None,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """α̃ for the given channels (Mamba-1) or heads (Mamba-2), all by default: numpy [n, L, L] fp64.

    delta [L, D] after softplus, A [D, N] (negative), B, C [L, N]; or for Mamba-2 delta [L, H],
    A [H], B, C [L, G, N] -- e.g. from a model.Trace layer and `layer_A(lm, i)`. Row i is output
    time, column j input time.
    """
    L, n = len(delta), len(delta[0]) if channels is None else len(channels)
    out = torch.zeros(n, L, L, dtype=torch.float64)                    # [n, L, L]
    end = 0
    for idx, r0, c0, blk in _rows(delta, A, B, C, channels, max_bytes):
        if r0 == c0 == 0:                                              # each unit block starts at tile (0, 0)
            start, end = end, end + len(idx)
        out[start:end, r0:r0 + blk.shape[1], c0:c0 + blk.shape[2]] = blk
    return out.numpy()


def mean_abs_attention(delta, A, B, C, channels: Optional[Sequence[int]] = None,
                       max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Mean over channels (heads) of |α̃|: numpy [L, L] fp64, row block by row block (the units'
    [n, L, L] is never held)."""
    L = len(delta)
    acc = torch.zeros(L, L, dtype=torch.float64)                       # [L, L]
    n = 0
    for idx, r0, c0, blk in _rows(delta, A, B, C, channels, max_bytes):
        blk = blk.abs_()
        # summed over units in the tile's memory order (Mamba-2's tiles are transposed views)
        s = blk.mT.sum(0).mT if blk.mT.is_contiguous() else blk.sum(0)               # [r1 - r0, c1 - c0]
        acc[r0:r0 + blk.shape[1], c0:c0 + blk.shape[2]] += s
        n += len(idx) if r0 == c0 == 0 else 0                         # each unit block starts at tile (0, 0)
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
