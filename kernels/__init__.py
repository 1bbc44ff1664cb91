"""Selective-scan backends behind one entry point that mirrors mamba_ssm's `selective_scan_fn`.

    from kernels import selective_scan
    out = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)

Shapes (batch, channel, time): u, delta, z: [B, D, L]; A: [D, N]; B, C: [B, N, L]; D, delta_bias: [D].

Backends:
- "reference": the sequential loop of the paper; the spec (scan_reference.py).
- "torch":     chunked, vectorised CPU path with a hand-written backward (scan_torch.py).
- "cpu":       one fused C++ pass, compiled on first use (scan_cpu.py, cpu_kernels.cpp); forward
               only -- with grad enabled it hands the call to "torch". The 2-layer model's forward
               at L=4096: 9.4 ms vs 41 ms on "torch" (bench/cpu_model.py; docs/cpu-kernels.md).
causal_conv1d.py holds the conv in front of the scan, with the same "cpu" fast path.
- "triton":    the GPU kernel (scan_triton.py); on CPU only under TRITON_INTERPRET=1.
backend=None picks "triton" for CUDA tensors when Triton imports, else "cpu" when it compiles
(g++ and ninja present), else "torch".

Return value: like mamba_ssm, `out` or `(out, last_state)` with return_last_state=True. When a trace
output is asked for (return_state_norm / return_states) a `ScanResult` named tuple comes back
instead: (out, last_state, state_norm, states), with None for what was not asked.
This module imports only torch (and triton lazily); it knows nothing about the model.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import scan_cpu
from .backends import BACKENDS, resolve
from .scan_cpu import selective_scan_cpu
from .scan_reference import ScanResult, selective_scan_reference
from .scan_torch import selective_scan_torch
from .ssd import SSDResult, mamba_chunk_scan, mamba_chunk_scan_reference  # Mamba-2 (SSD), see ssd.py



def _triton_scan():
    """Import the Triton backend on first use; errors carry the fix."""
    try:
        from .scan_triton import selective_scan_triton
    except ImportError as e:  # triton missing (non-Linux) or kernel file not built yet
        raise RuntimeError(f"the triton scan backend is unavailable ({e}); install triton==3.7.1 on "
                           "Linux, or use backend='torch'") from e
    return selective_scan_triton


def triton_available() -> bool:
    try:
        _triton_scan()
        return True
    except RuntimeError:
        return False


def default_backend(device: torch.device) -> str:
    """CUDA -> triton (if it imports); CPU -> the compiled scan (if it builds), else torch."""
    if device.type == "cuda":
        return "triton" if triton_available() else "torch"
    return "cpu" if scan_cpu.available() else "torch"


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    return resolve(backend, device, default_backend, "scan")


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, initial_state=None, return_state_norm=False,
                   return_states=False, backend: Optional[str] = None):
    """Run the selective scan on the chosen backend. See the module docstring for shapes."""
    name = resolve_backend(backend, u.device)
    fn = {"reference": selective_scan_reference, "torch": selective_scan_torch,
          "cpu": selective_scan_cpu}.get(name) or _triton_scan()
    res = fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
             return_last_state=return_last_state, initial_state=initial_state,
             return_state_norm=return_state_norm, return_states=return_states)
    if return_state_norm or return_states:
        return res
    return (res.out, res.last_state) if return_last_state else res.out


__all__ = ["selective_scan", "ScanResult", "BACKENDS", "default_backend", "resolve_backend",
           "selective_scan_reference", "selective_scan_torch", "selective_scan_cpu", "triton_available",
           "mamba_chunk_scan", "SSDResult", "mamba_chunk_scan_reference"]
