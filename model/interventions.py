"""Causal interventions on a MambaLM: clamp Δ, zero or patch SSM state, ablate a layer's mixer.

    from model.interventions import run_with_interventions, ClampDelta, ZeroState, PatchState, AblateSSM
    tr = run_with_interventions(lm, tokens, [ClampDelta(layer=0, channels=[3, 7], from_t=10, value=0.0)])
    tr.logits[-1]                      # a Trace, like lm.trace(tokens), of the edited run

Times are token positions 0..L-1. What each intervention does:
    ClampDelta(layer, channels, from_t, value=0.0, to_t=None)
        Δ (after softplus) of those channels is `value` at every step t in [from_t, to_t): with 0
        the state neither decays nor takes input there; the rest of the layer is untouched.
    ZeroState(layer, channels, t)
        h[d, :] of those channels is set to 0 just before step t is processed (t = 0: no effect).
    PatchState(layer, channels, t, source_tokens)
        h[d, :] just before step t is replaced by its value in a clean run of `source_tokens`
        (the source's state after its step t-1). source_tokens: [L'] or [B, L'] with L' >= t.
    AblateSSM(layer, from_t=0, to_t=None)
        the layer's mixer output (after out_proj) is zero in [from_t, to_t): the block adds nothing
        to the residual stream there.
Δ and output edits run through the MixerHooks hook points of model/mamba.py; state edits split the
run with `forward_stream` at t, edit `LayerState.ssm`, and continue. With no interventions the
result is bit-identical to `lm(tokens)` / `lm.trace(tokens)`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from kernels import resolve_backend

from .mamba import STREAM_CHUNK, MixerHooks
from .trace import LAYER_FIELDS, LayerTrace, Trace, as_token_tensor


@dataclass(frozen=True)
class ClampDelta:
    layer: int
    channels: Sequence[int]
    from_t: int = 0
    value: float = 0.0
    to_t: Optional[int] = None          # exclusive; None = to the end


@dataclass(frozen=True)
class ZeroState:
    layer: int
    channels: Sequence[int]
    t: int


@dataclass(frozen=True)
class PatchState:
    layer: int
    channels: Sequence[int]
    t: int
    source_tokens: object = field(repr=False)   # [L'] or [B, L'] ints, L' >= t


@dataclass(frozen=True)
class AblateSSM:
    layer: int
    from_t: int = 0
    to_t: Optional[int] = None


STATE_EDITS = (ZeroState, PatchState)


def describe(iv) -> dict:
    """A JSON-able description (for Trace.meta)."""
    d = {"kind": type(iv).__name__}
    for k, v in asdict(iv).items():
        if k == "source_tokens":
            d["source_len"] = int(np.asarray(v).shape[-1])
        else:
            d[k] = list(map(int, v)) if k == "channels" else v
    return d


def _validate(lm, interventions, L: int):
    n_layer, D = lm.config.n_layer, lm.config.d_inner
    for iv in interventions:
        if not isinstance(iv, (ClampDelta, ZeroState, PatchState, AblateSSM)):
            raise TypeError(f"not an intervention: {iv!r}")
        if not 0 <= iv.layer < n_layer:
            raise ValueError(f"{type(iv).__name__}: layer {iv.layer} is out of range 0..{n_layer - 1}")
        for c in getattr(iv, "channels", ()):
            if not 0 <= int(c) < D:
                raise ValueError(f"{type(iv).__name__}: channel {c} is out of range 0..{D - 1}")
        if isinstance(iv, STATE_EDITS) and not 0 <= iv.t < L:
            raise ValueError(f"{type(iv).__name__}: t={iv.t} is out of range 0..{L - 1}")
        if isinstance(iv, PatchState) and np.asarray(iv.source_tokens).shape[-1] < iv.t:
            raise ValueError(f"PatchState: source_tokens has {np.asarray(iv.source_tokens).shape[-1]} "
                             f"tokens, fewer than t={iv.t}")
        if isinstance(iv, (ClampDelta, AblateSSM)) and iv.from_t < 0:
            raise ValueError(f"{type(iv).__name__}: from_t={iv.from_t} must be >= 0")


def _window(iv, s: int, n: int):
    """The part of iv's [from_t, to_t) inside the chunk [s, s+n), as chunk-local (lo, hi), or None."""
    lo = max(iv.from_t - s, 0)
    hi = n if iv.to_t is None else min(iv.to_t - s, n)
    return (lo, hi) if lo < hi else None


def _chunk_hooks(interventions, n_layer: int, s: int, n: int) -> Optional[list]:
    """One MixerHooks (or None) per layer for the chunk [s, s+n)."""
    hooks = [None] * n_layer
    for i in range(n_layer):
        clamps = [(iv, w) for iv in interventions if isinstance(iv, ClampDelta) and iv.layer == i
                  for w in [_window(iv, s, n)] if w]
        ablate = [w for iv in interventions if isinstance(iv, AblateSSM) and iv.layer == i
                  for w in [_window(iv, s, n)] if w]
        if not clamps and not ablate:
            continue

        def edit_delta(delta: Tensor, clamps=clamps) -> Tensor:      # [B, D, n]
            delta = delta.clone()
            for iv, (lo, hi) in clamps:
                delta[:, list(iv.channels), lo:hi] = float(iv.value)
            return delta

        def edit_output(out: Tensor, ablate=ablate) -> Tensor:       # [B, n, d_model]
            out = out.clone()
            for lo, hi in ablate:
                out[:, lo:hi] = 0.0
            return out

        hooks[i] = MixerHooks(delta=edit_delta if clamps else None, output=edit_output if ablate else None)
    return hooks if any(h is not None for h in hooks) else None


