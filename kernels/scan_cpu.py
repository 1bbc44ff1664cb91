"""The compiled CPU scan (scan_cpu.cpp): same signature and result as the reference, forward only.

Why: eager torch tops out at ~5 µs per step per layer on 2 cores (memory passes over each
superblock; ../shared/notes/cpu-scan.md), while one fused sequential pass with a vectorised exp
measured 1.6 µs at L=4096 (D=128, N=16). The C++ is compiled on first use with
torch.utils.cpp_extension (g++ and ninja; ~25 s once, then cached under ~/.cache/torch_extensions).
Where it cannot be built (no compiler), `available()` is False and the default backend stays
"torch"; asking for backend="cpu" explicitly then fails with the reason.

Gradients and full states are not computed here: with grad enabled, or return_states=True, the
call is handed to the torch backend (its hand-written backward), so results never depend on it.
"""
from __future__ import annotations

import threading
from pathlib import Path

import torch
import torch.nn.functional as F

from .scan_reference import ScanResult, check_scan_inputs, discretize_delta
from .scan_torch import selective_scan_torch

_SRC = Path(__file__).with_name("scan_cpu.cpp")
_LOCK = threading.Lock()
_MODULE = None
_ERROR = None


def _load():
    """Compile (once per process; the build is cached on disk) or return the reason it failed."""
    global _MODULE, _ERROR
    with _LOCK:
        if _MODULE is None and _ERROR is None:
            try:
                from torch.utils.cpp_extension import load_inline
                _MODULE = load_inline(
                    "mambascope_scan_cpu", cpp_sources=_SRC.read_text(), functions=["scan_fwd"],
                    extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp-simd"], verbose=False)
            except Exception as e:  # noqa: BLE001  any build failure means: use the torch path
                _ERROR = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
    return _MODULE


def available() -> bool:
    return _load() is not None


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None, return_state_norm=False,
                       return_states=False) -> ScanResult:
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if needs_grad or return_states:
        return selective_scan_torch(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                    delta_softplus=delta_softplus, return_last_state=return_last_state,
                                    initial_state=initial_state, return_state_norm=return_state_norm,
                                    return_states=return_states)
    mod = _load()
    if mod is None:
        raise RuntimeError(f"the compiled CPU scan could not be built ({_ERROR}); it needs g++ and the "
                           "ninja package (pip install ninja), or use backend='torch'")
    if u.device.type != "cpu":
        raise RuntimeError("backend='cpu' takes CPU tensors; use backend='triton' or 'torch' on CUDA")
    batch, dim, L = u.shape
    tm = lambda t: t.float().transpose(1, 2).contiguous()            # noqa: E731  [B, X, L] -> [B, L, X]
    uf = u.float()
    delta_t = tm(discretize_delta(delta, delta_bias, delta_softplus))  # [B, L, D]
    h = (initial_state.float().clone() if initial_state is not None
         else uf.new_zeros(batch, dim, A.shape[1]))                   # [B, D, N], becomes the last state
    y = uf.new_empty(batch, L, dim)                                   # [B, L, D]
    norm = uf.new_empty(batch, L, dim) if return_state_norm else uf.new_empty(0)
    mod.scan_fwd(tm(uf), delta_t, A.float().contiguous(), tm(B), tm(C), h, y, norm, return_state_norm)
    y = y.transpose(1, 2)                                             # [B, D, L] view
    if D is not None:
        y = y + uf * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return ScanResult(y.to(u.dtype), h if return_last_state else None,
                      norm.transpose(1, 2) if return_state_norm else None, None)
