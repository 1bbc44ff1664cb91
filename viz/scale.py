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

import numpy as np
import pandas as pd

from . import charts
from .frames import Bins, TraceView, heatmap_frame, total_state_norm

TOP_UNITS = 64               # units drawn one by one when a layer is filtered
# a heatmap in index order draws at most this many rows (our 2-layer Mamba-1: 128 channels, one
# each); a wider layer pools runs of consecutive units per row. Drawing mamba-130m's 1,536 channels
# one per row made each heatmap 3,072 px tall and the page's spec 61 MB (every cell's value travels
# for the pointer readout), 12.1 s of 12.5 s server time in the charts, not the model
MAX_UNIT_ROWS = 128
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


def pool_size(n_units: int, max_rows: int = MAX_UNIT_ROWS) -> int:
    """Units per row so that n_units fit in max_rows rows (1: one unit per row)."""
    return max(1, -(-n_units // max_rows))


def pool_units(values: np.ndarray, group: int, unit: str) -> tuple:
    """values [L, U] -> ([L, G] max and [L, G] mean over each run of `group` consecutive units (the
    last run may be shorter: its mean divides by its own count), [G] row labels 'channels 0–11').
    Every unit is in exactly one row: nothing is dropped."""
    x = np.asarray(values, dtype=np.float64)
    U = x.shape[1]
    start = np.arange(0, U, group)                                   # [G]
    end = np.minimum(start + group, U)
    vmax = np.maximum.reduceat(x, start, axis=1)
    vmean = np.add.reduceat(x, start, axis=1) / (end - start)
    return vmax, vmean, [run_label(a, b, unit) for a, b in zip(start.tolist(), end.tolist())]


def run_label(a: int, b: int, unit: str) -> str:
    """The units [a, b) as a row's name: 'channels 0–11', or 'channel 12' for one."""
    return f"{unit} {a}" if b - a == 1 else f"{unit}s {a}–{b - 1}"


def layer_summaries(view: TraceView) -> tuple:
    """([L, n_layer] mean Δ over each layer's units, [L, n_layer] total state norm ‖h_t‖ per layer)."""
    mean_delta = np.stack([np.asarray(d, dtype=np.float64).mean(axis=1) for d in view.delta], axis=1)
    total = np.stack([total_state_norm(n) for n in view.state_norm], axis=1)
    return mean_delta, total


def overview_rows(view: TraceView, bins: Bins, tokens, stat: str, shown: list, links: Optional[list] = None) -> tuple:
    """The layer x time overview: two heatmaps, layer on y (layer 1 on top). links: one URL per
    layer, opened by a click on its row (None: no links). Returns (rows, view names for the time
    selection, top-level params)."""
    mean_delta, total = layer_summaries(view)
    order = list(range(view.n_layer))
    labels = [f"layer {i + 1}" for i in order]
    detail = f" · detailed below: layers {', '.join(str(i + 1) for i in shown)}" + \
        ("" if links is None else " (click a layer to add it)")
    rows, params = [], []
    for values, name, title, what, scheme in (
            (mean_delta, "overview_delta", f"Overview: mean Δ over the {view.n_units} {view.unit}s of each layer",
             "mean Δ", "viridis"),
            (total, "overview_norm", f"Overview: total state norm ‖h_t‖ of each layer (over all {view.unit}s)",
             "‖h_t‖", "magma")):
        layer, p = charts.channel_heatmap(heatmap_frame(values, bins), tokens, bins, order, title + detail, what,
                                          name, stat, scheme, unit="layer", labels=labels, links=links)
        rows.append(charts.stack("h", layer))
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


def ratio_pooled(frame, group: int, unit: str):
    """A layer's Δ-ratio frame (frames.ratio_frame, [U] rows) -> one row per run of `group` units
    (pool_units' rows): the run's unit of the largest ratio, `name` saying which."""
    run = frame["channel"].to_numpy() // group
    best = frame.assign(run=run).sort_values(["run", "ratio"], ascending=[True, False], kind="stable") \
        .drop_duplicates("run")
    U = len(frame)
    best["name"] = [f"{run_label(r * group, min(U, (r + 1) * group), unit)}: max at {c}"
                    for r, c in zip(best["run"].tolist(), best["channel"].tolist())]
    return best.drop(columns="run").assign(channel=np.arange(len(best))).reset_index(drop=True)
