"""A byte-deterministic safetensors writer.

safetensors' own `save_file` keeps `__metadata__` in a Rust HashMap, so the same tensors and
metadata give a differently ordered header -- and a different file sha256 -- from one process to
the next (measured: two saves of identical weights, two hashes). A checkpoint's sha256 is its
identity in traces and model cards, so we write the format ourselves with sorted keys:

    8-byte little-endian header length | JSON header (space-padded to 8 bytes) | tensor bytes
    header = {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}

Files are read back with safetensors' own reader, which the tests check.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

_TORCH_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
                 torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
                 torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def _as_bytes(t) -> tuple[str, list, bytes]:
    """A torch tensor or numpy array -> (safetensors dtype, shape, little-endian C-order bytes)."""
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    t = t.detach().to("cpu").contiguous()
    if t.dtype not in _TORCH_DTYPES:
        raise TypeError(f"dtype {t.dtype} cannot be written to safetensors here")
    raw = t.view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)
    return _TORCH_DTYPES[t.dtype], list(t.shape), raw.numpy().tobytes()


def write_safetensors(tensors: dict, path, metadata: dict | None = None) -> None:
    """Write `tensors` (name -> torch tensor or numpy array) atomically to `path`."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, data = _as_bytes(tensors[name])
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header = {"__metadata__": dict(sorted(metadata.items())), **header}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:       # a crash never leaves half a file under the real name
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
