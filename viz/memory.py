"""Charts of many memories (numbers from analysis/memory_lab.py, as numpy): when each write enters a
layer's state and how much of it is left, which units hold it when it is recalled, and what
clamping one write costs every memory; plus MQAR's capacity curves.

    retention_chart(retained [K, T], times [T], memory_labels)       memory x time heatmap
    holders_chart(holders [K, U], memory_labels, unit="channel")      memory x unit heatmap (top units)
    clamp_chart(acc [K + 1, K], memory_labels)                       clamped write x recalled memory
    capacity_chart(rows)                                             accuracy vs pairs, one line per size
"""
from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from .inline import inline_csv

WIDTH = 640
ROW_PX = 14
MAX_UNITS_SHOWN = 48        # holders: the units with the largest holding, the rest summed in one column
FLOOR = 1e-12               # log colour scales start here (a write's term before it is written is 0)


def memory_labels(writes: Sequence[int], tokens: Sequence[int], token_labels) -> list:
    """'#i t=w: label' per write (the write step and the token written)."""
    return [f"#{i + 1} t={int(w)}: {token_labels[int(tokens[int(w)])]}" for i, w in enumerate(writes)]


def retention_chart(retained: np.ndarray, times: np.ndarray, labels: Sequence[str], recall=None,
                    title: str = "Each write's part of the state") -> alt.LayerChart:
    """retained [K, T]: the norm of write k's term in the layer's state at times[t] (log colour);
    recall [K] (optional): the step that asks for each memory, ringed. (Lists work too: figures.json.)"""
    retained, times = np.asarray(retained, dtype=np.float64), np.asarray(times, dtype=np.int64)
    K, T = retained.shape
    t_end = np.append(times[1:], times[-1] + 1)
    frame = pd.DataFrame({"memory": np.repeat(list(labels), T), "t": np.tile(times, K),
                          "t_end": np.tile(t_end, K), "norm": np.maximum(retained.reshape(-1), FLOOR)})
    frame = frame[retained.reshape(-1) > 0]
    y = alt.Y("memory:O", sort=list(labels), title="memory (write step: token)")
    cells = alt.Chart(inline_csv(frame, numeric=("t", "t_end", "norm")), width=WIDTH, height=ROW_PX * K).mark_rect(
    ).encode(x=alt.X("t:Q", title="timestep t", scale=alt.Scale(domain=[0, int(times[-1]) + 1], nice=False)),
             x2="t_end", y=y,
             color=alt.Color("norm:Q", title="‖term‖", scale=alt.Scale(type="log", scheme="viridis")),
             tooltip=[alt.Tooltip("memory:N"), alt.Tooltip("t:Q"), alt.Tooltip("norm:Q", title="‖term‖", format=".3g")])
    layers = [cells]
    if recall is not None:
        ring = pd.DataFrame({"memory": list(labels), "t": np.asarray(recall, dtype=np.float64) + 0.5})
        layers.append(alt.Chart(inline_csv(ring, numeric=("t",))).mark_point(
            shape="circle", size=60, color="#f58518", strokeWidth=2).encode(x="t:Q", y=y,
                                                                             tooltip=[alt.Tooltip("t:Q", title="recalled at")]))
    times_note = "every step" if len(times) == int(times[-1]) + 1 else f"{len(times)} time points (each write and recall included)"
    return alt.layer(*layers, title=alt.TitleParams(
        title, subtitle=f"norm over the state of exp(A·ΣΔ)·Δ_w·B_w·x_w, {times_note}; rings: the step that recalls it",
        anchor="start"))


def holders_frame(holders: np.ndarray, labels: Sequence[str], unit: str = "channel",
                  max_units: int = MAX_UNITS_SHOWN) -> tuple:
    """holders [K, U] -> (one row per (memory, unit column): the max_units units with the largest
    holding of any memory, in index order, and one column summing the rest (named with its count);
    the column order)."""
    holders = np.asarray(holders, dtype=np.float64)
    K, U = holders.shape
    top = np.sort(np.argsort(-holders.max(0), kind="stable")[:max_units])
    cols = [f"{unit} {u}" for u in top]
    values = [holders[:, top]]
    if U > len(top):
        rest = np.setdiff1d(np.arange(U), top)
        cols.append(f"other {len(rest)} {unit}s: sum")
        values.append(holders[:, rest].sum(1, keepdims=True))
    v = np.concatenate(values, axis=1)                                   # [K, C]
    return pd.DataFrame({"memory": np.repeat(list(labels), len(cols)), "unit": np.tile(cols, K),
                         "norm": v.reshape(-1)}), cols


