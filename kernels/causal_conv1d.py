"""Causal depthwise conv1d with a carried state, the op in front of every Mamba scan.

    out, final_state = causal_conv1d(x, weight, bias, initial_state, activation="silu")

x [B, D, L]; weight [D, 1, K] (nn.Conv1d's) or [D, K]; bias [D]; initial_state [B, D, K-1], the K-1
inputs before x (None = zeros, the start of a sequence). Returns out [B, D, L] and the final state
[B, D, K-1] = the last K-1 inputs, so a sequence cut into pieces gives the same result as one pass.
Same sum as F.conv1d(pad(x, (K-1, 0)), weight, bias, groups=D) (mamba_ssm pads and truncates).

backend "cpu" (no grad, CPU fp32): one compiled pass, time-major, SiLU fused; out is then a
[B, D, L] view of [B, L, D] memory, the layout the next linear layer wants. Otherwise: K shifted
multiply-adds in torch (oneDNN's depthwise conv measured 2.2 ms per layer at L=4096 on 2 cores,
the K slabs ~0.4 ms), autograd-capable.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import scan_cpu

ACTIVATIONS = (None, "silu")


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor, initial_state: Optional[Tensor] = None,
                  activation: Optional[str] = None, backend: Optional[str] = None):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    w = weight.reshape(weight.shape[0], -1)                           # [D, K]
    batch, dim, L = x.shape
    K = w.shape[1]
    if initial_state is None:
        initial_state = x.new_zeros(batch, dim, K - 1)                # [B, D, K-1]
    initial_state = initial_state.to(x.dtype)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias, initial_state))
    if (backend == "cpu" and activation == "silu" and not needs_grad and x.device.type == "cpu"
            and x.dtype == torch.float32 and scan_cpu.available()):
        out = x.new_empty(batch, L, dim)                              # [B, L, D]
        prev = initial_state.transpose(1, 2).contiguous()             # [B, K-1, D]
        scan_cpu.module().conv_silu_fwd(scan_cpu.rows(x), prev, w.t().contiguous(),
                                        bias.float().contiguous(), out)
        if L >= K - 1:
            final = x[:, :, L - (K - 1):].contiguous()
        else:
            final = torch.cat([initial_state[:, :, L:], x], dim=-1)
        return out.transpose(1, 2), final
    x_ext = torch.cat([initial_state, x], dim=-1)                     # [B, D, K-1+L]
    out = torch.addcmul(bias[:, None], x_ext[:, :, :L], w[:, :1])     # [B, D, L]
    for k in range(1, K):
        out = out.addcmul_(x_ext[:, :, k:k + L], w[:, k:k + 1])
    final = x_ext[:, :, x_ext.shape[-1] - (K - 1):].detach()
    return (F.silu(out) if activation == "silu" else out), final