@torch.no_grad()
def _source_state(lm, iv: PatchState, batch: int, backend) -> Tensor:
    """h of iv.layer just before step iv.t in a clean run of iv.source_tokens: [B, D, N]."""
    src = torch.as_tensor(np.asarray(iv.source_tokens), dtype=torch.long, device=lm.device)
    src = src[None] if src.dim() == 1 else src                          # [b, L']
    if src.shape[0] not in (1, batch):
        raise ValueError(f"PatchState: source_tokens batch {src.shape[0]} does not match {batch}")
    if iv.t == 0:
        return torch.zeros(src.shape[0], lm.config.d_inner, lm.config.d_state, device=lm.device)
    states = None
    for s in range(0, iv.t, STREAM_CHUNK):
        _, states = lm.forward_stream(src[:, s:min(s + STREAM_CHUNK, iv.t)], states, num_last_tokens=1,
                                      backend=backend)
    return states[iv.layer].ssm.expand(batch, -1, -1)


@torch.no_grad()
def run_interventions(lm, tokens: Tensor, interventions: Sequence = (), *, records: bool = False,
                      full_states: bool = False, num_last_tokens: int = 0, backend: Optional[str] = None,
                      chunk_len: int = STREAM_CHUNK):
    """Batched core: tokens [B, L] -> (logits [B, L or num_last_tokens, V], states, records or None).

    records=True returns one dict per layer of [B, L, ...] tensors (see MambaMixer.forward), for
    building a Trace; keep L moderate then (they hold every step).
    """
    lm._check_tokens(tokens)
    batch, L = tokens.shape
    interventions = list(interventions)
    _validate(lm, interventions, L)
    n_layer = lm.config.n_layer
    sources = {id(iv): _source_state(lm, iv, batch, backend) for iv in interventions
               if isinstance(iv, PatchState)}
    cuts = sorted({0, L} | set(range(0, L, chunk_len)) | {iv.t for iv in interventions
                                                           if isinstance(iv, STATE_EDITS)})
    states, outs, recs = None, [], []
    for s, e in zip(cuts[:-1], cuts[1:]):
        for iv in interventions:                         # state edits entering step s
            if isinstance(iv, STATE_EDITS) and iv.t == s and s > 0:
                ssm = states[iv.layer].ssm.clone()        # [B, D, N]
                ch = list(iv.channels)
                ssm[:, ch] = 0.0 if isinstance(iv, ZeroState) else sources[id(iv)][:, ch].to(ssm.dtype)
                states[iv.layer].ssm = ssm
        rec = [{"want_states": full_states} for _ in range(n_layer)] if records else None
        keep = e - s if num_last_tokens <= 0 else min(e - s, max(0, e - (L - num_last_tokens)))
        logits, states = lm.forward_stream(tokens[:, s:e], states, records=rec, backend=backend,
                                           hooks=_chunk_hooks(interventions, n_layer, s, e - s),
                                           num_last_tokens=0 if keep == e - s else max(keep, 1))
        if keep:
            outs.append(logits)
        if records:
            recs.append(rec)
    rec_out = None
    if records:
        rec_out = [{k: torch.cat([r[i][k] for r in recs], dim=1) for k in recs[0][i] if k != "want_states"}
                   for i in range(n_layer)]
    return torch.cat(outs, dim=1), states, rec_out


def run_with_interventions(lm, tokens, interventions: Sequence = (), full_states: bool = False,
                           backend: Optional[str] = None) -> Trace:
    """One sequence ([L] or [1, L]) with interventions -> Trace (as lm.trace gives, edited).

    The Trace's meta gains "interventions": a JSON description of each one.
    """
    ids = as_token_tensor(tokens, lm.device)                            # [1, L]
    cfg = lm.config
    was_training = lm.training
    lm.eval()
    try:
        logits, _, recs = run_interventions(lm, ids, interventions, records=True, full_states=full_states,
                                            backend=backend)
    finally:
        lm.train(was_training)
    logits = logits[0, :, :cfg.vocab_size].float()                      # [L, V]
    np32 = lambda rec, key: rec[key][0].float().cpu().numpy()           # noqa: E731
    layers = [LayerTrace(**{a: np32(r, a) for a in LAYER_FIELDS},
                         states=np32(r, "states") if full_states else None) for r in recs]
    from . import __version__
    meta = {"config": cfg.to_mamba_ssm_dict(), "norm_epsilon": cfg.norm_epsilon,
            "checkpoint_sha256": getattr(lm, "checkpoint_sha256", None) or "unsaved",
            "checkpoint_path": getattr(lm, "checkpoint_path", None) or "",
            "backend": resolve_backend(backend, lm.device), "version": __version__,
            "task": getattr(lm, "task", None) or {},
            "interventions": [describe(iv) for iv in interventions]}
    return Trace(tokens=ids[0].cpu().numpy(), layers=layers, logits=logits.cpu().numpy(),
                 probs=torch.softmax(logits, -1).cpu().numpy(), meta=meta)
