"""Mamba-2 (SSD) scan backends behind one entry point that mirrors mamba_ssm's `mamba_chunk_scan_combined`.

    from kernels import mamba_chunk_scan
    out = mamba_chunk_scan(x, dt, A, B, C, chunk_size=256, D=D, dt_bias=dt_bias, dt_softplus=True)

Shapes (time-major, as mamba_ssm): x, z: [b, l, h, p]; dt: [b, l, h]; A, dt_bias: [h];
B, C: [b, l, g, n]; D: [h] or [h, p]; initial_states: [b, h, p, n]. The recurrence is in
ssd_reference.py (the spec).

Backends:
- "reference": the sequential loop; the spec (ssd_reference.py).
- "torch":     the chunked SSD algorithm (ssd_minimal's four steps) with plain autograd (ssd_torch.py).
- "cpu":       a compiled sequential forward, forward only; with grad enabled it hands the call to
               "torch" (ssd_cpu.py, ssd_cpu.cpp).
- "triton":    chunk kernels, forward and backward (ssd_triton.py); on CPU only under TRITON_INTERPRET=1.
backend=None picks "triton" for CUDA tensors when Triton imports; on CPU "cpu" where it builds and
bench/ssd_scan.py measured it faster (see `default_backend`), else "torch".

Return value: like mamba_ssm, `out` or `(out, final_states)` with return_final_states=True. When a
trace output is asked for (return_state_norm / return_states) an `SSDResult` named tuple comes back
instead: (out, final_states, state_norm, states), with None for what was not asked.
"""
from __future__ import annotations

from typing import Optional

import torch

from .backends import BACKENDS, resolve
from .ssd_reference import DT_LIMIT_NONE, SSDResult, mamba_chunk_scan_reference

SSD_BACKENDS = BACKENDS


def _backend_fn(name: str):
    """Each backend module is imported on first use, so the spec works whatever else is missing."""
    if name == "reference":
        return mamba_chunk_scan_reference
    if name == "torch":
        from .ssd_torch import mamba_chunk_scan_torch
        return mamba_chunk_scan_torch
    if name == "cpu":
        from .ssd_cpu import mamba_chunk_scan_cpu
        return mamba_chunk_scan_cpu
    try:
        from .ssd_triton import mamba_chunk_scan_triton
    except ImportError as e:  # triton missing (non-Linux)
        raise RuntimeError(f"the triton SSD backend is unavailable ({e}); install triton==3.7.1 on "
                           "Linux, or use backend='torch'") from e
    return mamba_chunk_scan_triton


def ssd_triton_available() -> bool:
    try:
        _backend_fn("triton")
        return True
    except RuntimeError:
        return False


def default_backend(device: torch.device) -> str:
    """CUDA -> triton (if it imports); CPU -> the compiled scan where it builds (it measured faster
    than the chunked torch path on every shape of bench/ssd_scan.py), else torch."""
    if device.type == "cuda":
        return "triton" if ssd_triton_available() else "torch"
    try:
        from . import ssd_cpu
    except ImportError:
        return "torch"
    return "cpu" if ssd_cpu.available() else "torch"


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    return resolve(backend, device, default_backend, "SSD")


def mamba_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                     dt_softplus=False, dt_limit=DT_LIMIT_NONE, return_final_states=False, *,
                     return_state_norm=False, return_states=False, backend: Optional[str] = None):
    """Run the SSD scan on the chosen backend. See the module docstring for shapes and returns."""
    fn = _backend_fn(resolve_backend(backend, x.device))
    res = fn(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
             dt_softplus=dt_softplus, dt_limit=tuple(dt_limit), return_final_states=return_final_states,
             return_state_norm=return_state_norm, return_states=return_states)
    if return_state_norm or return_states:
        return res
    return (res.out, res.final_states) if return_final_states else res.out


__all__ = ["mamba_chunk_scan", "SSDResult", "SSD_BACKENDS", "default_backend", "resolve_backend",
           "mamba_chunk_scan_reference", "ssd_triton_available"]
