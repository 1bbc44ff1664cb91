"""Views for deep and wide models (24-64 layers, 1536-5120 channels): a layer x time overview and
the top-k units of a layer by a named score, the rest summarised as one named row. numpy, pandas
and Altair only (through viz/charts.py).

    rows, views, params = overview_rows(view, bins, tokens, "max", shown=[0, 11, 23])
    kept = top_units(unit_scores("max_delta", delta, norm, t0, t1), k=64)     # unit ids, best first
    values, labels = keep_top(delta, kept, "channel")                        # [L, 65], 65 row names

Nothing is sampled away: every layer is a row of the overview (its value an aggregation over all
of the layer's units, named in the title), and the units outside the top-k are one row holding
their mean at every step, named 'other N channels: mean'.
"""
from __future__ import annotations

from typing import Optional

import altair as alt
import numpy as np
import pandas as pd

from . import charts
from .frames import Bins, TraceView, heatmap_frame, total_state_norm

TOP_UNITS = 64               # units drawn one by one when a layer is filtered
OVERVIEW_MIN_LAYERS = 5      # the overview is drawn for models deeper than the 4 layers shown by default
# score name -> what it is, as the charts' titles name it (over the time window shown)
SCORES = {"ratio": "Δ ratio", "max_delta": "max Δ", "state_norm": "max state norm", "variance": "variance of Δ"}


def unit_scores(kind: str, delta: np.ndarray, state_norm: np.ndarray, t0: int, t1: int,
                ratio: Optional[np.ndarray] = None) -> np.ndarray:
    """[U] score per unit: delta, state_norm [L, U] over the window [t0, t1); ratio [U] (the task's Δ
    ratio, tasks.measures) or None where the sequence has no write position."""
    if kind not in SCORES:
        raise ValueError(f"unknown unit score {kind!r}; choose one of {', '.join(SCORES)}")
    if kind == "ratio":
        if ratio is None:
            raise ValueError("the Δ ratio needs a write position and filler after it (a task's sequence); "
                             "rank by max Δ, state norm or variance instead")
        return np.asarray(ratio, dtype=np.float64)
    if kind == "max_delta":
        return np.asarray(delta[t0:t1], dtype=np.float64).max(axis=0)
    if kind == "state_norm":
        return np.asarray(state_norm[t0:t1], dtype=np.float64).max(axis=0)
    return np.asarray(delta[t0:t1], dtype=np.float64).var(axis=0)


def top_units(score: np.ndarray, k: int) -> list:
    """The k unit ids of the largest score, largest first (ties in index order; NaN last)."""
    s = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    return np.argsort(-s, kind="stable")[:k].tolist()


def rest_name(n_rest: int, unit: str) -> str:
    return f"other {n_rest} {unit}s: mean"


def keep_top(values: np.ndarray, kept: list, unit: str) -> tuple:
    """values [L, U] -> ([L, k + 1] the kept units' columns then the mean of the other U - k at every
    step, [k + 1] row labels); ([L, U], labels) when every unit is kept."""
    U = values.shape[1]
    labels = [f"{unit} {c}" for c in kept]
    rest = np.setdiff1d(np.arange(U), kept)                          # [U - k]
    if rest.size == 0:
        return values[:, kept], labels
    mean_rest = np.asarray(values, dtype=np.float64)[:, rest].mean(axis=1, keepdims=True)   # [L, 1]
    return np.concatenate([values[:, kept], mean_rest.astype(values.dtype)], axis=1), \
        labels + [rest_name(rest.size, unit)]


def layer_summaries(view: TraceView) -> tuple:
    """([L, n_layer] mean Δ over each layer's units, [L, n_layer] total state norm ‖h_t‖ per layer)."""
    mean_delta = np.stack([np.asarray(d, dtype=np.float64).mean(axis=1) for d in view.delta], axis=1)
    total = np.stack([total_state_norm(n) for n in view.state_norm], axis=1)
    return mean_delta, total


def overview_rows(view: TraceView, bins: Bins, tokens, stat: str, shown: list) -> tuple:
    """The layer x time overview: two heatmaps, layer on y (layer 1 on top). Returns (rows, view
    names for the time selection, top-level params)."""
    mean_delta, total = layer_summaries(view)
    order = list(range(view.n_layer))
    labels = [f"layer {i + 1}" for i in order]
    detail = f" · detailed below: layers {', '.join(str(i + 1) for i in shown)}"
    rows, params = [], []
    for values, name, title, what, scheme in (
            (mean_delta, "overview_delta", f"Overview: mean Δ over the {view.n_units} {view.unit}s of each layer",
             "mean Δ", "viridis"),
            (total, "overview_norm", f"Overview: total state norm ‖h_t‖ of each layer (over all {view.unit}s)",
             "‖h_t‖", "magma")):
        layer, p = charts.channel_heatmap(heatmap_frame(values, bins), tokens, bins, order, title + detail, what,
                                          name, stat, scheme, unit="layer", labels=labels)
        rows.append(alt.hconcat(layer))
        params += p
    return rows, ["overview_delta", "overview_norm"], params


def ratio_rows(frame, kept: list):
    """A layer's Δ-ratio frame (frames.ratio_frame, [U] rows) -> the kept units' rows then one row of
    the others' medians, `channel` renumbered to the filtered heatmap's rows and `name` naming each."""
    rest = frame.drop(index=kept)
    top = frame.iloc[kept].assign(name=[f"{c}" for c in kept])
    out = [top]
    if len(rest):
        out.append(rest.median().to_frame().T.assign(name=f"other {len(rest)}: median"))
    df = pd.concat(out, ignore_index=True)
    df["channel"] = np.arange(len(df))
    return df
