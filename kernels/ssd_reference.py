"""The Mamba-2 scan (SSD), written as the plain sequential recurrence: the spec for every SSD backend.

Mamba-2 (Dao & Gu 2024, "Transformers are SSMs", §3-§6) restricts Mamba-1's A to a scalar per head,
which makes the scan a structured (semiseparable) matrix multiply that chunks into matmuls
(ssd_torch.py). The recurrence it computes is this file. Names and axis order mirror mamba_ssm's
`mamba_chunk_scan_combined` (mamba_ssm/ops/triton/ssd_combined.py): time-major, heads before
head channels.

    x, z: [b, l, h, p]   dt: [b, l, h]   A, dt_bias: [h]   B, C: [b, l, g, n]   D: [h] or [h, p]
    initial_states, final_states: [b, h, p, n]        (h heads of p channels, g groups, n = d_state)

    Δ_t   = clamp(softplus(dt_t + dt_bias), *dt_limit)   (softplus if dt_softplus; clamp if dt_limit
                                                          is not the default (0, inf))
    h_t   = exp(Δ_t A) h_{t-1} + Δ_t x_t ⊗ B_t           per head, h_t: [p, n]; B, C of the head's
    y_t   = h_t C_t + D x_t                               group i // (h / g)
    out_t = y_t * silu(z_t)                               (when z is given)

Like mamba_ssm the math is fp32 (here: fp32 or wider, so a float64 call is an exact reference for
the gradient tests) and `out` is cast back to x's dtype; the states stay fp32.
Deviation: mamba_ssm's Triton kernels always clamp Δ to dt_limit, so with the default (0, inf) and
no softplus they zero a negative Δ; here (as in its torch `mamba_chunk_scan` and HF's slow path
when no limit is set) the default limit leaves Δ alone.
Extensions (off by default): `return_state_norm` for ||h_t||_F per head as [b, l, h] fp32 and
`return_states` for every h_t as [b, l, h, p, n] fp32. `chunk_size` is validated but unused here.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

DT_LIMIT_NONE = (0.0, float("inf"))


class SSDResult(NamedTuple):
    out: Tensor                     # [b, l, h, p], dtype of x
    final_states: Optional[Tensor]  # [b, h, p, n] fp32, when asked for
    state_norm: Optional[Tensor]    # [b, l, h] fp32, ||h_t[head]||_F over p x n, when asked for
    states: Optional[Tensor]        # [b, l, h, p, n] fp32, every h_t, when asked for


def check_ssd_inputs(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None):
    """Shape checks shared by every backend; ValueError naming the tensor, its shape and the one expected."""
    if x.dim() != 4:
        raise ValueError(f"x must be [batch, seqlen, nheads, headdim], got shape {tuple(x.shape)}")
    b, l, h, p = x.shape
    if l < 1:
        raise ValueError(f"x has seqlen 0 (shape {tuple(x.shape)}); the scan needs at least one step")
    if B.dim() != 4:
        raise ValueError(f"B must be [batch={b}, seqlen={l}, ngroups, dstate], got shape {tuple(B.shape)}")
    g, n = B.shape[2], B.shape[3]
    if g < 1 or h % g != 0:
        raise ValueError(f"nheads={h} must be a multiple of ngroups={g} (B's dim 2): each group serves "
                         f"nheads // ngroups heads")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    expect = {"dt": (dt, [(b, l, h)]), "A": (A, [(h,)]), "B": (B, [(b, l, g, n)]), "C": (C, [(b, l, g, n)]),
              "D": (D, [(h,), (h, p)]), "z": (z, [(b, l, h, p)]), "dt_bias": (dt_bias, [(h,)]),
              "initial_states": (initial_states, [(b, h, p, n)])}
    for name, (t, shapes) in expect.items():
        if t is not None and tuple(t.shape) not in shapes:
            want = " or ".join(str(s) for s in shapes)
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 inputs (as mamba_ssm), float64 for float64 (exact references)."""
    return torch.promote_types(x.dtype, torch.float32)


def discretize_dt(dt: Tensor, dt_bias: Optional[Tensor], dt_softplus: bool, dt_limit=DT_LIMIT_NONE,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """dt [b, l, h] -> Δ in `dtype`: bias added, softplus (torch's, threshold 20, as mamba_ssm's
    `dt <= 20` guard), then clamped to dt_limit unless it is the default (0, inf)."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    lo, hi = dt_limit
    if (lo, hi) != DT_LIMIT_NONE:
        dt = dt.clamp(min=lo, max=hi if math.isfinite(hi) else None)
    return dt


def expand_groups(t: Tensor, nheads: int) -> Tensor:
    """[b, l, g, n] -> [b, l, h, n]: head i reads group i // (h / g), as mamba_ssm's
    `pid_h // nheads_ngroups_ratio` (a view when g == 1)."""
    g = t.shape[2]
    return t.expand(-1, -1, nheads, -1) if g == 1 else t.repeat_interleave(nheads // g, dim=2)


def skip_and_gate(y: Tensor, x: Tensor, D: Optional[Tensor], z: Optional[Tensor]) -> Tensor:
    """y + D x, then * silu(z): mamba_ssm's chunk-scan epilogue. y, x, z: [b, l, h, p]."""
    if D is not None:
        Dv = D.to(y.dtype)
        y = y + x.to(y.dtype) * (Dv[:, None] if Dv.dim() == 1 else Dv)     # [h, 1] or [h, p]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def mamba_chunk_scan_reference(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                               initial_states=None, dt_softplus=False, dt_limit=DT_LIMIT_NONE,
                               return_final_states=False, return_state_norm=False,
                               return_states=False) -> SSDResult:
    """The recurrence of the module docstring, one step at a time. Shapes: see the module docstring."""
    check_ssd_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states)
    batch, L, nheads, headdim = x.shape
    n = B.shape[-1]
    ct = compute_dtype(x)
    delta = discretize_dt(dt, dt_bias, dt_softplus, dt_limit, ct)          # [b, l, h]
    decay = torch.exp(delta * A.to(ct))                                     # [b, l, h]
    xd = x.to(ct) * delta[..., None]                                        # [b, l, h, p]  Δ x
    Bh = expand_groups(B.to(ct), nheads)                                    # [b, l, h, n]
    Ch = expand_groups(C.to(ct), nheads)                                    # [b, l, h, n]
    h = (initial_states.to(ct) if initial_states is not None
         else x.new_zeros(batch, nheads, headdim, n, dtype=ct))            # [b, h, p, n]
    ys, norms, states = [], [], []
    for t in range(L):
        h = decay[:, t, :, None, None] * h + xd[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
        if return_state_norm:
            norms.append(torch.linalg.vector_norm(h, dim=(-2, -1)))
        if return_states:
            states.append(h)
    y = skip_and_gate(torch.stack(ys, dim=1), x, D, z)                     # [b, l, h, p]
    return SSDResult(
        out=y.to(x.dtype),
        final_states=h if return_final_states else None,
        state_norm=torch.stack(norms, dim=1) if return_state_norm else None,      # [b, l, h]
        states=torch.stack(states, dim=1) if return_states else None,             # [b, l, h, p, n]
    )
