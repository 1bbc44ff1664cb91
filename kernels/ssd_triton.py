"""The Mamba-2 (SSD) scan as Triton kernels: the chunked algorithm forward and backward, in an
autograd.Function.

Same signature and result as `ssd_reference.mamba_chunk_scan_reference` (the spec) and the torch
backend (ssd_torch.py, whose four steps these kernels implement). Simpler than mamba_ssm's five
forward / eight backward kernels (mamba_ssm/ops/triton/ssd_*.py): one program owns one whole
(chunk, batch, head) -- its [T, T] mask, [T, p] and [T, n] tiles and [p, n] state -- so nothing is
split across programs and no atomics are needed.

Forward (grid (chunks, batch * heads) unless noted):
  _chunk_state_kernel    S_c = sum_s exp(a_{s+1} + .. + a_{T-1}) (Δ_s x_s) B_s^T, and a's chunk sum
  _state_passing_kernel  grid (batch * heads, p n blocks), sequential over chunks: H_{c+1} =
                         exp(sum a) H_c + S_c, written over S_c (the state *entering* each chunk)
  _chunk_scan_kernel     y = (L * C B^T) (Δ x) + exp(cumsum a) C H_c^T + D x, then * silu(z)
                         (+ ||h_t||_F from [T, T] Gram matrices, as ssd_torch._state_norm)
  _chunk_states_kernel   only for return_states: the recurrence step by step inside the chunk
                         from H_c, storing every h_t
Backward (the adjoint of the same four steps; derivation in `_chunk_bwd_kernel`):
  dy, dz, dD             torch, elementwise, with y recomputed by _chunk_scan_kernel when z is given
  _chunk_state_kernel    G_c = sum_t exp(cumsum a)_t dy_t C_t^T      (FROM_START: the same loop)
  _state_passing_kernel  REVERSE: R_c = dL/dH_{c+1}, dH_c = G_c + exp(sum a) R_c; dH_0 = d initial
  _chunk_bwd_kernel      dx, dΔ, dB, dC per head and da = dL/d(Δ A) per step; torch sums heads of
                         a group and turns da into dA and dΔ.
Δ's bias, softplus and clamp are torch ops in front of the Function (a [b, l, h] pass), so autograd
chains their gradients; mamba_ssm fuses them into its cumsum kernel.

Chunk length: T = min(chunk_size, MAX_CHUNK = 64). Chunking is an exact reorganisation of the
recurrence, so the result is the same whatever T (to rounding); 64 keeps a program's [T, T], [T, n]
and [p, n] tiles in registers, where mamba_ssm's 256 needs its tiled kernels. A named deviation:
chunk_size above 64 only changes the speed of the torch backend, not this one.
Numerics: every decay is an exp of a sum over exactly its segment (the [T, T] mask is a masked
cumsum, ssd_torch.segsum_exp's stable segsum; the decay to the chunk end a reverse cumsum), never a
difference of two long cumsums, and exp never sees a positive sum. Matmuls run in fp32 with
input_precision="ieee" (no TF32: the tests bound the error at 1e-5 against float64). The gradient of
a's cumsum is taken in the stable form mamba_ssm's `_chunk_scan_bwd_ddAcs_stable` uses: da_k sums
the terms whose segment crosses k, so nothing large cancels.

CPU: under TRITON_INTERPRET=1 (set before this module is imported) the kernels run in Triton's
numpy interpreter, slowly; tests/test_ssd_scan.py uses small shapes there.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .ssd_reference import (DT_LIMIT_NONE, SSDResult, check_ssd_inputs, compute_dtype, discretize_dt)

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
MAX_CHUNK = 64          # steps per chunk in these kernels (module docstring)
MAX_HEADDIM = 128       # p and n are held whole in a program's registers
MAX_DSTATE = 256
STATE_BLOCK = 1024      # p*n elements per state-passing program


# --------------------------------------------------------------------------------------------------
# jit helpers
# --------------------------------------------------------------------------------------------------
@triton.jit
def _tile(ptr, pid_b, head, t0, offs_t, mask_t, offs_c, mask_c, stride_b, stride_l, stride_h, stride_c):
    """A time-major [BT, BC] fp32 tile of a [b, l, heads, C] tensor (x, z, dy: heads = h, C = p;
    B, C: heads = g, C = n) at one head, 0 where masked. Upcast right after the load (fp16/bf16)."""
    ptrs = (ptr + pid_b * stride_b + head * stride_h + (t0 + offs_t[:, None]).to(tl.int64) * stride_l
            + offs_c[None, :] * stride_c)
    return tl.load(ptrs, mask=mask_t[:, None] & mask_c[None, :], other=0.0).to(tl.float32)


@triton.jit
def _chunk_a(delta_ptr, A_ptr, pid_b, pid_h, t0, offs_t, mask_t, seqlen, nheads):
    """Δ [BT] of one (batch, head, chunk) and a = Δ A; both 0 on padded steps (decay 1, no input)."""
    dt = tl.load(delta_ptr + (pid_b * seqlen + t0 + offs_t) * nheads + pid_h, mask=mask_t, other=0.0)
    return dt, dt * tl.load(A_ptr + pid_h).to(tl.float32)


@triton.jit
def _segsum_exp(a, offs_t):
    """a [BT] -> L [BT(t), BT(s)], L[t, s] = exp(a_{s+1} + .. + a_t) for s <= t else 0: column s
    holds a_k for k > s and 0 above, so its cumsum is exactly the segment sum (the stable segsum)."""
    seg = tl.cumsum(tl.where(offs_t[:, None] > offs_t[None, :], a[:, None], 0.0), axis=0)
    return tl.where(offs_t[:, None] >= offs_t[None, :], tl.exp(seg), 0.0)


@triton.jit
def _decay_to_end(a):
    """exp(a_{s+1} + .. + a_{T-1}) [BT]: the reverse cumsum minus the step's own a (padded a = 0)."""
    return tl.exp(tl.cumsum(a, axis=0, reverse=True) - a)