def holders_chart(holders: np.ndarray, labels: Sequence[str], unit: str = "channel", what: str = "‖term‖",
                  title: str = "Which units hold each memory when it is recalled",
                  max_units: int = MAX_UNITS_SHOWN) -> alt.Chart:
    """Memory x unit heatmap of holders [K, U] (or reads / share) at each memory's recall step."""
    frame, cols = holders_frame(holders, labels, unit, max_units)
    U = len(holders[0])
    shown = f"all {U} {unit}s" if U <= max_units else f"the {max_units} {unit}s holding most, the other {U - max_units} summed"
    return alt.Chart(inline_csv(frame, numeric=("norm",)), width=WIDTH, height=ROW_PX * len(labels)).mark_rect().encode(
        x=alt.X("unit:O", sort=cols, title=unit, axis=alt.Axis(labelAngle=-60, labelFontSize=8)),
        y=alt.Y("memory:O", sort=list(labels), title="memory"),
        color=alt.Color("norm:Q", title=what, scale=alt.Scale(scheme="greens")),
        tooltip=[alt.Tooltip("memory:N"), alt.Tooltip("unit:N"), alt.Tooltip("norm:Q", title=what, format=".3g")],
    ).properties(title=alt.TitleParams(title, subtitle=f"{what} at the step that recalls the memory; {shown}",
                                       anchor="start"))


def clamp_chart(acc: np.ndarray, labels: Sequence[str], title: str = "Clamp one write, score every memory",
                note: str = "") -> alt.Chart:
    """acc [K + 1, K]: row 0 no clamp, row 1 + i with write i's Δ clamped to 0; column j the
    accuracy of the queries that recall memory j. A diagonal loss with the rest kept = the memory
    lives at its write."""
    acc = np.asarray(acc, dtype=np.float64)
    K = acc.shape[1]
    rows = ["(no clamp)"] + [f"clamp {lab}" for lab in labels]
    frame = pd.DataFrame({"clamped": np.repeat(rows, K), "memory": np.tile(list(labels), K + 1),
                          "acc": acc.reshape(-1)}).dropna()
    return alt.Chart(inline_csv(frame, numeric=("acc",)), width=min(WIDTH, 28 * K + 80),
                     height=ROW_PX * (K + 1)).mark_rect().encode(
        x=alt.X("memory:O", sort=list(labels), title="recalled memory", axis=alt.Axis(labelAngle=-60)),
        y=alt.Y("clamped:O", sort=rows, title=None),
        color=alt.Color("acc:Q", title="accuracy", scale=alt.Scale(scheme="redblue", domain=[0, 1])),
        tooltip=[alt.Tooltip("clamped:N"), alt.Tooltip("memory:N"), alt.Tooltip("acc:Q", format=".3f")],
    ).properties(title=alt.TitleParams(title, subtitle=note or "Δ = 0 over the write window of one memory (no input "
                                       "enters there); colour: share of that memory's queries answered right",
                                       anchor="start"))


def capacity_chart(pairs: Sequence[int], accuracy: Sequence[float], size: Sequence[str],
                   title: str = "MQAR: accuracy vs key-value pairs") -> alt.Chart:
    """One line per model size (`size`, e.g. 'd_state 8'): accuracy over the number of pairs D."""
    frame = pd.DataFrame({"pairs": np.asarray(pairs, dtype=np.int64), "accuracy": np.asarray(accuracy, dtype=float),
                          "size": list(size)})
    return alt.Chart(frame, width=420, height=260).mark_line(point=True).encode(
        x=alt.X("pairs:Q", title="key-value pairs D", scale=alt.Scale(type="log", base=2)),
        y=alt.Y("accuracy:Q", title="queries answered right", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("size:N", title="model", sort=list(dict.fromkeys(size))),
        tooltip=["size:N", "pairs:Q", alt.Tooltip("accuracy:Q", format=".3f")],
    ).properties(title=title)
