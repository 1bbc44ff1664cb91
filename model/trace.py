"""Activation traces: everything the app draws and researchers export, for one sequence.

    tr = lm.trace(tokens)                 # tokens: [L] ints (list, numpy or tensor)
    tr.layers[1].delta                    # [L, D] Δ after softplus, layer 2
    tr.save("run.safetensors"); Trace.load("run.safetensors")

Arrays are numpy (viz/ consumes numpy and never imports torch). Shapes, per layer i:
    ssm_input   [L, D]    u: conv + SiLU output, the scan's input  (MambaLens hook_ssm_input)
    delta       [L, D]    Δ after softplus                          (hook_delta)
    B, C        [L, N]    input-dependent B and C                   (hook_B, hook_C)
    state_norm  [L, D]    ||h_t[d, :]||_2                           (hook_state_norm, ours)
    ssm_output  [L, D]    y + D*u, before the silu(z) gate          (hook_ssm_output)
    resid_post  [L, d_model] residual stream after block i          (hook_resid_post)
    states      [L, D, N] h_t, only when asked for and under a cap  (hook_h)
and for the model: logits, probs [L, V] (hook_logits, hook_probs), tokens [L].
In the safetensors file the keys are MambaLens / TransformerLens hook names: blocks.{i}.hook_delta.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from kernels import resolve_backend

from .safetensors_io import write_safetensors

TRACE_FORMAT = "mambascope-trace/1"
DEFAULT_MAX_STATE_ELEMS = 1 << 24   # full states: 64 MiB of fp32 over all layers unless raised
LAYER_FIELDS = {  # attribute -> hook name
    "ssm_input": "hook_ssm_input", "delta": "hook_delta", "B": "hook_B", "C": "hook_C",
    "state_norm": "hook_state_norm", "ssm_output": "hook_ssm_output", "resid_post": "hook_resid_post",
}
STATES_HOOK = "hook_h"


@dataclass
class LayerTrace:
    """One layer's recordings; a quantity left out of `trace(include=...)` is None."""
    ssm_input: Optional[np.ndarray] = None    # [L, D]
    delta: Optional[np.ndarray] = None        # [L, D]
    B: Optional[np.ndarray] = None            # [L, N]
    C: Optional[np.ndarray] = None            # [L, N]
    state_norm: Optional[np.ndarray] = None   # [L, D]
    ssm_output: Optional[np.ndarray] = None   # [L, D]
    resid_post: Optional[np.ndarray] = None   # [L, d_model]
    states: Optional[np.ndarray] = None       # [L, D, N]


@dataclass
class Trace:
    tokens: np.ndarray       # [L] int64
    layers: list             # [LayerTrace] * n_layer
    logits: np.ndarray       # [L, V]
    probs: np.ndarray        # [L, V]
    meta: dict = field(default_factory=dict)   # config, checkpoint_sha256, backend, version, task

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    def to_tensors(self) -> dict:
        out = {"tokens": self.tokens, "hook_logits": self.logits, "hook_probs": self.probs}
        for i, lt in enumerate(self.layers):
            for attr, hook in {**LAYER_FIELDS, "states": STATES_HOOK}.items():
                if getattr(lt, attr) is not None:
                    out[f"blocks.{i}.{hook}"] = getattr(lt, attr)
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    def save(self, path) -> None:
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.meta.items()}
        meta["format"] = TRACE_FORMAT
        meta["n_layer"] = str(len(self.layers))
        write_safetensors(self.to_tensors(), path, meta)

    @classmethod
    def load(cls, path) -> "Trace":
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = dict(f.metadata() or {})
                if meta.get("format") != TRACE_FORMAT:
                    raise ValueError(f"{path}: not a mambascope trace (format={meta.get('format')!r})")
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path}: not a readable safetensors trace ({e})") from e
        n_layer = int(meta.pop("n_layer"))
        meta.pop("format")
        layers = []
        for i in range(n_layer):
            hooks = {**LAYER_FIELDS, "states": STATES_HOOK}
            layers.append(LayerTrace(**{a: arrays.get(f"blocks.{i}.{h}") for a, h in hooks.items()}))
        return cls(tokens=arrays["tokens"], layers=layers, logits=arrays["hook_logits"],
                   probs=arrays["hook_probs"], meta={k: _maybe_json(v) for k, v in meta.items()})


