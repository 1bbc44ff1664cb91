"""The selective scan as Triton kernels: a chunked forward that also emits the trace outputs, and a
hand-written backward, wired into `torch.autograd.Function`.

Same signature and result as `scan_reference.selective_scan_reference` (the spec, and the torch
reference of this file): u, delta, z: [B, D, L]; A: [D, N]; B, C: [B, N, L]; D, delta_bias: [D];
initial_state [B, D, N]. Inputs may be fp32/fp16/bf16 and any strides; every value is upcast to fp32
right after its load, the state is accumulated in fp32, `out` is stored in u's dtype.

Work split (docs/triton-kernel.md has the longer version):
- grid = (batch, cdiv(D, BLOCK_D)); one program owns BLOCK_D channels of one sequence for all L
  steps and keeps their state h [BLOCK_N, BLOCK_D] in registers. N is padded to a power of two.
- Time is cut into chunks of BLOCK_L steps. A chunk's u, delta, z, B, C are loaded as 2-D tiles,
  its decays a = exp(delta*A) and inputs x = delta*u*B form time-major [BLOCK_L, BLOCK_N, BLOCK_D]
  tiles, and `tl.associative_scan` along axis 0 solves h_t = a_t h_{t-1} + x_t inside the chunk.
  The state entering the chunk is folded into its first step (x_0 += a_0 h), so the scan's output
  *is* h. Padded steps (past L) get delta = 0, i.e. decay 1 and input 0, so the chunk's last step
  holds the true state to carry on.
- Time-major because Triton's default layout gives the lanes to the last axis: a thread then holds
  a whole chunk of one channel, so the scan runs inside the thread (no shuffles) and picking the
  first / last step is a fixed register (layout read off the sm_90 TTGIR, see the docs).
- The next chunk's tiles are loaded before the current chunk is scanned (register double
  buffering), so their HBM latency hides behind the arithmetic instead of stalling every chunk.

Memory traffic of the forward (bench/gpu_scan.py's roofline counts this, B and C once): read u,
delta, z once (B*D*L each), B and C once per channel block (B*N*L each, mostly L2 hits), A, D, bias
once; write out (B*D*L), the optional state norm (B*D*L fp32), states (B*D*L*N fp32), and for
training the state entering every chunk (B*D*L*N/BLOCK_L fp32, N/BLOCK_L times the size of an fp32 u).

Backward (per program, chunks in reverse order, same grid): the forward saved the state entering
every chunk, so each chunk recomputes its h with the same scan, then runs the adjoint recurrence
lambda_t = g_y_t C_t + exp(delta_{t+1} A) lambda_{t+1} as a *reverse* associative scan. The decay
at t+1 comes from reloading delta shifted by one step (an L1/L2 hit) because Triton cannot shift a
register tile. a_t h_{t-1} is obtained as h_t - x_t, so no shifted state and no division by a decay
(which underflows) is needed. dB and dC sum over channels, i.e. over programs: they are added with
`tl.atomic_add` into fp32 buffers (like mamba_ssm's kernel does), so their low bits depend on the
order of the adds; dA, dD and d(delta_bias) are per-batch partial sums added up by torch.

CPU: under TRITON_INTERPRET=1 (set before this module is imported) the kernels run in Triton's
numpy interpreter. Its `tl.associative_scan` with a custom combine calls the combine once per
element in Python (~50 us each), so there the same recurrence is computed by a log-step
(Hillis-Steele) scan built from `tl.gather` -- 30x faster in the interpreter, more arithmetic on a
GPU. NATIVE_SCAN selects the path; tests run both and check they agree.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .scan_reference import ScanResult, check_scan_inputs

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
# exp(x) = exp2(x * log2 e): A is pre-scaled once per program, saving a multiply per element
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


# --------------------------------------------------------------------------------------------------
# jit helpers. Tiles are time-major, [BLOCK_L, BLOCK_N, BLOCK_D]: Triton's default layout hands the
# lanes to the last axis (channels) and the warps to the next (states), so a thread holds a whole
# chunk of one channel's time steps: the scan along axis 0 runs inside the thread, the picks of the
# chunk's first / last step are constant register selects, and sums over N are mostly in-thread.
# --------------------------------------------------------------------------------------------------
@triton.jit
def _first_order_combine(a_left, x_left, a_right, x_right):
    """Compose two steps of h -> a h + x: first `left`, then `right` (the Triton tests'
    linear_recurrence). With reverse=True, `left` is the later step: lambda_t = x_t + a_t lambda_{t+1}."""
    return a_left * a_right, x_left * a_right + x_right


@triton.jit
def _linear_scan(a, x, offs_l, BLOCK_L: tl.constexpr, REVERSE: tl.constexpr, NATIVE_SCAN: tl.constexpr):
    """Solve h_t = a_t h_{t-1} + x_t along axis 0 of [BL, BN, BD] tiles, starting from h = 0
    (REVERSE: h_t = a_t h_{t+1} + x_t from the last step). offs_l: tl.arange(0, BLOCK_L)."""
    if NATIVE_SCAN:
        _, h = tl.associative_scan((a, x), 0, _first_order_combine, reverse=REVERSE)
    else:
        # Hillis-Steele: after round s, h_t covers 2^(s+1) steps ending at t and a_t is their decay
        h = x
        for s in tl.static_range(0, 16):
            if (1 << s) < BLOCK_L:
                if REVERSE:
                    src = tl.minimum(offs_l + (1 << s), BLOCK_L - 1)
                    valid = (offs_l + (1 << s)) < BLOCK_L
                else:
                    src = tl.maximum(offs_l - (1 << s), 0)
                    valid = offs_l >= (1 << s)
                idx = tl.broadcast_to(src[:, None, None], a.shape)
                h_other = tl.gather(h, idx, 0)
                a_other = tl.gather(a, idx, 0)
                h = tl.where(valid[:, None, None], h + a * h_other, h)
                a = tl.where(valid[:, None, None], a * a_other, a)
    return h


@triton.jit
def _softplus(x):
    """softplus with torch's threshold (identity above 20). log(1 + e) rounds e < 6e-8 away, so
    small e use log1p's series instead (Triton has no log1p that the interpreter also runs)."""
    e = tl.exp(tl.minimum(x, 20.0))
    sp = tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
    return tl.where(x > 20.0, x, sp)


