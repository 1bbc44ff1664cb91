"""The logit lens as a chart (numbers from analysis/lens.py, as numpy): a layer x timestep heatmap
of p(target) read after each layer, with each cell's top-k tokens in its tooltip.

    lens_chart(score, top_ids, top_p, labels, target=13, query=255, first_layer=1)

Time is binned as in the dashboard (viz/frames.time_bins); a binned cell shows the bin's max of
p(target) and the top-k of the bin's step with the largest p(target). A ring marks the query.
"""
from __future__ import annotations

from typing import Optional

import altair as alt
import numpy as np
import pandas as pd

from .frames import time_bins
from .inline import inline_csv

WIDTH = 640
MAX_BINS = 256


def lens_frame(score: np.ndarray, top_ids: np.ndarray, top_p: np.ndarray, labels, target: Optional[int],
               max_bins: int = MAX_BINS) -> tuple:
    """-> (one row per (layer, bin): layer, t, t_end, p (p(target), or p(top-1) without a target), top
    (the top-k as 'S 0.91, 3 0.05'); the bin width). score [n_layer, L] that p (analysis/lens.py's
    Lens.score); top_* [n_layer, L, k]."""
    n_layer, L = score.shape
    bins = time_bins(0, L, max_bins)
    labels = np.asarray(labels, dtype=object)
    rows = []
    all_scores = score
    for i in range(n_layer):
        score = all_scores[i]                                                          # [L]
        idx = bins.start - bins.t0
        best = np.array([s + int(np.argmax(score[s:e])) for s, e in zip(bins.start, bins.end)])   # step per bin
        top = [", ".join(f"{labels[v]} {q:.2f}" for v, q in zip(top_ids[i, t], top_p[i, t])) for t in best]
        rows.append(pd.DataFrame({"layer": f"layer {i + 1}", "t": bins.start, "t_end": bins.end,
                                  "p": np.maximum.reduceat(score.astype(np.float64), idx), "top": top,
                                  "top1": [str(labels[top_ids[i, t, 0]]) for t in best]}))
    return pd.concat(rows, ignore_index=True), bins.width


def lens_chart(score: np.ndarray, top_ids: np.ndarray, top_p: np.ndarray, labels, target: Optional[int] = None,
               query: Optional[int] = None, first_layer: Optional[int] = None,
               title: str = "Logit lens", max_bins: int = MAX_BINS) -> alt.LayerChart:
    """Heatmap of p(target) (p(top-1) without a target) per layer and step; the top-1 token written
    in each cell when there are at most 64 columns; the query ringed."""
    frame, width = lens_frame(score, top_ids, top_p, labels, target, max_bins)
    n_layer, L = score.shape
    what = f"p(target {labels[target]})" if target is not None else "p(top-1)"
    note = "per timestep" if width == 1 else f"max over {width}-step bins"
    base = alt.Chart(inline_csv(frame, numeric=("t", "t_end", "p")), width=WIDTH, height=34 * n_layer).encode(
        x=alt.X("t:Q", title="timestep t", scale=alt.Scale(domain=[0, L], nice=False, zero=False)),
        y=alt.Y("layer:O", title="read after", sort=[f"layer {i + 1}" for i in range(n_layer)]))
    cells = base.mark_rect().encode(
        x2=alt.X2("t_end"),
        color=alt.Color("p:Q", title=what, scale=alt.Scale(scheme="blues", domain=[0, 1])),
        tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("t:Q", title="t (bin start)" if width > 1 else "t"),
                 alt.Tooltip("p:Q", title=what, format=".4g"), alt.Tooltip("top:N", title="top-k")])
    layers = [cells]
    if frame["t"].nunique() <= 64:
        layers.append(base.mark_text(fontSize=9, dx=0).encode(
            x=alt.X("mid:Q"), text=alt.Text("top1:N"),
            color=alt.ColorValue("black", condition={"test": "datum.p > 0.5", "value": "white"})).transform_calculate(
            mid="(datum.t + datum.t_end) / 2"))
    if query is not None:
        ring = pd.DataFrame({"layer": [f"layer {i + 1}" for i in range(n_layer)], "t": query + 0.5})
        layers.append(alt.Chart(inline_csv(ring, numeric=("t",))).mark_point(shape="circle", size=120, color="#f58518",
                                                                             strokeWidth=2).encode(
            x="t:Q", y=alt.Y("layer:O", sort=[f"layer {i + 1}" for i in range(n_layer)])))
    if target is None:
        found = ""
    elif first_layer is None:
        found = f"; the answer {labels[target]} is the top-1 at the query after no layer"
    else:
        found = f"; the answer {labels[target]} is first the top-1 at the query after layer {first_layer + 1}"
    return alt.layer(*layers, title=alt.TitleParams(f"{title}: {what} read after each layer ({note})",
                                                    subtitle=f"residual stream → norm_f → head{found}",
                                                    anchor="start"))
