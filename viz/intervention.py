"""p(target) at every step before vs after an intervention (the Mechanism tab), binned in time as
the dashboard is, so that every length up to 2^16 draws: nothing is sampled, the binning is named.

    p_target_chart(before, after, title="p(M) before vs after clamp Δ")     # before, after: [L]

The data travels as inline CSV (viz/inline.py): Altair's 5,000-row limit on DataFrames, which
failed above 2,500 steps, does not apply; the bins bound the size (2 runs x MAX_BINS x 2 stats).
"""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from .frames import time_bins
from .inline import inline_csv

MAX_BINS = 1024              # per timestep up to 1,024 steps; max and mean per bin beyond
RUNS = ("before", "after")


def p_target_frame(before: np.ndarray, after: np.ndarray, max_bins: int = MAX_BINS) -> tuple:
    """before, after [L] -> (rows t, t_end, run, stat, value; the bin width). stat is 'value' at
    width 1, else 'max' and 'mean' of each bin (frames.time_bins: every step in one bin)."""
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 1:
        raise ValueError(f"before and after must be [L] alike, got {before.shape} and {after.shape}")
    bins = time_bins(0, before.shape[0], max_bins)
    parts = []
    for run, x in zip(RUNS, (before, after)):
        vmax, vmean = bins.reduce(x)                                    # [n_bins] each
        stats = {"value": vmax} if bins.width == 1 else {"max": vmax, "mean": vmean}
        for stat, v in stats.items():
            parts.append(pd.DataFrame({"t": bins.start, "t_end": bins.end, "run": run, "stat": stat, "value": v}))
    return pd.concat(parts, ignore_index=True), bins.width


def p_target_chart(before: np.ndarray, after: np.ndarray, title: str = "p(target) before vs after",
                   y_title: str = "p(target)", max_bins: int = MAX_BINS) -> alt.Chart:
    """Two lines over t (before blue, after red); binned: solid = bin max, dashed = bin mean."""
    frame, width = p_target_frame(before, after, max_bins)
    note = "per timestep" if width == 1 else f"max and mean over {width}-step bins; solid = max, dashed = mean"
    L = int(np.asarray(before).shape[0])
    return alt.Chart(inline_csv(frame, numeric=("t", "t_end", "value")), mark=alt.MarkDef(
        type="line", interpolate="step-after"), width=640, height=180, title=f"{title} ({note})").encode(
        x=alt.X("t:Q", title="timestep t", scale=alt.Scale(domain=[0, L], nice=False, zero=False)),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title=y_title),
        color=alt.Color("run:N", sort=list(RUNS), scale=alt.Scale(domain=list(RUNS), range=["#4c78a8", "#d62728"])),
        strokeDash=alt.StrokeDash("stat:N", legend=None, scale=alt.Scale(domain=["value", "max", "mean"],
                                                                          range=[[1, 0], [1, 0], [4, 3]])),
        tooltip=[alt.Tooltip("run:N"), alt.Tooltip("t:Q", title="t (bin start)" if width > 1 else "t"),
                 alt.Tooltip("stat:N"), alt.Tooltip("value:Q", title=y_title, format=".3g")],
    )
