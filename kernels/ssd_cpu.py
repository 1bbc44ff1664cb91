"""The compiled CPU forward of the Mamba-2 scan (ssd_cpu.cpp): the sequential recurrence, fused.

Why: on a CPU the SSD's per-head scan is a rank-1 update of a [p, n] state with one scalar decay,
3 vector operations per state element per step and no exp in the inner loop; one pass over time
keeps the state in cache and does l h p n of that work. The chunked algorithm (ssd_torch.py) trades
it for matmuls of ~2 l h T (n + p) + 4 l h p n flops plus its [T, T] masks, and measured 4-120x
slower than this on the shapes of bench/ssd_scan.py (2-core AVX2 machine, 1 thread).
Everything per step is in the kernel: dt_bias, softplus and dt_limit (dt is read raw, as a strided
slice of in_proj's output), D skip, the silu(z) gate and the per-head state norm.
Built by scan_cpu.CppExtension (same compiler flags as the Mamba-1 kernels; g++ and ninja; compiled
on first use, then cached under ~/.cache/torch_extensions): where it cannot be built, `available()`
is False and the default CPU backend stays "torch"; asking for backend="cpu" explicitly then fails
with the reason. variant="portable" is the build a CPU without AVX-512 gets (tests run it anywhere).

Gradients and full states are not computed here: with grad enabled, or return_states=True, the call
is handed to the torch backend, so results never depend on it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .scan_cpu import CppExtension
from .ssd_reference import DT_LIMIT_NONE, SSDResult, check_ssd_inputs
from .ssd_torch import mamba_chunk_scan_torch

_EXT = CppExtension("mambascope_ssd_cpu", Path(__file__).with_name("ssd_cpu.cpp"), ["ssd_fwd"],
                    "the compiled SSD scan")
VARIANTS = ("native", "portable")   # portable: the build a CPU without AVX-512 gets (scan_cpu.py)


def available() -> bool:
    return _EXT.load() is not None


def module(variant: str = "native"):
    """The compiled module, or a RuntimeError that says why not and what to do."""
    return _EXT.module(variant)


def build_error(variant: str = "native") -> str:
    """Why the compiled scan did not build ("" if it did or was not tried)."""
    return _EXT.reason(variant)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    """fp32 with unit stride along the last dim: a free view for the model's projections' slices."""
    t = t.float()
    return t if t.stride(-1) == 1 else t.contiguous()


_NONE = torch.empty(0)


def mamba_chunk_scan_cpu(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                         dt_softplus=False, dt_limit=DT_LIMIT_NONE, return_final_states=False,
                         return_state_norm=False, return_states=False, variant: str = "native") -> SSDResult:
    """The SSD scan on the compiled kernel; shapes and result as mamba_chunk_scan_reference.
    dt_bias, softplus and dt_limit are applied inside the kernel (dt is read raw, any strides)."""
    check_ssd_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states)
    tensors = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if needs_grad or return_states or x.dtype == torch.float64:   # float64: the exact path is torch's
        return mamba_chunk_scan_torch(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                                      initial_states=initial_states, dt_softplus=dt_softplus,
                                      dt_limit=dt_limit, return_final_states=return_final_states,
                                      return_state_norm=return_state_norm, return_states=return_states)
    mod = module(variant)
    if x.device.type != "cpu":
        raise RuntimeError("backend='cpu' takes CPU tensors; use backend='triton' or 'torch' on CUDA")
    batch, L, nheads, headdim = x.shape
    n = B.shape[-1]
    lo, hi = (float(v) for v in dt_limit)
    clamp = (lo, hi) != DT_LIMIT_NONE                                # as discretize_dt: default = no clamp
    Dhp = (D.float().expand(headdim, nheads).T if D.dim() == 1 else D.float()).contiguous() if D is not None else _NONE
    h = (initial_states.float().contiguous().clone() if initial_states is not None
         else x.new_zeros(batch, nheads, headdim, n, dtype=torch.float32))          # [b, h, p, n] -> final
    out = x.new_empty(batch, L, nheads, headdim, dtype=torch.float32)              # [b, l, h, p]
    norm = x.new_empty(batch, L, nheads, dtype=torch.float32) if return_state_norm else _NONE
    mod.ssd_fwd(_unit_last(x), dt.float(), dt_bias.float().contiguous() if dt_bias is not None else _NONE,
                bool(dt_softplus), clamp, lo, hi, A.float().contiguous(),
                _unit_last(B), _unit_last(C), Dhp, _unit_last(z) if z is not None else _NONE, h, out, norm)
    return SSDResult(out.to(x.dtype), h if return_final_states else None,
                     norm if return_state_norm else None, None)