@triton.jit
def _load_tile(ptr, offs_t, offs_col, mask, stride_b, stride_col, stride_l, pid_b):
    """A time-major [BL, cols] tile of a [B, cols, L] tensor (u, delta, z: cols = D; B, C: cols = N),
    upcast to fp32 right after the load (the interpreter would otherwise do bf16 arithmetic on raw
    bits), 0 where masked. Offsets are int64: t * stride_l passes 2^31 at L = 2^20 in a [B, L, 2D]
    layout (the model's z)."""
    ptrs = (ptr + pid_b * stride_b + offs_t[:, None].to(tl.int64) * stride_l
            + offs_col[None, :].to(tl.int64) * stride_col)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _step_size(delta_ptr, bias, offs_t, offs_d, mask, stride_b, stride_d, stride_l, pid_b,
               HAS_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr):
    """delta tile [BL, BD] -> fp32 step size with bias and softplus; 0 where masked (decay 1, no
    input: padded steps leave the state alone). Also returns the pre-softplus value for the backward."""
    pre = _load_tile(delta_ptr, offs_t, offs_d, mask, stride_b, stride_d, stride_l, pid_b)
    if HAS_BIAS:
        pre = pre + bias[None, :]
    dt = _softplus(pre) if DELTA_SOFTPLUS else pre
    return tl.where(mask, dt, 0.0), pre


