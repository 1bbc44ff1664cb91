"""The selective scan, written as the plain sequential loop of the Mamba paper (Alg. 2, eq. 2a-2b).

This is the spec every other backend is tested against. It mirrors mamba_ssm's
`selective_scan_ref` (mamba_ssm/ops/selective_scan_interface.py): upcast to fp32, discretise with
zero-order hold for A and Euler for B, loop over time, cast back.

Axis order (repo-wide for scans): batch, channel, time -- u, delta, z: [B, D, L]; B, C: [B, N, L].

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t      h: [B, D, N]
    y_t = <C_t, h_t> + D * u_t
    out = y * silu(z)                                            (when z is given)

Extensions over mamba_ssm (all off by default): `initial_state` [B, D, N] to continue a scan,
`return_state_norm` for ||h_t[d, :]||_2 as [B, D, L], `return_states` for every h_t as [B, D, L, N].
Only input-dependent B and C of shape [B, N, L] are supported (mamba_ssm also allows [D, N] and
grouped [B, G, N, L]; Mamba-1 LMs use [B, N, L]).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class ScanResult(NamedTuple):
    out: Tensor                   # [B, D, L], dtype of u
    last_state: Optional[Tensor]  # [B, D, N] fp32, when asked for
    state_norm: Optional[Tensor]  # [B, D, L] fp32, ||h_t[d, :]||_2, when asked for
    states: Optional[Tensor]      # [B, D, L, N] fp32, every h_t, when asked for


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None):
    """Shape checks shared by every backend; raises ValueError naming the offending tensor."""
    if u.dim() != 3:
        raise ValueError(f"u must be [B, D, L], got shape {tuple(u.shape)}")
    b, d, l = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be [D={d}, N], got shape {tuple(A.shape)}")
    n = A.shape[1]
    expect = {"delta": (delta, (b, d, l)), "B": (B, (b, n, l)), "C": (C, (b, n, l)),
              "D": (D, (d,)), "z": (z, (b, d, l)), "delta_bias": (delta_bias, (d,)),
              "initial_state": (initial_state, (b, d, n))}
    for name, (t, shape) in expect.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


def discretize_delta(delta: Tensor, delta_bias: Optional[Tensor], delta_softplus: bool) -> Tensor:
    """delta [B, D, L] -> fp32 step size, bias added and softplus applied as mamba_ssm does."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if delta_softplus else delta


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False, initial_state=None, return_state_norm=False,
                             return_states=False) -> ScanResult:
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype_in = u.dtype
    u, A, B, C = u.float(), A.float(), B.float(), C.float()
    delta = discretize_delta(delta, delta_bias, delta_softplus)   # [B, D, L]
    batch, dim, L = u.shape
    N = A.shape[1]
    h = (initial_state.float().clone() if initial_state is not None
         else u.new_zeros(batch, dim, N))                           # [B, D, N]
    deltaA = torch.exp(delta.unsqueeze(-1) * A[:, None, :])         # [B, D, L, N]
    deltaB_u = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # [B, D, L, N]
    ys, norms, states = [], [], []
    for t in range(L):
        h = deltaA[:, :, t] * h + deltaB_u[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
        if return_state_norm:
            norms.append(torch.linalg.vector_norm(h, dim=-1))
        if return_states:
            states.append(h)
    y = torch.stack(ys, dim=2)                                      # [B, D, L]
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return ScanResult(
        out=y.to(dtype_in),
        last_state=h if return_last_state else None,
        state_norm=torch.stack(norms, dim=2) if return_state_norm else None,
        states=torch.stack(states, dim=2) if return_states else None,
    )