@triton.jit
def _state_offsets(pid_b, pid_c, pid_h, nchunks, nheads, offs_p, offs_n, headdim, dstate):
    """[BP, BN] offsets into a [b, chunks, h, p, n] buffer, and its mask."""
    base = ((pid_b * nchunks + pid_c) * nheads + pid_h) * headdim * dstate
    offs = base + offs_p[:, None] * dstate + offs_n[None, :]
    return offs, (offs_p[:, None] < headdim) & (offs_n[None, :] < dstate)


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------
@triton.jit
def _chunk_state_kernel(
    x_ptr,        # [b, l, h, p] x (forward) or dy (FROM_START), any float dtype
    delta_ptr,    # [b, l, h] contiguous fp32 Δ
    A_ptr,        # [h]
    m_ptr,        # [b, l, g, n] B (forward) or C (FROM_START)
    out_ptr,      # [b, chunks, h, p, n] contiguous fp32: S_c (forward) or G_c (FROM_START)
    asum_ptr,     # [b, h, chunks] contiguous fp32: sum of a over the chunk (written in the forward)
    seqlen, chunk, nheads, headdim, dstate, nchunks, heads_per_group,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_m_b, stride_m_l, stride_m_g, stride_m_n,
    FROM_START: tl.constexpr,   # False: S_c = sum_s decay_to_end_s (Δ_s x_s) B_s^T
                                # True:  G_c = sum_t exp(a_0 + .. + a_t) dy_t C_t^T
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_b = (pid_bh // nheads).to(tl.int64)
    pid_h = pid_bh % nheads
    t0 = pid_c * chunk
    offs_t = tl.arange(0, BLOCK_T)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_t = (offs_t < chunk) & (t0 + offs_t < seqlen)
    dt, a = _chunk_a(delta_ptr, A_ptr, pid_b, pid_h, t0, offs_t, mask_t, seqlen, nheads)
    xs = _tile(x_ptr, pid_b, pid_h, t0, offs_t, mask_t, offs_p, offs_p < headdim,
               stride_x_b, stride_x_l, stride_x_h, stride_x_p)                        # [BT, BP]
    ms = _tile(m_ptr, pid_b, pid_h // heads_per_group, t0, offs_t, mask_t, offs_n, offs_n < dstate,
               stride_m_b, stride_m_l, stride_m_g, stride_m_n)                        # [BT, BN]
    if FROM_START:
        w = tl.exp(tl.cumsum(a, axis=0))                                              # [BT]
    else:
        w = _decay_to_end(a) * dt                                                     # [BT], Δ folded in
        tl.store(asum_ptr + pid_bh * nchunks + pid_c, tl.sum(a, axis=0))
    acc = tl.dot(tl.trans(xs * w[:, None]), ms, input_precision="ieee")               # [BP, BN]
    offs, mask = _state_offsets(pid_b, pid_c, pid_h, nchunks, nheads, offs_p, offs_n, headdim, dstate)
    tl.store(out_ptr + offs, acc, mask=mask)


@triton.jit
def _state_passing_kernel(
    states_ptr,   # [b, chunks, h, p*n] fp32: in S_c (G_c), out the state entering chunk c (R_c)
    asum_ptr,     # [b, h, chunks] fp32
    h0_ptr,       # [b, h, p*n] fp32: initial state (forward, if HAS_H0) or d final state (REVERSE)
    last_ptr,     # [b, h, p*n] fp32: final state (forward) or d initial state (REVERSE)
    nchunks, nheads, size,
    HAS_H0: tl.constexpr, REVERSE: tl.constexpr, BLOCK: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_b = pid_bh // nheads
    pid_h = pid_bh % nheads
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < size
    h = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_bh.to(tl.int64) * size + offs, mask=mask, other=0.0)
    for i in range(0, nchunks):
        c = i
        if REVERSE:
            c = nchunks - 1 - i
        ptrs = states_ptr + ((pid_b.to(tl.int64) * nchunks + c) * nheads + pid_h) * size + offs
        s = tl.load(ptrs, mask=mask, other=0.0)
        tl.store(ptrs, h, mask=mask)
        h = tl.exp(tl.load(asum_ptr + pid_bh * nchunks + c)) * h + s
    tl.store(last_ptr + pid_bh.to(tl.int64) * size + offs, h, mask=mask)


@triton.jit
def _chunk_scan_kernel(
    x_ptr, delta_ptr, A_ptr, B_ptr, C_ptr,
    states_ptr,   # [b, chunks, h, p, n] fp32: state entering each chunk
    D_ptr,        # [h] or [h, p] contiguous (if HAS_D)
    z_ptr,        # [b, l, h, p] (if HAS_Z)
    out_ptr,      # [b, l, h, p], contiguous
    norm_ptr,     # [b, l, h] fp32: ||h_t||_F (if STORE_NORM)
    seqlen, chunk, nheads, headdim, dstate, nchunks, heads_per_group,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_B_b, stride_B_l, stride_B_g, stride_B_n,
    stride_C_b, stride_C_l, stride_C_g, stride_C_n,
    stride_z_b, stride_z_l, stride_z_h, stride_z_p,
    HAS_D: tl.constexpr, D_PER_CHANNEL: tl.constexpr, HAS_Z: tl.constexpr, STORE_NORM: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_b = (pid_bh // nheads).to(tl.int64)
    pid_h = pid_bh % nheads
    pid_g = pid_h // heads_per_group
    t0 = pid_c * chunk
    offs_t = tl.arange(0, BLOCK_T)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_t = (offs_t < chunk) & (t0 + offs_t < seqlen)
    mask_p = offs_p < headdim
    mask_n = offs_n < dstate
    dt, a = _chunk_a(delta_ptr, A_ptr, pid_b, pid_h, t0, offs_t, mask_t, seqlen, nheads)
    x = _tile(x_ptr, pid_b, pid_h, t0, offs_t, mask_t, offs_p, mask_p,
              stride_x_b, stride_x_l, stride_x_h, stride_x_p)                          # [BT, BP]
    Bt = _tile(B_ptr, pid_b, pid_g, t0, offs_t, mask_t, offs_n, mask_n,
               stride_B_b, stride_B_l, stride_B_g, stride_B_n)                         # [BT, BN]
    Ct = _tile(C_ptr, pid_b, pid_g, t0, offs_t, mask_t, offs_n, mask_n,
               stride_C_b, stride_C_l, stride_C_g, stride_C_n)                         # [BT, BN]
    offs, mask = _state_offsets(pid_b, pid_c, pid_h, nchunks, nheads, offs_p, offs_n, headdim, dstate)
    H = tl.load(states_ptr + offs, mask=mask, other=0.0)                               # [BP, BN]
    # 1. intra-chunk: (L * C B^T) (Δ x);  4. the entering state read out by C, decayed to t
    L = _segsum_exp(a, offs_t)                                                         # [BT, BT]
    xd = x * dt[:, None]                                                               # [BT, BP] x~
    from_start = tl.exp(tl.cumsum(a, axis=0))                                          # [BT]
    y = tl.dot(tl.dot(Ct, tl.trans(Bt), input_precision="ieee") * L, xd, input_precision="ieee")
    y += from_start[:, None] * tl.dot(Ct, tl.trans(H), input_precision="ieee")         # [BT, BP]
    row = (pid_b * seqlen + t0 + offs_t) * nheads + pid_h                              # [BT] into [b, l, h]
    if STORE_NORM:   # ||h_t||^2 from [T, T] Gram matrices, never forming h_t (ssd_torch._state_norm)
        quad = tl.dot(tl.dot(xd, tl.trans(xd), input_precision="ieee")
                      * tl.dot(Bt, tl.trans(Bt), input_precision="ieee"), tl.trans(L), input_precision="ieee")
        quad = tl.sum(tl.trans(quad) * L, axis=1)                      # sum_{s,s'} L[t,s] L[t,s'] Q[s,s']
        v = tl.sum(xd * tl.dot(Bt, tl.trans(H), input_precision="ieee"), axis=1)       # [BT] x~_s^T H B_s
        cross = tl.sum(L * v[None, :], axis=1)
        sq = from_start * from_start * tl.sum(tl.sum(H * H, axis=1), axis=0) + 2 * from_start * cross + quad
        tl.store(norm_ptr + row, tl.sqrt(tl.maximum(sq, 0.0)), mask=mask_t)
    if HAS_D:
        if D_PER_CHANNEL:
            y += x * tl.load(D_ptr + pid_h * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
        else:
            y += x * tl.load(D_ptr + pid_h).to(tl.float32)
    if HAS_Z:
        zt = _tile(z_ptr, pid_b, pid_h, t0, offs_t, mask_t, offs_p, mask_p,
                   stride_z_b, stride_z_l, stride_z_h, stride_z_p)
        y = y * zt * tl.sigmoid(zt)
    tl.store(out_ptr + row[:, None] * headdim + offs_p[None, :], y.to(out_ptr.dtype.element_ty),
             mask=mask_t[:, None] & mask_p[None, :])


@triton.jit
def _chunk_states_kernel(
    x_ptr, delta_ptr, A_ptr, B_ptr, states_ptr,
    hs_ptr,       # [b, l, h, p, n] fp32: every h_t
    seqlen, chunk, nheads, headdim, dstate, nchunks, heads_per_group,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_B_b, stride_B_l, stride_B_g, stride_B_n,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The recurrence step by step from the state entering the chunk: exact, and [p, n] per step is
    all a program holds (a [T, p, n] tile would not fit). For return_states only."""
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_b = (pid_bh // nheads).to(tl.int64)
    pid_h = pid_bh % nheads
    pid_g = pid_h // heads_per_group
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    offs, mask = _state_offsets(pid_b, pid_c, pid_h, nchunks, nheads, offs_p, offs_n, headdim, dstate)
    h = tl.load(states_ptr + offs, mask=mask, other=0.0)                               # [BP, BN]
    A = tl.load(A_ptr + pid_h).to(tl.float32)
    # per-step pointers hoisted out of the loop: the interpreter pays per op, the GPU per address
    x_row = x_ptr + pid_b * stride_x_b + pid_h * stride_x_h + offs_p * stride_x_p       # [BP]
    B_row = B_ptr + pid_b * stride_B_b + pid_g * stride_B_g + offs_n * stride_B_n       # [BN]
    dt_row = delta_ptr + pid_b * seqlen * nheads + pid_h
    hs_row = hs_ptr + (pid_b * seqlen * nheads + pid_h) * headdim * dstate + offs_p[:, None] * dstate + offs_n[None, :]
    t0 = pid_c * chunk
    for i in range(0, tl.minimum(chunk, seqlen - t0)):
        t = t0.to(tl.int64) + i   # int64: t * h p n passes 2^31 at long sequences
        dt = tl.load(dt_row + t * nheads)
        xv = tl.load(x_row + t * stride_x_l, mask=offs_p < headdim, other=0.0).to(tl.float32)   # [BP]
        bv = tl.load(B_row + t * stride_B_l, mask=offs_n < dstate, other=0.0).to(tl.float32)    # [BN]
        h = tl.exp(dt * A) * h + (dt * xv)[:, None] * bv[None, :]
        tl.store(hs_row + t * (nheads * headdim * dstate), h, mask=mask)


@triton.jit
def _chunk_bwd_kernel(
    x_ptr, delta_ptr, A_ptr, B_ptr, C_ptr,
    dy_ptr,       # [b, l, h, p] fp32 contiguous: dL/dy (after the gate, before D x: D's term is torch's)
    states_ptr,   # [b, chunks, h, p, n] fp32: H_c, the state entering chunk c
    dstates_ptr,  # [b, chunks, h, p, n] fp32: R_c = dL/dH_{c+1}, the gradient at chunk c's end
    dx_ptr,       # [b, l, h, p] fp32 out: dL/dx through the scan (Δ dL/dx~)
    ddt_ptr,      # [b, l, h] fp32 out: dL/dΔ through x~ = Δ x only
    da_ptr,       # [b, l, h] fp32 out: dL/da, a = Δ A, without the state-passing term (torch adds it)
    dB_ptr,       # [b, l, h, n] fp32 out: dL/dB per head (torch sums a group's heads)
    dC_ptr,       # [b, l, h, n] fp32 out: dL/dC per head
    seqlen, chunk, nheads, headdim, dstate, nchunks, heads_per_group,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_B_b, stride_B_l, stride_B_g, stride_B_n,
    stride_C_b, stride_C_l, stride_C_g, stride_C_n,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Per chunk, with x~ = Δ x, W = L * C B^T, V = L * (dy x~^T), R = dL/dH_{c+1}:
        dx~ = W^T dy + decay_to_end * (B R^T)        (y_t = sum_s W[t,s] x~_s;  S_c = sum_s decay x~_s B_s^T)
        dB  = V^T C  + decay_to_end * (x~ R)
        dC  = V B    + exp(cumsum a) * (dy H_c)       (y_t += exp(cumsum a)_t H_c C_t)
        da_k = sum_{s < k <= t} W[t,s] dyx[t,s]       (the L[t,s] whose segment contains k)
             + sum_{s < k} N_s + sum_{t >= k} O_t     (the decays to the chunk end / from its start)
    Each da term is a sum of the crossing terms themselves, never a difference of cumsums."""
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_b = (pid_bh // nheads).to(tl.int64)
    pid_h = pid_bh % nheads
    pid_g = pid_h // heads_per_group
    t0 = pid_c * chunk
    offs_t = tl.arange(0, BLOCK_T)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_t = (offs_t < chunk) & (t0 + offs_t < seqlen)
    mask_p = offs_p < headdim
    mask_n = offs_n < dstate
    dt, a = _chunk_a(delta_ptr, A_ptr, pid_b, pid_h, t0, offs_t, mask_t, seqlen, nheads)
    x = _tile(x_ptr, pid_b, pid_h, t0, offs_t, mask_t, offs_p, mask_p,
              stride_x_b, stride_x_l, stride_x_h, stride_x_p)                          # [BT, BP]
    xd = x * dt[:, None]                                                               # [BT, BP] x~
    Bt = _tile(B_ptr, pid_b, pid_g, t0, offs_t, mask_t, offs_n, mask_n,
               stride_B_b, stride_B_l, stride_B_g, stride_B_n)                         # [BT, BN]
    Ct = _tile(C_ptr, pid_b, pid_g, t0, offs_t, mask_t, offs_n, mask_n,
               stride_C_b, stride_C_l, stride_C_g, stride_C_n)                         # [BT, BN]
    dy = _tile(dy_ptr, pid_b, pid_h, t0, offs_t, mask_t, offs_p, mask_p,
               seqlen * nheads * headdim, nheads * headdim, headdim, 1)                # [BT, BP]
    offs, mask = _state_offsets(pid_b, pid_c, pid_h, nchunks, nheads, offs_p, offs_n, headdim, dstate)
    H = tl.load(states_ptr + offs, mask=mask, other=0.0)                               # [BP, BN]
    R = tl.load(dstates_ptr + offs, mask=mask, other=0.0)                              # [BP, BN]

    L = _segsum_exp(a, offs_t)                                                         # [BT(t), BT(s)]
    W = tl.dot(Ct, tl.trans(Bt), input_precision="ieee") * L                          # [BT, BT]
    dyx = tl.dot(dy, tl.trans(xd), input_precision="ieee")                             # [BT, BT] dy_t . x~_s
    V = dyx * L
    to_end = _decay_to_end(a)                                                          # [BT]
    from_start = tl.exp(tl.cumsum(a, axis=0))                                          # [BT]
    BR = tl.dot(Bt, tl.trans(R), input_precision="ieee")                               # [BT, BP]
    CH = tl.dot(Ct, tl.trans(H), input_precision="ieee")                               # [BT, BP]
    dxd = tl.dot(tl.trans(W), dy, input_precision="ieee") + to_end[:, None] * BR       # [BT, BP]
    dB = tl.dot(tl.trans(V), Ct, input_precision="ieee") + to_end[:, None] * tl.dot(xd, R, input_precision="ieee")
    dC = tl.dot(V, Bt, input_precision="ieee") + from_start[:, None] * tl.dot(dy, H, input_precision="ieee")

    M = W * dyx                                                                        # [BT(t), BT(s)]
    crossing = tl.cumsum(M, axis=0, reverse=True)                                      # [k, s]: sum over t >= k
    da = tl.sum(tl.where(offs_t[None, :] < offs_t[:, None], crossing, 0.0), axis=1)    # [BT]: s < k
    n_terms = to_end * tl.sum(xd * BR, axis=1)                                         # [BT] N_s
    o_terms = from_start * tl.sum(dy * CH, axis=1)                                     # [BT] O_t
    da += tl.cumsum(n_terms, axis=0) - n_terms + tl.cumsum(o_terms, axis=0, reverse=True)

    row = (pid_b * seqlen + t0 + offs_t) * nheads + pid_h                              # [BT] into [b, l, h]
    tl.store(dx_ptr + row[:, None] * headdim + offs_p[None, :], dxd * dt[:, None],
             mask=mask_t[:, None] & mask_p[None, :])
    tl.store(ddt_ptr + row, tl.sum(x * dxd, axis=1), mask=mask_t)
    tl.store(da_ptr + row, da, mask=mask_t)
    mask_tn = mask_t[:, None] & mask_n[None, :]
    tl.store(dB_ptr + row[:, None] * dstate + offs_n[None, :], dB, mask=mask_tn)
    tl.store(dC_ptr + row[:, None] * dstate + offs_n[None, :], dC, mask=mask_tn)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------
def _blocks(chunk: int, headdim: int, dstate: int) -> dict:
    """Power-of-two tiles, at least 16 per side (tl.dot's minimum)."""
    return dict(BLOCK_T=max(16, triton.next_power_of_2(chunk)), BLOCK_P=max(16, triton.next_power_of_2(headdim)),
                BLOCK_N=max(16, triton.next_power_of_2(dstate)))


def _num_warps(headdim: int, dstate: int) -> int:
    return 4 if headdim * dstate <= 64 * 64 else 8


def _forward(x, delta, A, B, C, D, z, h0, chunk, want_norm=False, want_states=False, out_dtype=None):
    """Launch the forward kernels. x [b, l, h, p]; delta [b, l, h] fp32 contiguous (Δ).
    Returns out [b, l, h, p] (out_dtype, default x's), final [b, h, p, n] fp32, the states entering
    each chunk [b, chunks, h, p, n] fp32, a's chunk sums [b, h, chunks], norm, states (or None)."""
    batch, L, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    nchunks = triton.cdiv(L, chunk)
    f32 = dict(device=x.device, dtype=torch.float32)
    blk = _blocks(chunk, headdim, dstate)
    nw = _num_warps(headdim, dstate)
    common = (L, chunk, nheads, headdim, dstate, nchunks, nheads // ngroups)
    grid = (nchunks, batch * nheads)
    states = torch.empty(batch, nchunks, nheads, headdim, dstate, **f32)
    asum = torch.empty(batch, nheads, nchunks, **f32)
    _chunk_state_kernel[grid](x, delta, A, B, states, asum, *common, *x.stride(), *B.stride(),
                              FROM_START=False, **blk, num_warps=nw)
    final = torch.empty(batch, nheads, headdim, dstate, **f32)
    size = headdim * dstate
    _state_passing_kernel[(batch * nheads, triton.cdiv(size, STATE_BLOCK))](
        states, asum, h0 if h0 is not None else final, final, nchunks, nheads, size,
        HAS_H0=h0 is not None, REVERSE=False, BLOCK=STATE_BLOCK)
    out = torch.empty(batch, L, nheads, headdim, device=x.device, dtype=out_dtype or x.dtype)
    norm = torch.empty(batch, L, nheads, **f32) if want_norm else None
    zz = z if z is not None else x
    _chunk_scan_kernel[grid](x, delta, A, B, C, states, D if D is not None else x, zz, out,
                             norm if want_norm else out, *common,
                             *x.stride(), *B.stride(), *C.stride(), *zz.stride(),
                             HAS_D=D is not None, D_PER_CHANNEL=D is not None and D.dim() == 2,
                             HAS_Z=z is not None, STORE_NORM=want_norm, **blk, num_warps=nw)
    hs = None
    if want_states:
        hs = torch.empty(batch, L, nheads, headdim, dstate, **f32)
        _chunk_states_kernel[grid](x, delta, A, B, states, hs, *common, *x.stride(), *B.stride(),
                                   BLOCK_P=blk["BLOCK_P"], BLOCK_N=blk["BLOCK_N"], num_warps=nw)
    return out, final, states, asum, norm, hs


def _backward(x, delta, A, B, C, D, z, states, asum, chunk, g_out, g_final):
    """Gradients w.r.t. (x, delta, A, B, C, D, z, h0), fp32 (module docstring lists the steps)."""
    batch, L, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    nchunks = states.shape[1]
    f32 = dict(device=x.device, dtype=torch.float32)
    blk = _blocks(chunk, headdim, dstate)
    nw = _num_warps(headdim, dstate)
    common = (L, chunk, nheads, headdim, dstate, nchunks, nheads // ngroups)
    grid = (nchunks, batch * nheads)
    g_out = g_out.float() if g_out is not None else x.new_zeros(x.shape, dtype=torch.float32)
    g_z = None
    if z is not None:   # out = y silu(z): recompute y (with D x), then the gate's two gradients
        y = torch.empty(batch, L, nheads, headdim, **f32)
        _chunk_scan_kernel[grid](x, delta, A, B, C, states, D if D is not None else x, x, y, y, *common,
                                 *x.stride(), *B.stride(), *C.stride(), *x.stride(),
                                 HAS_D=D is not None, D_PER_CHANNEL=D is not None and D.dim() == 2,
                                 HAS_Z=False, STORE_NORM=False, **blk, num_warps=nw)
        zf = z.float()
        sig = torch.sigmoid(zf)
        g_z = g_out * y * sig * (1 + zf * (1 - sig))                                  # d silu(z) / dz
        g_out = g_out * zf * sig                                                      # dL/dy
    dy = g_out.contiguous()                                                           # [b, l, h, p] fp32
    g_D = None
    if D is not None:
        g_D = (dy * x.float()).sum((0, 1))                                            # [h, p]
        g_D = g_D if D.dim() == 2 else g_D.sum(-1)
    # G_c, then the reverse state passing: dstates[c] = R_c = dL/dH_{c+1}, g_h0 = dL/dH_0
    dstates = torch.empty_like(states)
    _chunk_state_kernel[grid](dy, delta, A, C, dstates, asum, *common, *dy.stride(), *C.stride(),
                              FROM_START=True, **blk, num_warps=nw)
    g_h0 = torch.empty(batch, nheads, headdim, dstate, **f32)
    g_final = (g_final.float().contiguous() if g_final is not None
               else torch.zeros(batch, nheads, headdim, dstate, **f32))
    size = headdim * dstate
    _state_passing_kernel[(batch * nheads, triton.cdiv(size, STATE_BLOCK))](
        dstates, asum, g_final, g_h0, nchunks, nheads, size, HAS_H0=True, REVERSE=True, BLOCK=STATE_BLOCK)
    g_x = torch.empty(batch, L, nheads, headdim, **f32)
    g_dt = torch.empty(batch, L, nheads, **f32)
    g_a = torch.empty(batch, L, nheads, **f32)
    g_Bh = torch.empty(batch, L, nheads, dstate, **f32)
    g_Ch = torch.empty(batch, L, nheads, dstate, **f32)
    _chunk_bwd_kernel[grid](x, delta, A, B, C, dy, states, dstates, g_x, g_dt, g_a, g_Bh, g_Ch, *common,
                            *x.stride(), *B.stride(), *C.stride(), **blk, num_warps=nw)
    # the state-passing term: H_{c+1} = exp(sum a) H_c + S_c puts exp(sum a) <R_c, H_c> on every a_k of chunk c
    g_asum = (dstates * states).sum((-1, -2)) * asum.exp().transpose(1, 2)           # [b, chunks, h]
    g_a += g_asum.repeat_interleave(chunk, dim=1)[:, :L]
    g_delta = g_dt + g_a * A.float()
    g_A = (g_a * delta).sum((0, 1))
    if D is not None:
        g_x += dy * (D.float()[:, None] if D.dim() == 1 else D.float())
    r = nheads // ngroups
    g_B = g_Bh.view(batch, L, ngroups, r, dstate).sum(3)
    g_C = g_Ch.view(batch, L, ngroups, r, dstate).sum(3)
    return g_x, g_delta, g_A, g_B, g_C, g_D, g_z, g_h0


class _SSDTriton(torch.autograd.Function):
    """Autograd through the kernels; gradients for x, Δ, A, B, C, D, z and the initial state.

    Saves the inputs, the state entering every chunk ([b, l/T, h, p, n] fp32) and a's chunk sums;
    the backward recomputes everything else per chunk. norm and states are trace outputs: no gradient."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, z, h0, chunk, want_norm, want_states):
        out, final, states, asum, norm, hs = _forward(x, delta, A, B, C, D, z, h0, chunk, want_norm, want_states)
        ctx.chunk = chunk
        ctx.save_for_backward(x, delta, A, B, C, D, z, h0, states, asum)
        extras = [t for t in (norm, hs) if t is not None]
        ctx.mark_non_differentiable(*extras)
        return out, final, *extras

    @staticmethod
    def backward(ctx, g_out, g_final, *_):
        x, delta, A, B, C, D, z, h0, states, asum = ctx.saved_tensors
        g_x, g_delta, g_A, g_B, g_C, g_D, g_z, g_h0 = _backward(x, delta, A, B, C, D, z, states, asum,
                                                                ctx.chunk, g_out, g_final)
        cast = lambda g, t: g.to(t.dtype) if t is not None else None  # noqa: E731  grads in the inputs' dtypes
        return (cast(g_x, x), g_delta, cast(g_A, A), cast(g_B, B), cast(g_C, C), cast(g_D, D), cast(g_z, z),
                cast(g_h0, h0), None, None, None)


def mamba_chunk_scan_triton(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                            dt_softplus=False, dt_limit=DT_LIMIT_NONE, return_final_states=False,
                            return_state_norm=False, return_states=False) -> SSDResult:
    """The SSD scan on the Triton kernels; shapes and result as mamba_chunk_scan_reference."""
    check_ssd_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states)
    headdim, dstate = x.shape[3], B.shape[3]
    if headdim > MAX_HEADDIM or dstate > MAX_DSTATE:
        raise ValueError(f"headdim={headdim} / dstate={dstate} exceed the triton SSD kernels' limits "
                         f"({MAX_HEADDIM} / {MAX_DSTATE}); use backend='torch'")
    if compute_dtype(x) != torch.float32:
        raise ValueError(f"the triton SSD kernels compute in fp32; x is {x.dtype}: use backend='torch' "
                         "(or 'reference') for float64")
    if x.device.type != "cuda" and not INTERPRETING:
        raise RuntimeError("the triton SSD scan needs CUDA tensors; on CPU set TRITON_INTERPRET=1 before "
                           "importing kernels (slow, for tests) or use backend='torch'")
    # Δ in torch, so autograd chains bias, softplus and clamp (a [b, l, h] pass); small params contiguous
    delta = discretize_dt(dt, dt_bias, dt_softplus, dt_limit).contiguous()           # [b, l, h] fp32
    A = A.contiguous()
    D = D.contiguous() if D is not None else None
    h0 = initial_states.float().contiguous() if initial_states is not None else None
    chunk = min(chunk_size, MAX_CHUNK, x.shape[1])
    out, final, *extras = _SSDTriton.apply(x, delta, A, B, C, D, z, h0, chunk, return_state_norm, return_states)
    norm = extras.pop(0) if return_state_norm else None
    states = extras.pop(0) if return_states else None
    return SSDResult(out, final if return_final_states else None, norm, states)
