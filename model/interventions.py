"""Causal interventions on a MambaLM: clamp Δ, zero or patch SSM state, ablate a layer's mixer.

    from model import run, trace
    from model.interventions import ClampDelta, ZeroState, PatchState, AblateSSM
    tr = trace(lm, tokens, interventions=[ClampDelta(layer=0, channels=[3, 7], from_t=10, value=0.0)])
    res = run(lm, batch_tokens, [ZeroState(layer=1, channels=[0, 1], t=40)], num_last_tokens=1)

Times are token positions 0..L-1; "channels" are the mixer's units (mixer.n_units of them: Mamba-1's
channels D). What each intervention does:
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
This module says what an edit does to one chunk: Δ and output edits become MixerHooks
(model/records.py), state edits replace LayerState.ssm between chunks. model/run.py runs them,
cutting the chunks at each state edit's t; with no interventions the run is bit-identical to
`lm(tokens)`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
from torch import Tensor

from .records import MixerHooks


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


def validate(lm, interventions, L: int):
    """Every intervention names a layer, units and steps that exist in lm and a sequence of L tokens."""
    n_layer = lm.config.n_layer
    for iv in interventions:
        if not isinstance(iv, (ClampDelta, ZeroState, PatchState, AblateSSM)):
            raise TypeError(f"not an intervention: {iv!r}")
        if not 0 <= iv.layer < n_layer:
            raise ValueError(f"{type(iv).__name__}: layer {iv.layer} is out of range 0..{n_layer - 1}")
        U = lm.backbone.layers[iv.layer].mixer.n_units
        for c in getattr(iv, "channels", ()):
            if not 0 <= int(c) < U:
                raise ValueError(f"{type(iv).__name__}: channel {c} is out of range 0..{U - 1}")
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


def chunk_hooks(interventions, n_layer: int, s: int, n: int) -> Optional[list]:
    """One MixerHooks (or None) per layer for the chunk [s, s+n); None when nothing is edited there."""
    hooks = [None] * n_layer
    for i in range(n_layer):
        clamps = [(iv, w) for iv in interventions if isinstance(iv, ClampDelta) and iv.layer == i
                  for w in [_window(iv, s, n)] if w]
        ablate = [w for iv in interventions if isinstance(iv, AblateSSM) and iv.layer == i
                  for w in [_window(iv, s, n)] if w]
        if not clamps and not ablate:
            continue

        def edit_delta(delta: Tensor, clamps=clamps) -> Tensor:      # [B, U, n]
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


def state_edits(interventions, t: int, states: list, sources: dict) -> list:
    """The LayerStates entering step t (t > 0) after every ZeroState / PatchState at t.

    states: [LayerState] * n_layer, left untouched (a new list and new LayerStates come back, so a
    snapshot taken earlier keeps its values); sources: {id(PatchState): its source h [B, U, ...]}.
    """
    out = list(states)
    for iv in interventions:
        if isinstance(iv, STATE_EDITS) and iv.t == t:
            ssm = out[iv.layer].ssm.clone()                          # [B, U, ...]
            ch = list(iv.channels)
            ssm[:, ch] = 0.0 if isinstance(iv, ZeroState) else sources[id(iv)][:, ch].to(ssm.dtype)
            out[iv.layer] = replace(out[iv.layer], ssm=ssm)
    return out
