"""Charts of two inputs and of activation patching (numbers from analysis/patching.py, as numpy).

    difference_chart(p_clean_t, p_corrupted_t, delta_diff, norm_diff)   # how the two runs differ over t
    patching_heatmap(p, positions, groups, p_clean, p_corrupted, kind=...)   # layer x position, per group

Time is binned as in the dashboard (viz/frames.time_bins: max of |difference| per bin, nothing
dropped); the data goes to the page as inline CSV (viz/inline.py).
"""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from .frames import time_bins
from .inline import inline_csv

WIDTH = 640
MAX_BINS = 256
RUN_COLORS = {"clean": "#4c78a8", "corrupted": "#d62728"}
KIND_NAMES = {"state": "state h_t", "delta": "Δ_t", "output": "layer output at t"}


def difference_frame(p_clean: np.ndarray, p_corrupted: np.ndarray, delta_diff: np.ndarray,
                     norm_diff: np.ndarray, max_bins: int = MAX_BINS) -> tuple:
    """-> (rows t, t_end, panel, series, value; the bin width). Panels: p(target) of each run (bin max),
    and per layer the largest |Δ difference| and |‖h‖ difference| over units (bin max).
    p_*: [L]; delta_diff, norm_diff: [n_layer, L, U]."""
    L = int(np.asarray(p_clean).shape[0])
    bins = time_bins(0, L, max_bins)
    parts = []

    def add(panel, series, x):
        vmax, _ = bins.reduce(np.asarray(x, dtype=np.float64))
        parts.append(pd.DataFrame({"t": bins.start, "t_end": bins.end, "panel": panel, "series": series,
                                   "value": vmax}))

    add("p(target)", "clean", p_clean)
    add("p(target)", "corrupted", p_corrupted)
    for i in range(delta_diff.shape[0]):
        add("max |Δ corrupted - Δ clean| over units", f"layer {i + 1}", np.abs(delta_diff[i]).max(axis=1))
        add("max |‖h‖ corrupted - ‖h‖ clean| over units", f"layer {i + 1}", np.abs(norm_diff[i]).max(axis=1))
    return pd.concat(parts, ignore_index=True), bins.width


def difference_chart(p_clean, p_corrupted, delta_diff, norm_diff, title: str = "Clean vs corrupted",
                     max_bins: int = MAX_BINS) -> alt.VConcatChart:
    """Three panels over t: p(target) of both runs, the Δ difference and the state-norm difference per layer."""
    frame, width = difference_frame(p_clean, p_corrupted, delta_diff, norm_diff, max_bins)
    note = "per timestep" if width == 1 else f"max over {width}-step bins"
    L = int(np.asarray(p_clean).shape[0])
    panels = []
    for panel in dict.fromkeys(frame["panel"]):
        part = frame[frame["panel"] == panel]
        color = (alt.Color("series:N", title=None, scale=alt.Scale(domain=list(RUN_COLORS),
                                                                 range=list(RUN_COLORS.values())))
                 if panel == "p(target)" else alt.Color("series:N", title=None))
        panels.append(alt.Chart(inline_csv(part, numeric=("t", "t_end", "value")),
                                mark=alt.MarkDef(type="line", interpolate="step-after"), width=WIDTH, height=110,
                                title=panel).encode(
            x=alt.X("t:Q", title="timestep t", scale=alt.Scale(domain=[0, L], nice=False, zero=False)),
            y=alt.Y("value:Q", title=None), color=color,
            tooltip=[alt.Tooltip("t:Q", title="t (bin start)" if width > 1 else "t"), alt.Tooltip("series:N"),
                     alt.Tooltip("value:Q", format=".4g")]))
    return alt.vconcat(*panels, title=alt.TitleParams(f"{title} ({note})", anchor="start"),
                       resolve=alt.Resolve(scale=alt.ScaleResolveMap(color="independent")))


def patching_frame(p: np.ndarray, positions: np.ndarray, groups, p_clean: float, p_corrupted: float) -> pd.DataFrame:
    """p [n_layer, n_groups, T] -> one row per cell: layer, group, t, t_end (the next patched step), p,
    recovered ((p - p_corrupted) / (p_clean - p_corrupted), empty when the runs agree)."""
    n_layer, G, T = p.shape
    pos = np.asarray(positions, dtype=np.int64)
    ends = np.append(pos[1:], pos[-1] + 1)
    gap = p_clean - p_corrupted
    rec = (p - p_corrupted) / gap if abs(gap) > 1e-6 else np.full_like(p, np.nan)
    return pd.DataFrame({"layer": np.repeat([f"layer {i + 1}" for i in range(n_layer)], G * T),
                         "group": np.tile(np.repeat(list(groups), T), n_layer),
                         "t": np.tile(pos, n_layer * G), "t_end": np.tile(ends, n_layer * G),
                         "p": p.reshape(-1), "recovered": rec.reshape(-1)})


def patching_heatmap(p: np.ndarray, positions, groups, p_clean: float, p_corrupted: float, kind: str = "state",
                     title: str = "Activation patching") -> alt.HConcatChart:
    """Layer x position heatmaps of p(clean target) after restoring the clean activation at (layer, t),
    one per channel group side by side; colour 0..1 (blues), the same scale in every group."""
    frame = patching_frame(p, positions, groups, p_clean, p_corrupted)
    T = len(positions)
    width = max(160, min(WIDTH, (WIDTH + 40) // len(groups) - 40))
    charts = []
    for g in groups:
        part = frame[frame["group"] == g]
        charts.append(alt.Chart(inline_csv(part, numeric=("t", "t_end", "p", "recovered")), mark="rect",
                                width=width, height=28 * p.shape[0], title=f"channels: {g}").encode(
            x=alt.X("t:Q", title="patched step t", scale=alt.Scale(domain=[int(positions[0]), int(positions[-1]) + 1],
                                                                    nice=False, zero=False)),
            x2=alt.X2("t_end"),
            y=alt.Y("layer:O", title=None),
            color=alt.Color("p:Q", title="p(target)", scale=alt.Scale(scheme="blues", domain=[0, 1])),
            tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("group:N", title="channels"), alt.Tooltip("t:Q"),
                     alt.Tooltip("p:Q", title="p(target) patched", format=".4g"),
                     alt.Tooltip("recovered:Q", title="recovered fraction", format=".3f")]))
    subtitle = (f"restoring the clean {KIND_NAMES.get(kind, kind)} at (layer, t) in the corrupted run; "
                f"p(target): clean {p_clean:.3g}, corrupted {p_corrupted:.3g}; {T} positions")
    return alt.hconcat(*charts, title=alt.TitleParams(title, subtitle=subtitle, anchor="start"))
