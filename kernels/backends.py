"""The backend names both scans share (Mamba-1's selective_scan, Mamba-2's mamba_chunk_scan) and
the one check of a requested name. torch only."""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

BACKENDS = ("reference", "torch", "cpu", "triton")


def resolve(backend: Optional[str], device: torch.device, default: Callable[[torch.device], str],
            what: str = "scan") -> str:
    """None -> default(device); a known name is checked against the device (Triton on CPU only
    under its interpreter, with the fix in the error)."""
    if backend is None:
        return default(device)
    if backend not in BACKENDS:
        raise ValueError(f"unknown {what} backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend='triton' needs CUDA tensors; on CPU set TRITON_INTERPRET=1 before "
                           "importing kernels (slow, for tests) or use backend='torch'")
    return backend