# --------------------------------------------------------------------------------------------------
# forward kernel
# --------------------------------------------------------------------------------------------------
@triton.jit
def _channel_block(pid_b, pid_d, A_ptr, delta_bias_ptr, D_ptr, dim, n_state,
                   HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """What both passes load and index first for their block of channels: offsets and masks,
    A [BN, BD] (fp32), the Δ bias and D [BD], and the [BN, BD] offsets into a [B, D, N] state.
    Padded channels / states get A = 0 (decay 1) and B = C = 0, so their state stays exactly 0."""
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)   # [BD]
    offs_n = tl.arange(0, BLOCK_N)                     # [BN]
    offs_l = tl.arange(0, BLOCK_L)                     # [BL]
    mask_d = offs_d < dim
    mask_n = offs_n < n_state
    mask_nd = mask_n[:, None] & mask_d[None, :]        # [BN, BD]
    A = tl.load(A_ptr + offs_d[None, :] * n_state + offs_n[:, None], mask=mask_nd, other=0.0)
    A = A.to(tl.float32)                               # [BN, BD]
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(delta_bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    d_skip = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        d_skip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    nd_offs = (pid_b * dim + offs_d[None, :]) * n_state + offs_n[:, None]   # [BN, BD] into [B, D, N]
    return offs_d, offs_n, offs_l, mask_d, mask_n, mask_nd, A, bias, d_skip, nd_offs


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr,            # [B, D, L] input u, any float dtype, strides below
    delta_ptr,        # [B, D, L] raw step size; bias and softplus are applied here
    A_ptr,            # [D, N] contiguous, real and normally negative
    B_ptr,            # [B, N, L] input-dependent B
    C_ptr,            # [B, N, L] input-dependent C
    D_ptr,            # [D] contiguous skip weight (read only if HAS_D)
    z_ptr,            # [B, D, L] gate (read only if HAS_Z)
    delta_bias_ptr,   # [D] contiguous (read only if HAS_BIAS)
    h0_ptr,           # [B, D, N] contiguous fp32 initial state (read only if HAS_H0)
    out_ptr,          # [B, D, L] contiguous, dtype of u: (<C, h> + D u) * silu(z)
    last_ptr,         # [B, D, N] contiguous fp32: the state after the last step
    norm_ptr,         # [B, D, L] contiguous fp32: ||h_t[d, :]||_2 (written only if STORE_NORM)
    states_ptr,       # [B, D, L, N] contiguous fp32: every h_t (written only if STORE_STATES)
    chunk_ptr,        # [B, D, n_chunks, N] contiguous fp32: state entering each chunk (if STORE_CHUNKS)
    dim, n_state, seqlen,   # D, N, L
    stride_u_b, stride_u_d, stride_u_l,
    stride_delta_b, stride_delta_d, stride_delta_l,
    stride_z_b, stride_z_d, stride_z_l,
    stride_B_b, stride_B_n, stride_B_l,
    stride_C_b, stride_C_n, stride_C_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr,
    STORE_NORM: tl.constexpr, STORE_STATES: tl.constexpr, STORE_CHUNKS: tl.constexpr,
    BLOCK_D: tl.constexpr,      # channels per program
    BLOCK_N: tl.constexpr,      # state size padded to a power of two
    BLOCK_L: tl.constexpr,      # time steps per chunk
    NATIVE_SCAN: tl.constexpr,  # tl.associative_scan (GPU) or the gather scan (interpreter)
):
    pid_b = tl.program_id(0).to(tl.int64)   # int64: every offset below is then 64-bit (B*D*L passes 2^31)
    pid_d = tl.program_id(1)
    offs_d, offs_n, offs_l, mask_d, mask_n, mask_nd, A, bias, d_skip, nd_offs = _channel_block(
        pid_b, pid_d, A_ptr, delta_bias_ptr, D_ptr, dim, n_state, HAS_BIAS, HAS_D, BLOCK_D, BLOCK_N, BLOCK_L)
    A2 = A * LOG2E                                     # [BN, BD] A * log2(e): exp2 below
    is_first = (offs_l == 0)[:, None, None]            # [BL, 1, 1]
    is_last = (offs_l == BLOCK_L - 1)[:, None, None]
    h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)                      # [BN, BD]
    if HAS_H0:
        h = tl.load(h0_ptr + nd_offs, mask=mask_nd, other=0.0).to(tl.float32)

    # prologue of the double buffer: chunk 0's tiles
    offs_t = offs_l
    mask_ld = (offs_t < seqlen)[:, None] & mask_d[None, :]
    mask_ln = (offs_t < seqlen)[:, None] & mask_n[None, :]
    u = _load_tile(u_ptr, offs_t, offs_d, mask_ld, stride_u_b, stride_u_d, stride_u_l, pid_b)       # [BL, BD]
    dt, _ = _step_size(delta_ptr, bias, offs_t, offs_d, mask_ld, stride_delta_b, stride_delta_d,
                       stride_delta_l, pid_b, HAS_BIAS, DELTA_SOFTPLUS)                           # [BL, BD]
    zg = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    if HAS_Z:
        zg = _load_tile(z_ptr, offs_t, offs_d, mask_ld, stride_z_b, stride_z_d, stride_z_l, pid_b)
    Bt = _load_tile(B_ptr, offs_t, offs_n, mask_ln, stride_B_b, stride_B_n, stride_B_l, pid_b)      # [BL, BN]
    Ct = _load_tile(C_ptr, offs_t, offs_n, mask_ln, stride_C_b, stride_C_n, stride_C_l, pid_b)      # [BL, BN]

    for start in range(0, seqlen, BLOCK_L):
        # issue the next chunk's loads first: they are in flight while this chunk is scanned
        nxt_t = start + BLOCK_L + offs_l
        nxt_ld = (nxt_t < seqlen)[:, None] & mask_d[None, :]
        nxt_ln = (nxt_t < seqlen)[:, None] & mask_n[None, :]
        u_n = _load_tile(u_ptr, nxt_t, offs_d, nxt_ld, stride_u_b, stride_u_d, stride_u_l, pid_b)
        dt_n, _ = _step_size(delta_ptr, bias, nxt_t, offs_d, nxt_ld, stride_delta_b, stride_delta_d,
                             stride_delta_l, pid_b, HAS_BIAS, DELTA_SOFTPLUS)
        z_n = zg
        if HAS_Z:
            z_n = _load_tile(z_ptr, nxt_t, offs_d, nxt_ld, stride_z_b, stride_z_d, stride_z_l, pid_b)
        B_n = _load_tile(B_ptr, nxt_t, offs_n, nxt_ln, stride_B_b, stride_B_n, stride_B_l, pid_b)
        C_n = _load_tile(C_ptr, nxt_t, offs_n, nxt_ln, stride_C_b, stride_C_n, stride_C_l, pid_b)

        offs_t = start + offs_l
        mask_ld = (offs_t < seqlen)[:, None] & mask_d[None, :]
        if STORE_CHUNKS:   # the backward restarts each chunk from here
            n_chunks = tl.cdiv(seqlen, BLOCK_L)
            chunk_offs = ((pid_b * dim + offs_d[None, :]) * n_chunks + start // BLOCK_L) * n_state + offs_n[:, None]
            tl.store(chunk_ptr + chunk_offs, h, mask=mask_nd)

        a = tl.exp2(dt[:, None, :] * A2[None, :, :])                  # [BL, BN, BD] exp(delta A)
        x = (dt * u)[:, None, :] * Bt[:, :, None]                     # [BL, BN, BD] delta u B
        x = tl.where(is_first, x + a * h[None, :, :], x)              # the carried state enters at step 0
        hs = _linear_scan(a, x, offs_l, BLOCK_L, False, NATIVE_SCAN)  # [BL, BN, BD] h_t

        y = tl.sum(hs * Ct[:, :, None], axis=1)                       # [BL, BD] <C_t, h_t>
        if HAS_D:
            y = y + u * d_skip[None, :]
        if HAS_Z:
            y = y * zg * tl.sigmoid(zg)                               # * silu(z)
        ld_offs = (pid_b * dim + offs_d[None, :]) * seqlen + offs_t[:, None]    # [BL, BD] into [B, D, L]
        tl.store(out_ptr + ld_offs, y.to(out_ptr.dtype.element_ty), mask=mask_ld)
        if STORE_NORM:
            tl.store(norm_ptr + ld_offs, tl.sqrt(tl.sum(hs * hs, axis=1)), mask=mask_ld)
        if STORE_STATES:
            st_offs = ld_offs[:, None, :] * n_state + offs_n[None, :, None]     # [BL, BN, BD] into [B, D, L, N]
            tl.store(states_ptr + st_offs, hs, mask=mask_ld[:, None, :] & mask_n[None, :, None])
        h = tl.sum(tl.where(is_last, hs, 0.0), axis=0)                # [BN, BD] state after the chunk

        u, dt, zg, Bt, Ct = u_n, dt_n, z_n, B_n, C_n

    tl.store(last_ptr + nd_offs, h, mask=mask_nd)


# --------------------------------------------------------------------------------------------------
# backward kernel
# --------------------------------------------------------------------------------------------------
@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr,   # as in the forward
    chunk_ptr,        # [B, D, n_chunks, N] fp32: state entering each chunk, saved by the forward
    g_out_ptr,        # [B, D, L] dLoss/dout, strides below (may be expanded, e.g. stride 0)
    g_last_ptr,       # [B, D, N] contiguous fp32 dLoss/d(last state)
    g_u_ptr,          # [B, D, L] contiguous, dtype of u
    g_delta_ptr,      # [B, D, L] contiguous, dtype of delta: gradient w.r.t. the *raw* delta
    g_z_ptr,          # [B, D, L] contiguous, dtype of z (written only if HAS_Z)
    g_B_ptr,          # [B, N, L] contiguous fp32, zeroed: atomically summed over channel blocks
    g_C_ptr,          # [B, N, L] contiguous fp32, zeroed: same
    g_A_ptr,          # [B, D, N] fp32: this batch row's part of dA (torch sums over B)
    g_D_ptr,          # [B, D] fp32: part of dD
    g_bias_ptr,       # [B, D] fp32: part of d(delta_bias)
    g_h0_ptr,         # [B, D, N] fp32: dLoss/d(initial state)
    dim, n_state, seqlen, n_chunks,   # D, N, L, cdiv(L, BLOCK_L)
    stride_u_b, stride_u_d, stride_u_l,
    stride_delta_b, stride_delta_d, stride_delta_l,
    stride_z_b, stride_z_d, stride_z_l,
    stride_B_b, stride_B_n, stride_B_l,
    stride_C_b, stride_C_n, stride_C_l,
    stride_g_b, stride_g_d, stride_g_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,      # must equal the forward's chunk length (chunk_ptr's granularity)
    NATIVE_SCAN: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d, offs_n, offs_l, mask_d, mask_n, mask_nd, A, bias, d_skip, nd_offs = _channel_block(
        pid_b, pid_d, A_ptr, delta_bias_ptr, D_ptr, dim, n_state, HAS_BIAS, HAS_D, BLOCK_D, BLOCK_N, BLOCK_L)
    A2 = A * LOG2E                                                    # [BN, BD]
    is_first = (offs_l == 0)[:, None, None]
    is_last = (offs_l == BLOCK_L - 1)[:, None, None]

    # mu = exp(delta_s A) lambda_s at the first step s of the chunk processed last, i.e. dLoss/dh
    # at the step before it; before any chunk it is the gradient of the returned last state
    mu = tl.load(g_last_ptr + nd_offs, mask=mask_nd, other=0.0)      # [BN, BD]
    g_A = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    g_D = tl.zeros([BLOCK_D], dtype=tl.float32)
    g_bias = tl.zeros([BLOCK_D], dtype=tl.float32)

    for i in range(0, n_chunks):
        chunk = n_chunks - 1 - i                  # reverse time
        offs_t = chunk * BLOCK_L + offs_l
        mask_l = offs_t < seqlen
        mask_ld = mask_l[:, None] & mask_d[None, :]
        mask_ln = mask_l[:, None] & mask_n[None, :]
        u = _load_tile(u_ptr, offs_t, offs_d, mask_ld, stride_u_b, stride_u_d, stride_u_l, pid_b)   # [BL, BD]
        dt, pre = _step_size(delta_ptr, bias, offs_t, offs_d, mask_ld, stride_delta_b, stride_delta_d,
                             stride_delta_l, pid_b, HAS_BIAS, DELTA_SOFTPLUS)
        # delta one step later (0 past L, i.e. decay 1): lambda_t needs exp(delta_{t+1} A)
        mask_next = (offs_t + 1 < seqlen)[:, None] & mask_d[None, :]
        dt_next, _ = _step_size(delta_ptr, bias, offs_t + 1, offs_d, mask_next, stride_delta_b,
                                stride_delta_d, stride_delta_l, pid_b, HAS_BIAS, DELTA_SOFTPLUS)
        g_out = _load_tile(g_out_ptr, offs_t, offs_d, mask_ld, stride_g_b, stride_g_d, stride_g_l, pid_b)
        Bt = _load_tile(B_ptr, offs_t, offs_n, mask_ln, stride_B_b, stride_B_n, stride_B_l, pid_b)  # [BL, BN]
        Ct = _load_tile(C_ptr, offs_t, offs_n, mask_ln, stride_C_b, stride_C_n, stride_C_l, pid_b)  # [BL, BN]
        chunk_offs = ((pid_b * dim + offs_d[None, :]) * n_chunks + chunk) * n_state + offs_n[:, None]
        h_start = tl.load(chunk_ptr + chunk_offs, mask=mask_nd, other=0.0)  # [BN, BD]

        # recompute the chunk's states exactly as the forward did
        a = tl.exp2(dt[:, None, :] * A2[None, :, :])                  # [BL, BN, BD]
        x = (dt * u)[:, None, :] * Bt[:, :, None]                     # [BL, BN, BD]
        hs = _linear_scan(a, tl.where(is_first, x + a * h_start[None, :, :], x), offs_l, BLOCK_L,
                          False, NATIVE_SCAN)                         # [BL, BN, BD]

        # gate and skip: out = y_pre * silu(z), y_pre = <C, h> + D u
        g_y = g_out
        ld_offs = (pid_b * dim + offs_d[None, :]) * seqlen + offs_t[:, None]    # [BL, BD]
        if HAS_Z:
            zg = _load_tile(z_ptr, offs_t, offs_d, mask_ld, stride_z_b, stride_z_d, stride_z_l, pid_b)
            y_pre = tl.sum(hs * Ct[:, :, None], axis=1) + u * d_skip[None, :]   # [BL, BD]
            sz = tl.sigmoid(zg)
            g_z = g_out * y_pre * sz * (1.0 + zg * (1.0 - sz))        # d silu(z)/dz = s (1 + z (1 - s))
            tl.store(g_z_ptr + ld_offs, g_z.to(g_z_ptr.dtype.element_ty), mask=mask_ld)
            g_y = g_out * zg * sz
        g_D += tl.sum(g_y * u, axis=0)

        # adjoint: lambda_t = g_y_t C_t + exp(delta_{t+1} A) lambda_{t+1}; the later chunks enter as
        # mu at the last step (whose own decay multiplies nothing in a reverse scan)
        a_next = tl.exp2(dt_next[:, None, :] * A2[None, :, :])        # [BL, BN, BD]
        g_h = g_y[:, None, :] * Ct[:, :, None]                        # [BL, BN, BD] dLoss/dh_t via y_t
        lam = _linear_scan(a_next, tl.where(is_last, g_h + mu[None, :, :], g_h), offs_l, BLOCK_L,
                           True, NATIVE_SCAN)                         # [BL, BN, BD]
        mu = tl.sum(tl.where(is_first, a * lam, 0.0), axis=0)        # [BN, BD]

        # dC_t[n] = sum_d g_y h; dB_t[n] = sum_d lambda delta u -- sums over channels, across programs
        ln_offs = (pid_b * n_state + offs_n[None, :]) * seqlen + offs_t[:, None]  # [BL, BN] into [B, N, L]
        tl.atomic_add(g_C_ptr + ln_offs, tl.sum(g_y[:, None, :] * hs, axis=2), mask=mask_ln)
        tl.atomic_add(g_B_ptr + ln_offs, tl.sum(lam * (dt * u)[:, None, :], axis=2), mask=mask_ln)

        # dLoss/d(delta A) = lambda_t a_t h_{t-1} = lambda_t (h_t - x_t): no shifted state needed
        lam_dA = lam * (hs - x)                                       # [BL, BN, BD]
        g_A += tl.sum(lam_dA * dt[:, None, :], axis=0)
        lam_B = tl.sum(lam * Bt[:, :, None], axis=1)                  # [BL, BD]
        g_dt = tl.sum(lam_dA * A[None, :, :], axis=1) + lam_B * u     # [BL, BD] w.r.t. delta after softplus
        g_u = lam_B * dt + g_y * d_skip[None, :]
        if DELTA_SOFTPLUS:
            g_dt = g_dt * tl.sigmoid(pre)   # softplus' = sigmoid; past torch's threshold of 20 it is 1.0 in fp32 too
        g_dt = tl.where(mask_ld, g_dt, 0.0)
        g_bias += tl.sum(g_dt, axis=0)
        tl.store(g_delta_ptr + ld_offs, g_dt.to(g_delta_ptr.dtype.element_ty), mask=mask_ld)
        tl.store(g_u_ptr + ld_offs, g_u.to(g_u_ptr.dtype.element_ty), mask=mask_ld)

    tl.store(g_A_ptr + nd_offs, g_A, mask=mask_nd)
    tl.store(g_h0_ptr + nd_offs, mu, mask=mask_nd)
    tl.store(g_D_ptr + pid_b * dim + offs_d, g_D, mask=mask_d)
    tl.store(g_bias_ptr + pid_b * dim + offs_d, g_bias, mask=mask_d)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------
# Block sizes. The layout (see the jit helpers) puts BLOCK_D channels on the lanes (at most a warp's
# 32) and splits N over the warps, so num_warps = BLOCK_D * BLOCK_N / 128 leaves every thread 4
# states of one channel for BLOCK_L steps. Chosen from ptxas on sm_90 without a GPU (registers,
# instructions in the chunk loop), not yet from timings: `python -m bench.gpu_scan --sweep` measures.
# forward at (32, 16, 8) and 4 warps: 128 registers, no spills, ~20 SASS instructions per h element
FWD_ELEMS_PER_THREAD = 32   # [BL, BN, BD] elements of one live tile per thread
BWD_ELEMS_PER_THREAD = 16   # the backward keeps about twice the tiles alive: 227 registers at BL=4
MAX_BLOCK_D = 32
MAX_N = 256                 # [BL, BN, BD] tiles with BN > 256 would leave BLOCK_D < 16 and spill
# In the interpreter the cost is per op, not per element: large tiles keep the number of programs
# and chunks small, and 32-step chunks still put chunk boundaries inside small test inputs.
BLOCK_L_INTERPRET = 32
BLOCK_D_INTERPRET = 32


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def launch_config(batch: int, dim: int, n: int, device: torch.device, backward: bool = False,
                  block_d: Optional[int] = None, block_l: Optional[int] = None,
                  num_warps: Optional[int] = None) -> dict:
    """BLOCK_D / BLOCK_N / BLOCK_L / num_warps for a problem; the arguments override the heuristic."""
    block_n = triton.next_power_of_2(n)
    if INTERPRETING:
        bd = block_d or min(BLOCK_D_INTERPRET, triton.next_power_of_2(dim))
        return dict(BLOCK_D=bd, BLOCK_N=block_n, BLOCK_L=block_l or BLOCK_L_INTERPRET, num_warps=num_warps or 4)
    bd = block_d or min(MAX_BLOCK_D, triton.next_power_of_2(dim), max(1, 4096 // block_n))
    if block_d is None:
        # a few warps per SM cannot hide HBM latency: narrower channel blocks, more programs
        while bd > 8 and batch * triton.cdiv(dim, bd) < 2 * _sm_count(device):
            bd //= 2
    nw = num_warps or min(8, max(1, bd * block_n // 128))
    per_thread = BWD_ELEMS_PER_THREAD if backward else FWD_ELEMS_PER_THREAD
    bl = block_l or min(64, max(2, per_thread * 32 * nw // (bd * block_n)))
    return dict(BLOCK_D=bd, BLOCK_N=block_n, BLOCK_L=bl, num_warps=nw)


def _forward(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, want_norm, want_states,
             save_chunks, block_d=None, block_l=None, num_warps=None, native_scan=None):
    """Launch the forward kernel. Returns out [B, D, L] (u's dtype), last [B, D, N] fp32, norm
    [B, D, L] fp32 or None, states [B, D, L, N] fp32 or None, chunk states [B, D, C, N] or None."""
    batch, dim, L = u.shape
    N = A.shape[1]
    cfg = launch_config(batch, dim, N, u.device, backward=save_chunks, block_d=block_d, block_l=block_l,
                        num_warps=num_warps)
    f32 = dict(device=u.device, dtype=torch.float32)
    out = torch.empty(batch, dim, L, device=u.device, dtype=u.dtype)
    last = torch.empty(batch, dim, N, **f32)
    norm = torch.empty(batch, dim, L, **f32) if want_norm else None
    states = torch.empty(batch, dim, L, N, **f32) if want_states else None
    n_chunks = triton.cdiv(L, cfg["BLOCK_L"])
    chunks = torch.empty(batch, dim, n_chunks, N, **f32) if save_chunks else None
    dummy = out   # stands in for absent optional tensors; the constexpr flags keep it unread
    zz = z if z is not None else u
    grid = (batch, triton.cdiv(dim, cfg["BLOCK_D"]))
    _selective_scan_fwd_kernel[grid](
        u, delta, A, B, C,
        D if D is not None else dummy, zz, delta_bias if delta_bias is not None else dummy,
        h0 if h0 is not None else dummy,
        out, last, norm if want_norm else dummy, states if want_states else dummy,
        chunks if save_chunks else dummy,
        dim, N, L,
        *u.stride(), *delta.stride(), *zz.stride(), *B.stride(), *C.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        HAS_H0=h0 is not None, DELTA_SOFTPLUS=bool(delta_softplus),
        STORE_NORM=want_norm, STORE_STATES=want_states, STORE_CHUNKS=save_chunks,
        BLOCK_D=cfg["BLOCK_D"], BLOCK_N=cfg["BLOCK_N"], BLOCK_L=cfg["BLOCK_L"],
        NATIVE_SCAN=(not INTERPRETING) if native_scan is None else native_scan,
        num_warps=cfg["num_warps"],
    )
    return out, last, norm, states, chunks


def _backward(u, delta, A, B, C, D, z, delta_bias, chunks, delta_softplus, g_out, g_last,
              block_l, block_d=None, native_scan=None):
    """Launch the backward kernel; returns fp32 (or input-dtype) gradients, see _TritonScan."""
    batch, dim, L = u.shape
    N = A.shape[1]
    cfg = launch_config(batch, dim, N, u.device, backward=True, block_d=block_d, block_l=block_l)
    f32 = dict(device=u.device, dtype=torch.float32)
    g_u = torch.empty(batch, dim, L, device=u.device, dtype=u.dtype)
    g_delta = torch.empty(batch, dim, L, device=u.device, dtype=delta.dtype)
    g_z = torch.empty(batch, dim, L, device=u.device, dtype=z.dtype) if z is not None else None
    g_B = torch.zeros(batch, N, L, **f32)
    g_C = torch.zeros(batch, N, L, **f32)
    g_A = torch.empty(batch, dim, N, **f32)
    g_D = torch.empty(batch, dim, **f32)
    g_bias = torch.empty(batch, dim, **f32)
    g_h0 = torch.empty(batch, dim, N, **f32)
    zz = z if z is not None else u
    grid = (batch, triton.cdiv(dim, cfg["BLOCK_D"]))
    _selective_scan_bwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else u, zz, delta_bias if delta_bias is not None else u,
        chunks, g_out, g_last.float().contiguous(),
        g_u, g_delta, g_z if g_z is not None else g_u, g_B, g_C, g_A, g_D, g_bias, g_h0,
        dim, N, L, chunks.shape[2],
        *u.stride(), *delta.stride(), *zz.stride(), *B.stride(), *C.stride(), *g_out.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=bool(delta_softplus),
        BLOCK_D=cfg["BLOCK_D"], BLOCK_N=cfg["BLOCK_N"], BLOCK_L=block_l,
        NATIVE_SCAN=(not INTERPRETING) if native_scan is None else native_scan,
        num_warps=cfg["num_warps"],
    )
    return g_u, g_delta, g_z, g_B, g_C, g_A.sum(0), g_D.sum(0), g_bias.sum(0), g_h0


class _TritonScan(torch.autograd.Function):
    """Autograd through the two kernels; gradients for u, delta, A, B, C, D, z, delta_bias, h0.

    The forward saves only its inputs and the state entering every chunk (B*D*N*L/BLOCK_L fp32),
    the backward recomputes each chunk's states from there."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus):
        batch, dim, _ = u.shape
        block_l = launch_config(batch, dim, A.shape[1], u.device, backward=True)["BLOCK_L"]
        out, last, _, _, chunks = _forward(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus,
                                           False, False, True, block_l=block_l)
        ctx.delta_softplus = delta_softplus
        ctx.block_l = block_l
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0, chunks)
        return out, last

    @staticmethod
    def backward(ctx, g_out, g_last):
        u, delta, A, B, C, D, z, delta_bias, h0, chunks = ctx.saved_tensors
        g_u, g_delta, g_z, g_B, g_C, g_A, g_D, g_bias, g_h0 = _backward(
            u, delta, A, B, C, D, z, delta_bias, chunks, ctx.delta_softplus, g_out, g_last, ctx.block_l)
        cast = lambda g, t: g.to(t.dtype) if t is not None else None  # noqa: E731  grads in the inputs' dtypes
        return (g_u, g_delta, cast(g_A, A), cast(g_B, B), cast(g_C, C), cast(g_D, D), g_z,
                cast(g_bias, delta_bias), cast(g_h0, h0), None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, initial_state=None, return_state_norm=False,
                          return_states=False) -> ScanResult:
    """The selective scan on the Triton kernels. Shapes and result as selective_scan_reference."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                   initial_state=initial_state)
    for name, t in tensors.items():
        if t is not None and t.device != u.device:
            raise ValueError(f"{name} is on {t.device} but u is on {u.device}")
    if A.shape[1] > MAX_N:
        raise ValueError(f"state size N={A.shape[1]} is above the triton kernel's limit of {MAX_N}; "
                         "use backend='torch'")
    if u.device.type != "cuda" and not INTERPRETING:
        raise RuntimeError("the triton scan needs CUDA tensors; on CPU set TRITON_INTERPRET=1 before "
                           "importing kernels (slow, for tests) or use backend='torch'")
    # small parameters: contiguous so the kernels index them without strides (no copy if already so)
    A = A.contiguous()
    D = D.contiguous() if D is not None else None
    delta_bias = delta_bias.contiguous() if delta_bias is not None else None
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors.values())
    if needs_grad and (return_state_norm or return_states):
        raise ValueError("return_state_norm / return_states are trace outputs and carry no gradient; "
                         "call under torch.no_grad()")
    if needs_grad:
        out, last = _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus)
        return ScanResult(out, last if return_last_state else None, None, None)
    out, last, norm, states, _ = _forward(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus,
                                          return_state_norm, return_states, False)
    return ScanResult(out, last if return_last_state else None, norm, states)
