"""Causal interventions on a MambaLM: clamp Δ, zero or patch SSM state, ablate a layer's mixer.

    from model import run, trace
    from model.interventions import ClampDelta, ZeroState, PatchState, AblateSSM
    tr = trace(lm, tokens, interventions=[ClampDelta(layer=0, channels=[3, 7], from_t=10, value=0.0)])
    res = run(lm, batch_tokens, [ZeroState(layer=1, channels=[0, 1], t=40)], num_last_tokens=1)

Times are token positions 0..L-1; "channels" are the mixer's units (mixer.n_units of them: Mamba-1's
channels D, Mamba-2's heads H -- Δ, A and the state h[head] = [P, N] are per head there). What each
intervention does:
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
For activation patching, the same three places set to given values, per batch row (`rows`: the
batch rows edited, None = all; `value` has one entry per edited row, or one for all):
    SetState(layer, channels, t, value, rows=None)
        h[d, ...] of those channels just before step t is `value` [R, C, *state] (a ZeroState with
        values: model/run.py cuts its chunks at every ZeroState's t, SetState's included).
    SetDelta(layer, channels, t, value, rows=None)
        Δ (after softplus) of those channels at step t is `value` [R, C].
    SetOutput(layer, t, value, rows=None)
        the layer's mixer output (after out_proj) at step t is `value` [R, d_model].
This module says what an edit does to one chunk: Δ and output edits become MixerHooks
(model/records.py), state edits replace LayerState.ssm between chunks. model/run.py runs them,
cutting the chunks at each state edit's t; with no interventions the run is bit-identical to
`lm(tokens)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional, Sequence

import numpy as np
import torch
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


@dataclass(frozen=True)
class SetState(ZeroState):
    value: object = field(default=None, repr=False)     # [R, C, *state] or [C, *state]
    rows: Optional[Sequence[int]] = None                  # batch rows edited; None = all


@dataclass(frozen=True)
class SetDelta:
    layer: int
    channels: Sequence[int]
    t: int
    value: object = field(repr=False)                     # [R, C] or [C]
    rows: Optional[Sequence[int]] = None


@dataclass(frozen=True)
class SetOutput:
    layer: int
    t: int
    value: object = field(repr=False)                     # [R, d_model] or [d_model]
    rows: Optional[Sequence[int]] = None


STATE_EDITS = (ZeroState, PatchState)                     # SetState is a ZeroState
SET_EDITS = (SetState, SetDelta, SetOutput)


def describe(iv) -> dict:
    """A JSON-able description (for Trace.meta)."""
    d = {"kind": type(iv).__name__}
    # fields one by one (asdict would deep-copy a SetState's value array)
    for k, v in ((f.name, getattr(iv, f.name)) for f in fields(iv)):
        if k == "source_tokens":
            d["source_len"] = int(np.asarray(v).shape[-1])
        elif k == "value" and isinstance(iv, SET_EDITS):
            d["value_shape"] = list(np.shape(v))
        elif k == "rows":
            d[k] = None if v is None else list(map(int, v))
        else:
            d[k] = list(map(int, v)) if k == "channels" else v
    return d


def validate(lm, interventions, L: int):
    """Every intervention names a layer, units and steps that exist in lm and a sequence of L tokens."""
    n_layer = lm.config.n_layer
    for iv in interventions:
        if not isinstance(iv, (ClampDelta, ZeroState, PatchState, AblateSSM, SetDelta, SetOutput)):
            raise TypeError(f"not an intervention: {iv!r}")
        if not 0 <= iv.layer < n_layer:
            raise ValueError(f"{type(iv).__name__}: layer {iv.layer} is out of range 0..{n_layer - 1}")
        mixer = lm.backbone.layers[iv.layer].mixer
        U = mixer.n_units
        for c in getattr(iv, "channels", ()):
            if not 0 <= int(c) < U:
                raise ValueError(f"{type(iv).__name__}: {mixer.unit} {c} is out of range 0..{U - 1}")
        if isinstance(iv, STATE_EDITS) and not 0 <= iv.t < L:
            raise ValueError(f"{type(iv).__name__}: t={iv.t} is out of range 0..{L - 1}")
        if isinstance(iv, PatchState) and np.asarray(iv.source_tokens).shape[-1] < iv.t:
            raise ValueError(f"PatchState: source_tokens has {np.asarray(iv.source_tokens).shape[-1]} "
                             f"tokens, fewer than t={iv.t}")
        if isinstance(iv, (ClampDelta, AblateSSM)) and iv.from_t < 0:
            raise ValueError(f"{type(iv).__name__}: from_t={iv.from_t} must be >= 0")
        if isinstance(iv, SET_EDITS):
            _validate_set(iv, lm, L)


def _validate_set(iv, lm, L: int):
    """A SetState / SetDelta / SetOutput: its step, and a value of shape [(R,) *entry] where entry is
    (C, *state) / (C,) / (d_model,) and R = len(rows) when rows are given."""
    name = type(iv).__name__
    lo = 1 if isinstance(iv, SetState) else 0         # the state entering step 0 is always zero
    if not lo <= iv.t < L:
        raise ValueError(f"{name}: t={iv.t} is out of range {lo}..{L - 1}")
    if isinstance(iv, SetState):
        entry = (len(iv.channels), *lm.backbone.layers[iv.layer].mixer.init_state(1).ssm.shape[2:])
    elif isinstance(iv, SetDelta):
        entry = (len(iv.channels),)
    else:
        entry = (lm.config.d_model,)
    shape = tuple(np.shape(iv.value)) if iv.value is not None else None
    ok = shape is not None and (shape == entry or (len(shape) == len(entry) + 1 and shape[1:] == entry and (
        iv.rows is None or shape[0] == len(iv.rows))))
    if not ok:
        rows = "R" if iv.rows is None else str(len(iv.rows))
        raise ValueError(f"{name}: value of shape {shape} is not {list(entry)} or [{rows}, {', '.join(map(str, entry))}]")


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
        set_delta = [iv for iv in interventions if isinstance(iv, SetDelta) and iv.layer == i and s <= iv.t < s + n]
        set_out = [iv for iv in interventions if isinstance(iv, SetOutput) and iv.layer == i and s <= iv.t < s + n]
        if not clamps and not ablate and not set_delta and not set_out:
            continue

        def edit_delta(delta: Tensor, clamps=clamps, set_delta=set_delta) -> Tensor:      # [B, U, n]
            delta = delta.clone()
            for iv, (lo, hi) in clamps:
                delta[:, list(iv.channels), lo:hi] = float(iv.value)
            for iv in set_delta:
                rows = _rows(iv, delta.shape[0])
                ch = torch.as_tensor(list(iv.channels), dtype=torch.long, device=delta.device)
                delta[rows[:, None], ch[None, :], iv.t - s] = _value(iv, delta)          # [R, C]
            return delta

        def edit_output(out: Tensor, ablate=ablate, set_out=set_out) -> Tensor:       # [B, n, d_model]
            out = out.clone()
            for lo, hi in ablate:
                out[:, lo:hi] = 0.0
            for iv in set_out:
                out[_rows(iv, out.shape[0]), iv.t - s] = _value(iv, out)                 # [R, d_model]
            return out

        hooks[i] = MixerHooks(delta=edit_delta if clamps or set_delta else None,
                              output=edit_output if ablate or set_out else None)
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
            if isinstance(iv, SetState):
                rows = _rows(iv, ssm.shape[0])
                idx = torch.as_tensor(ch, dtype=torch.long, device=ssm.device)
                ssm[rows[:, None], idx[None, :]] = _value(iv, ssm)       # [R, C, *state]
            else:
                ssm[:, ch] = 0.0 if isinstance(iv, ZeroState) else sources[id(iv)][:, ch].to(ssm.dtype)
            out[iv.layer] = replace(out[iv.layer], ssm=ssm)
    return out


def _rows(iv, batch: int) -> Tensor:
    """The batch rows a SetState / SetDelta / SetOutput edits: [R] long."""
    rows = range(batch) if iv.rows is None else iv.rows
    return torch.as_tensor(list(rows), dtype=torch.long)


def _value(iv, like: Tensor) -> Tensor:
    """iv.value as a tensor of `like`'s dtype and device (broadcast over rows when it has none)."""
    return torch.as_tensor(np.asarray(iv.value) if not isinstance(iv.value, Tensor) else iv.value,
                           dtype=like.dtype, device=like.device)
