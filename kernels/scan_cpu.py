"""The compiled CPU kernels (cpu_kernels.cpp): the selective scan and the causal conv, forward only.

Why: eager torch tops out at ~5 µs per step per layer on 2 cores (memory passes over each
superblock; ../shared/notes/cpu-scan.md). One fused sequential pass, SIMD across 16 channels with a
vectorised exp, Δ's softplus, the D skip and the silu(z) gate folded in, reads each input once.
The C++ is compiled on first use with torch.utils.cpp_extension (g++ and ninja; ~25 s once, then
cached under ~/.cache/torch_extensions). Where it cannot be built (no compiler), `available()` is
False and the default backend stays "torch"; asking for backend="cpu" explicitly then fails with
the reason.

Gradients and full states are not computed here: with grad enabled, or return_states=True, the
call is handed to the torch backend (its hand-written backward), so results never depend on it.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import torch

from .scan_reference import ScanResult, check_scan_inputs
from .scan_torch import selective_scan_torch

# -fopenmp: at::parallel_for is an `omp parallel` region inlined from ATen's headers; without it
# the loop runs on one thread (libgomp.so.1 resolves to the copy torch already loaded).
# No -ffast-math: it may re-associate exp's two-constant range reduction; the SIMD loops are
# marked `omp simd` (cpu_kernels.cpp) or written with vector types (ssd_cpu.cpp), which is all the
# vectoriser needs.
_CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
# "portable" = the build a CPU without AVX-512 gets (AVX2 + FMA; tests run it on AVX-512 machines
# too); "generic" = neither (plain C the compiler vectorises: older x86, and the path other
# architectures take), also tested everywhere
_VARIANT_FLAGS = {"native": [], "portable": ["-mno-avx512f"], "generic": ["-mno-avx512f", "-mno-avx2", "-mno-fma"]}


class CppExtension:
    """One C++ source file, compiled on first use per variant ("native", "portable") with the flags
    above (torch.utils.cpp_extension: g++ and ninja; ~25 s once, then cached on disk under
    ~/.cache/torch_extensions), or the reason it could not be built. Shared by this file's kernels
    and the Mamba-2 scan's (ssd_cpu.py).

    The build's name carries a hash of the source and flags: torch rebuilds a cached extension
    whose source text changed, so two checkouts of different versions sharing the cache (a CI copy,
    another branch) otherwise rebuild it back and forth, and a process can load the other's build."""

    def __init__(self, name: str, source: Path, functions: list, what: str):
        self.name, self.source, self.functions, self.what = name, source, functions, what
        self.built: dict = {}   # variant -> compiled module, or the reason it failed (str)
        self._lock = threading.Lock()

    def load(self, variant: str = "native"):
        """The compiled module (built once per process), or None where it cannot be built."""
        with self._lock:
            if variant not in self.built:
                try:
                    from torch.utils.cpp_extension import load_inline
                    src, flags = self.source.read_text(), _CFLAGS + _VARIANT_FLAGS[variant]
                    tag = hashlib.sha256("\0".join([src, *flags, *self.functions]).encode()).hexdigest()[:12]
                    self.built[variant] = load_inline(
                        f"{self.name}_{variant}_{tag}", cpp_sources=src, functions=self.functions,
                        extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
                except Exception as e:  # noqa: BLE001  any build failure means: use the torch path
                    msg = str(e).strip()
                    self.built[variant] = f"{type(e).__name__}: {msg.splitlines()[-1] if msg else e}"
        mod = self.built[variant]
        return None if isinstance(mod, str) else mod

    def reason(self, variant: str = "native") -> str:
        """Why the variant did not build ("" when it did, or was never tried)."""
        mod = self.built.get(variant)
        return mod if isinstance(mod, str) else ""

    def module(self, variant: str = "native"):
        """The compiled module, or a RuntimeError that says why not and what to do."""
        mod = self.load(variant)
        if mod is None:
            raise RuntimeError(f"{self.what} could not be built ({self.built[variant]}); it needs g++ and the "
                               "ninja package (pip install ninja), or use backend='torch'")
        return mod


_EXT = CppExtension("mambascope_cpu_kernels", Path(__file__).with_name("cpu_kernels.cpp"),
                    ["scan_fwd", "conv_silu_fwd"], "the compiled CPU kernels")
_MODULES = _EXT.built


def available() -> bool:
    return _EXT.load() is not None


def module(variant: str = "native"):
    """The compiled module, or a RuntimeError that says why not and what to do."""
    return _EXT.module(variant)


def rows(t: torch.Tensor) -> torch.Tensor:
    """[B, X, L] -> fp32 [B, L, X] with unit stride along X: a free view when the memory is
    time-major already (what the model's linear layers produce), else one copy."""
    t = t.float().transpose(1, 2)
    return t if t.stride(2) == 1 else t.contiguous()


_NONE = torch.empty(0)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None, return_state_norm=False,
                       return_states=False, variant: str = "native") -> ScanResult:
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if needs_grad or return_states:
        return selective_scan_torch(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                    delta_softplus=delta_softplus, return_last_state=return_last_state,
                                    initial_state=initial_state, return_state_norm=return_state_norm,
                                    return_states=return_states)
    mod = module(variant)
    if u.device.type != "cpu":
        raise RuntimeError("backend='cpu' takes CPU tensors; use backend='triton' or 'torch' on CUDA")
    batch, dim, L = u.shape
    ur = rows(u)                                                      # [B, L, D]
    h = (initial_state.float().contiguous().clone() if initial_state is not None
         else ur.new_zeros(batch, dim, A.shape[1]))                   # [B, D, N], becomes the last state
    out = ur.new_empty(batch, L, dim)                                 # [B, L, D]
    norm = ur.new_empty(batch, L, dim) if return_state_norm else _NONE
    flat = lambda t: t.float().contiguous() if t is not None else _NONE  # noqa: E731
    mod.scan_fwd(ur, rows(delta), flat(delta_bias), bool(delta_softplus), flat(A), rows(B), rows(C),
                 flat(D), rows(z) if z is not None else _NONE, h, out, norm)
    return ScanResult(out.transpose(1, 2).to(u.dtype), h if return_last_state else None,
                      norm.transpose(1, 2) if return_state_norm else None, None)
