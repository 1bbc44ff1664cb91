"""The Mamba-2 scan in plain PyTorch: the chunked SSD algorithm, differentiable by autograd.

Same signature and result as `ssd_reference.mamba_chunk_scan_reference` (the spec). It follows
mamba_ssm's `ssd_minimal_discrete` (mamba_ssm/modules/ssd_minimal.py; paper §6, "Listing 1"): time is
cut into chunks of T = min(chunk_size, l) steps and the scan becomes four batched matmul steps,

    1. intra-chunk outputs  y_t  = sum_{s<=t in chunk} L[t,s] (C_t . B_s) x~_s      x~ = Δ x
    2. chunk states         S_c  = sum_s L[T-1,s] x~_s B_s^T                          [p, n] per head
    3. state passing        H_{c+1} = exp(sum of a over chunk c) H_c + S_c            (a = Δ A)
    4. state -> output      y_t += exp(sum_{k<=t} a_k) H_c C_t

with L[t,s] = exp(a_{s+1} + ... + a_t) for s <= t, else 0 (the 1-semiseparable mask).

Numerics: L is built from ssd_minimal's stable `segsum` (a masked cumsum, so each exponent is a sum
over exactly its segment, and the masked triangle is a sum of nothing, 0): no exp of a positive sum
is taken, nothing is inf, and the backward sees no inf * 0. Cumsum differences (Acum_t - Acum_s, what
mamba_ssm's kernels use) would lose the small exponents of long decays to fp32 cancellation.
Step 3 is a Python loop over chunks (mamba_ssm's state-passing kernel is sequential too); ssd_minimal's
[c, c] matrix form costs c^2 h p n and loses at long sequences.
Groups: heads are viewed as [g, r] (r = h / g), so C B^T is formed once per group, as mamba_ssm's
`_bmm_chunk_fwd` does. A sequence that is not a multiple of T is zero-padded at the end (Δ = 0:
decay 1, input 0, so the final state is unchanged) and cut back.

Trace outputs (no gradient): `return_state_norm` never forms h_t. Per chunk,
    ||h_t||^2 = e^{2 Acum_t} ||H_c||^2 + 2 e^{Acum_t} sum_s L[t,s] x~_s^T H_c B_s
                + sum_{s,s'} L[t,s] L[t,s'] (x~_s . x~_s')(B_s . B_s')
which needs [T, T] Gram matrices only: memory O(b l h T), like L itself, not O(b l h p n).
`return_states` materialises [b, l, h, p, n] one chunk at a time.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .ssd_reference import (DT_LIMIT_NONE, SSDResult, check_ssd_inputs, compute_dtype, discretize_dt,
                            skip_and_gate)

# exp(x) below -87.3 (a denormal or zero result) takes a slow path in torch's CPU exp, 10-25x slower
# (scan_torch.py measured it; here it was 35% of a forward). Clamping the exponent at -80 turns a
# decay below 1.8e-35 into 1.8e-35, far below fp32 resolution of anything it is added to, and zeroes
# its (as tiny) gradient. A named deviation from the reference.
EXP_FLOOR = -80.0


def segsum_exp(a: Tensor) -> Tensor:
    """a [..., T] -> L [..., T, T] with L[t, s] = exp(a_{s+1} + ... + a_t) for s <= t, else 0.

    ssd_minimal's stable segsum: row s of the transpose holds a_k for k > s and 0 before, so its
    cumsum is the segment sum itself, and the other triangle (t < s) is a sum of nothing, 0: the exp
    never sees a positive sum of a decaying a, and that triangle is zeroed after it (exp(0) = 1, no
    inf, so the backward has no inf * 0). Built transposed, [s, t], because a cumsum along the last
    (contiguous) dim measured 2x faster than down the rows; the result is a transposed view."""
    T = a.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=a.device)
    seg = (a[..., None, :] * ones.triu(1)).cumsum(-1)                    # [..., T(s), T(t)]
    return seg.clamp(min=EXP_FLOOR).exp().masked_fill(~ones.triu(0), 0.0).transpose(-1, -2)


def _to_chunks(t: Tensor, nc: int, T: int) -> Tensor:
    """[b, l, ...] -> [b, nc, T, ...], zero-padded at the end of time."""
    pad = nc * T - t.shape[1]
    if pad:
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    return t.reshape(t.shape[0], nc, T, *t.shape[2:])


def mamba_chunk_scan_torch(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                           dt_softplus=False, dt_limit=DT_LIMIT_NONE, return_final_states=False,
                           return_state_norm=False, return_states=False) -> SSDResult:
    """The chunked SSD scan; shapes and result as mamba_chunk_scan_reference."""
    check_ssd_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states)
    batch, L, nheads, headdim = x.shape
    ngroups, n = B.shape[2], B.shape[3]
    r = nheads // ngroups
    T = min(chunk_size, L)          # a chunk longer than the sequence would only add padding
    nc = math.ceil(L / T)
    ct = compute_dtype(x)
    delta = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, ct)                  # [b, l, h]
    xd = _to_chunks(x.to(ct) * delta[..., None], nc, T)                            # [b, c, T, h, p]  x~
    xg = xd.view(batch, nc, T, ngroups, r, headdim).permute(0, 3, 4, 1, 2, 5)      # [b, g, r, c, T, p]
    Bg = _to_chunks(B.to(ct), nc, T).permute(0, 3, 1, 2, 4)[:, :, None]            # [b, g, 1, c, T, n]
    Cg = _to_chunks(C.to(ct), nc, T).permute(0, 3, 1, 2, 4)[:, :, None]            # [b, g, 1, c, T, n]
    a = _to_chunks(delta * A.to(ct), nc, T).permute(0, 3, 1, 2)                    # [b, h, c, T]  Δ A
    a = a.reshape(batch, ngroups, r, nc, T)                                        # [b, g, r, c, T]
    Lmat = segsum_exp(a)                                                           # [b, g, r, c, T, T]
    Acum = a.cumsum(-1)                                                            # [b, g, r, c, T]

    # 1. intra-chunk: (L * C B^T) x~, with C B^T shared by the r heads of a group
    y = (Lmat * (Cg @ Bg.transpose(-1, -2))) @ xg                                  # [b, g, r, c, T, p]
    # 2. chunk states: the inputs decayed to the chunk's end; L's last row is that decay
    S = (xg * Lmat[..., -1, :, None]).transpose(-1, -2) @ Bg                       # [b, g, r, c, p, n]
    # 3. state passing, sequential over chunks: H[:, :, :, c] is the state entering chunk c
    H = (initial_states.to(ct).reshape(batch, ngroups, r, headdim, n) if initial_states is not None
         else xg.new_zeros(batch, ngroups, r, headdim, n))                         # [b, g, r, p, n]
    chunk_decay = Acum[..., -1].clamp(min=EXP_FLOOR).exp()                         # [b, g, r, c]
    # unbind, not S[:, :, :, c]: indexing's backward writes a full-size zero gradient per chunk, O(c^2)
    # (forward + backward at b = 8, L = 16,384, 8 heads, one thread: 16.4 s that way, 5.4 s this way)
    starts = []
    for decay_c, S_c in zip(chunk_decay[..., None, None].unbind(3), S.unbind(3)):
        starts.append(H)
        H = decay_c * H + S_c
    Hs = torch.stack(starts, dim=3)                                                # [b, g, r, c, p, n]
    # 4. the entering state, decayed to step t, read out by C_t
    y = y + Acum.clamp(min=EXP_FLOOR).exp()[..., None] * (Cg @ Hs.transpose(-1, -2))  # [b, g, r, c, T, p]
    y = y.permute(0, 3, 4, 1, 2, 5).reshape(batch, nc * T, nheads, headdim)[:, :L]  # [b, l, h, p]
    out = skip_and_gate(y, x, D, z).to(x.dtype)

    norm = states = None
    if return_state_norm or return_states:
        with torch.no_grad():   # trace outputs carry no gradient
            parts = [t.detach() for t in (Lmat, Acum, xg, Bg, Hs)]
            if return_state_norm:
                norm = _state_norm(*parts)[:, :L]                                  # [b, l, h]
            if return_states:
                states = _states(*parts)[:, :L]                                    # [b, l, h, p, n]
    return SSDResult(out, H.reshape(batch, nheads, headdim, n) if return_final_states else None, norm, states)


def _state_norm(Lmat, Acum, xg, Bg, Hs) -> Tensor:
    """||h_t||_F per head from [T, T] Gram matrices (module docstring), never forming h_t.
    Shapes as in mamba_chunk_scan_torch; returns [b, c*T, h]."""
    batch, ngroups, r, nc, T, _ = Lmat.shape
    quad = (xg @ xg.transpose(-1, -2)) * (Bg @ Bg.transpose(-1, -2))              # [b, g, r, c, T, T]
    quad = ((Lmat @ quad) * Lmat).sum(-1)                                          # [b, g, r, c, T]
    cross = (xg * (Bg @ Hs.transpose(-1, -2))).sum(-1)                             # [b, g, r, c, T]  x~_s^T H_c B_s
    cross = (Lmat @ cross[..., None])[..., 0]                                      # [b, g, r, c, T]
    decay = Acum.clamp(min=EXP_FLOOR).exp()                                        # [b, g, r, c, T]
    sq = decay**2 * Hs.square().sum((-1, -2))[..., None] + 2 * decay * cross + quad
    # cancellation can leave a tiny negative where ||h_t|| ~ 0
    norm = sq.clamp_min(0).sqrt()                                                  # [b, g, r, c, T]
    return norm.permute(0, 3, 4, 1, 2).reshape(batch, nc * T, ngroups * r)


def _states(Lmat, Acum, xg, Bg, Hs) -> Tensor:
    """Every h_t = e^{Acum_t} H_c + sum_s L[t,s] x~_s B_s^T, built one chunk at a time so the
    temporaries stay O(chunk). Returns [b, c*T, h, p, n]."""
    batch, ngroups, r, nc, T, _ = Lmat.shape
    p, n = xg.shape[-1], Bg.shape[-1]
    out = xg.new_empty(batch, nc, T, ngroups, r, p, n)
    for c in range(nc):
        xb = (xg[:, :, :, c, :, :, None] * Bg[:, :, :, c, :, None, :]).flatten(-2)  # [b, g, r, T, p*n]
        h = (Lmat[:, :, :, c] @ xb).unflatten(-1, (p, n))                            # [b, g, r, T, p, n]
        h += Acum[:, :, :, c, :, None, None].clamp(min=EXP_FLOOR).exp() * Hs[:, :, :, c, None]
        out[:, c] = h.permute(0, 3, 1, 2, 4, 5)
    return out.view(batch, nc * T, ngroups * r, p, n)