def _maybe_json(s: str):
    try:
        return json.loads(s)
    except (json.JSONDecodeError, TypeError):
        return s


def as_token_tensor(tokens, device="cpu") -> torch.Tensor:
    """[L] or [1, L] tokens (list, numpy, tensor) -> LongTensor [1, L]."""
    t = torch.as_tensor(np.asarray(tokens) if not torch.is_tensor(tokens) else tokens)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise ValueError(f"trace takes one sequence of shape [L] or [1, L], got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"tokens must be integers, got {t.dtype}")
    return t.to(device=device, dtype=torch.long)[None]


@torch.no_grad()
def trace(lm, tokens: Sequence[int], full_states: bool = False,
          max_state_elems: int = DEFAULT_MAX_STATE_ELEMS, backend: Optional[str] = None,
          chunk_len: Optional[int] = None, include: Optional[Sequence[str]] = None) -> Trace:
    """Run `lm` on one sequence and record every layer (see module docstring for shapes).

    full_states: also keep h_t for every step, refused above `max_state_elems` floats in total
    (L * D * N * n_layer); raise the cap explicitly if you have the memory.
    include: which per-layer quantities to keep (default all of LAYER_FIELDS); the others are
    None. E.g. include=("state_norm",) traces 2^20 tokens in ~1 GiB instead of ~4.5 GiB.
    """
    from . import __version__
    from .mamba import STREAM_CHUNK
    include = tuple(LAYER_FIELDS) if include is None else tuple(include)
    unknown = set(include) - set(LAYER_FIELDS)
    if unknown:
        raise ValueError(f"unknown trace quantities {sorted(unknown)}; choose from {list(LAYER_FIELDS)}")
    ids = as_token_tensor(tokens, lm.device)                         # [1, L]
    cfg = lm.config
    L = ids.shape[1]
    if full_states:
        need = L * cfg.d_inner * cfg.d_state * cfg.n_layer
        if need > max_state_elems:
            raise ValueError(f"full states for L={L} need {need:,} floats ({need * 4 / 2**20:.0f} MiB), "
                             f"over the cap of {max_state_elems:,}; pass max_state_elems={need} to allow it")
        include = include + ("states",)
    chunk_len = chunk_len or STREAM_CHUNK
    was_training = lm.training
    lm.eval()
    # outputs preallocated and filled chunk by chunk: no list-then-concatenate copy of the trace
    logits = np.empty((L, cfg.vocab_size), dtype=np.float32)         # [L, V]
    out = [dict() for _ in range(cfg.n_layer)]
    states = None
    try:
        for s in range(0, L, chunk_len):
            records = [{"want_states": full_states, "include": include} for _ in range(cfg.n_layer)]
            lg, states = lm.forward_stream(ids[:, s:s + chunk_len], states, records=records, backend=backend)
            e = s + lg.shape[1]
            logits[s:e] = lg[0, :, :cfg.vocab_size].float().cpu().numpy()
            for i, rec in enumerate(records):
                for key in include:
                    a = rec[key][0].float().cpu().numpy()            # [l, ...]
                    if key not in out[i]:
                        out[i][key] = np.empty((L, *a.shape[1:]), dtype=np.float32)
                    out[i][key][s:e] = a
    finally:
        lm.train(was_training)
    layers = [LayerTrace(**{a: out[i].get(a) for a in (*LAYER_FIELDS, "states")}) for i in range(cfg.n_layer)]
    probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
    meta = {"config": cfg.to_mamba_ssm_dict(), "norm_epsilon": cfg.norm_epsilon,
            "checkpoint_sha256": getattr(lm, "checkpoint_sha256", None) or "unsaved",
            "checkpoint_path": getattr(lm, "checkpoint_path", None) or "",
            "backend": resolve_backend(backend, lm.device), "version": __version__,
            "task": getattr(lm, "task", None) or {}}
    return Trace(tokens=ids[0].cpu().numpy(), layers=layers, logits=logits, probs=probs, meta=meta)
