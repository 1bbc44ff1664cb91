"""The one definition of the Δ ratio and of memory channels, used by the app, training's eval,
the mechanism study and the tests alike. numpy only.

Δ ratio of a unit (a channel of Mamba-1, a head of Mamba-2) for one write:

    ratio = max_{t in W} Δ[t] / median_{t in F} Δ[t]

- W, the *write window*: the written step w and the d_conv - 1 steps after it, i.e. the steps at
  which the written token is still in the layer's causal-conv input (a layer may write one or two
  steps after the token: the trained induction model writes at w + 1), cut at the next query;
- F, the *filler*: the steps after W up to the next query (exclusive), markers excluded: the steps
  across which the memory must be held.
For a batch ([B, L, U] with one shared layout) Δ at each step of W is first averaged over the batch
and F pools every sequence's filler steps. A large ratio marks a unit that writes the memory and
then barely moves (its decay exp(Δ·A) stays near 1 over the filler).

Memory channels of a layer: the units with the largest Δ ratio, at most k, each above min_ratio.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .base import Positions

TINY = 1e-300      # a filler median of exactly 0 (the closed-form model's fp32 underflow) -> huge, finite


@dataclass(frozen=True)
class Windows:
    write: tuple       # (W0, W1): the write window [W0, W1)
    filler: tuple      # (F0, F1): the filler [F0, F1), markers inside it excluded
    markers: tuple     # steps inside the filler that are not filler


def windows(positions: Positions, length: int, d_conv: int, write: int = 0) -> Optional[Windows]:
    """The write window and filler of the `write`-th write of a sequence, or None when the sequence
    has no such write or no filler step after the write window."""
    if write >= len(positions.writes):
        return None
    w = positions.writes[write]
    end = min([q for q in positions.queries if q > w] + [length])
    W = (w, min(w + d_conv, end))
    F = (W[1], end)
    markers = tuple(m for m in positions.markers if F[0] <= m < F[1])
    if F[1] - F[0] - len(markers) < 1:
        return None
    return Windows(write=W, filler=F, markers=markers)


@dataclass(frozen=True)
class DeltaRatio:
    write: np.ndarray           # [U] max over W of Δ (batch mean per step)
    write_step: np.ndarray      # [U] the step t in W where that max is
    filler_median: np.ndarray   # [U]
    filler_mean: np.ndarray     # [U] (the decay over n steps is exp(A·n·mean Δ), so horizons use the mean)
    ratio: np.ndarray           # [U] write / filler_median


def delta_ratio(delta: np.ndarray, win: Windows) -> DeltaRatio:
    """delta: [L, U] or [B, L, U] (Δ after softplus) -> DeltaRatio per unit (see the module docstring)."""
    d = np.asarray(delta, dtype=np.float64)
    if d.ndim == 2:
        d = d[None]                                                           # [B, L, U]
    (W0, W1), (F0, F1) = win.write, win.filler
    w = d[:, W0:W1].mean(0)                                                   # [W, U]
    keep = np.setdiff1d(np.arange(F0, F1), win.markers)
    f = d[:, keep].reshape(-1, d.shape[-1])                                   # [B * |F|, U]
    med = np.median(f, axis=0)
    top = w.max(0)
    return DeltaRatio(write=top, write_step=W0 + w.argmax(0), filler_median=med, filler_mean=f.mean(0),
                      ratio=top / np.maximum(med, TINY))


def memory_channels(ratio: np.ndarray, k: int = 16, min_ratio: float = 0.0) -> list:
    """Unit ids with the largest Δ ratio, largest first (ties in index order): at most k, each with
    ratio > min_ratio."""
    order = np.argsort(-np.asarray(ratio), kind="stable")
    return [int(c) for c in order[:k] if ratio[c] > min_ratio]


def unit_order(ratio: Optional[np.ndarray], n_units: int, sort: str) -> list:
    """Unit ids in display order: 'index' (0..U-1) or 'ratio' (Δ ratio, largest first, ties in
    index order); without a Δ ratio, index order."""
    if sort not in ("index", "ratio"):
        raise ValueError(f"unknown channel sort {sort!r}; choose 'index' or 'ratio'")
    if sort == "index" or ratio is None:
        return list(range(n_units))
    return np.argsort(-np.asarray(ratio), kind="stable").tolist()


def layer_ratios(deltas: Sequence[np.ndarray], positions: Positions, d_conv: int, write: int = 0) -> Optional[list]:
    """[DeltaRatio per layer] for one sequence's (or batch's) Δ [.., L, U] per layer, or None
    without a write and filler (see `windows`)."""
    L = np.asarray(deltas[0]).shape[-2]
    win = windows(positions, L, d_conv, write)
    return None if win is None else [delta_ratio(d, win) for d in deltas]
