"""Charts of the induction mechanism (analysis/): numpy in, alt.Chart out, one function per chart.

    from viz.mechanism import delta_ratio_chart, hidden_attention_chart
    delta_ratio_chart(ratio, label="trained", highlight=[(1, 88)])     # ratio: [n_layer, D]

No torch, no gradio, no model: the app's Mechanism tab and `python -m viz.figures` (the report's
figures, written as data by analysis/report.py) both call these with plain arrays or JSON lists.
Encodings name their types explicitly (channel:Q, ratio:Q, ...).
"""
from __future__ import annotations

from typing import Optional, Sequence

import altair as alt
import numpy as np
import pandas as pd

# tasks/measures.py's definition, in words (its module docstring)
DELTA_RATIO_TITLE = "max Δ over the write window / median Δ over the filler after it"
MEMORY, OTHER = "memory channel", "other channel"


def highlight_mask(highlight, n_layer: int, n_channels: int) -> np.ndarray:
    """(layer, channel) pairs -> bool [n_layer, n_channels]. Pairs may be tuples, lists or an int
    array [k, 2] (numpy or Python ints alike: matched by index, never by hashing a key);
    0-based, each checked against the chart's shape."""
    mask = np.zeros((n_layer, n_channels), dtype=bool)
    pairs = np.asarray(list(highlight) if not isinstance(highlight, np.ndarray) else highlight).reshape(-1, 2)
    if pairs.size and not np.all(pairs == np.round(pairs)):
        raise ValueError(f"highlight pairs must be whole (layer, channel) numbers, got {pairs.tolist()}")
    pairs = pairs.astype(np.int64)
    bad = (pairs[:, 0] < 0) | (pairs[:, 0] >= n_layer) | (pairs[:, 1] < 0) | (pairs[:, 1] >= n_channels)
    if bad.any():
        a, c = pairs[np.argmax(bad)]
        raise ValueError(f"highlight (layer {a}, channel {c}) is outside {n_layer} layers x {n_channels} channels")
    mask[pairs[:, 0], pairs[:, 1]] = True
    return mask


def delta_ratio_chart(ratio: np.ndarray, label: str = "", highlight: Sequence = (), unit: str = "channel") -> alt.Chart:
    """The Δ ratio of tasks/measures.py (max Δ over the write window / median Δ over the filler after
    it) per layer and unit (a Mamba-1 channel, a Mamba-2 head), log scale.

    ratio: [n_layer, U]; highlight: 0-based (layer, unit) pairs drawn as memory units (red);
    without any, every point is one colour and there is no memory legend.
    """
    ratio = np.asarray(ratio, dtype=np.float64)
    L, D = ratio.shape
    mask = highlight_mask(highlight, L, D)
    memory, other = MEMORY.replace("channel", unit), OTHER.replace("channel", unit)
    df = pd.DataFrame({"layer": np.repeat(np.arange(1, L + 1), D), "channel": np.tile(np.arange(D), L),
                       "ratio": np.clip(ratio.ravel(), 1e-3, None),
                       "kind": np.where(mask.ravel(), memory, other)})
    color = (alt.Color("kind:N", title=None, scale=alt.Scale(domain=[other, memory], range=["#9aa5b1", "#d62728"]))
             if mask.any() else alt.value("#9aa5b1"))
    return alt.Chart(df).mark_circle(size=28).encode(
        x=alt.X("channel:Q", title=f"{unit} index"),
        y=alt.Y("ratio:Q", scale=alt.Scale(type="log"), axis=alt.Axis(format="~e"), title="Δ ratio (log)"),
        color=color,
        tooltip=["layer:O", "channel:O", "kind:N", alt.Tooltip("ratio:Q", format=".3g")],
    ).properties(width=320, height=160).facet(row=alt.Row("layer:O", title="layer")).properties(
        title=alt.TitleParams(f"Δ ratio {label}".strip(), subtitle=DELTA_RATIO_TITLE))


def probe_accuracy_chart(acc: np.ndarray, distances: Sequence[int], layer: int, label: str = "",
                         chance: float = 1 / 16, unit: str = "channel") -> alt.Chart:
    """Per-unit linear-probe accuracy for M from the unit's state (a channel's h[d, :], a head's
    h[h, :, :]), at several distances after the write.

    acc: [n_distances, U] for one layer (layer is 0-based; shown 1-based).
    """
    acc = np.asarray(acc, dtype=np.float64)
    T, D = acc.shape
    df = pd.DataFrame({"distance": np.repeat(np.asarray(distances), D), "channel": np.tile(np.arange(D), T),
                       "accuracy": acc.ravel()})
    title = f"probe accuracy for M per {unit}, layer {layer + 1} {label}".strip()
    return alt.Chart(df, title=title).mark_rect().encode(
        x=alt.X("channel:O", title=f"{unit} index", axis=alt.Axis(labels=False, ticks=False)),
        y=alt.Y("distance:O", title="steps after the write"),
        color=alt.Color("accuracy:Q", scale=alt.Scale(domain=[chance, 1.0], scheme="viridis", clamp=True)),
        tooltip=["channel:O", "distance:O", alt.Tooltip("accuracy:Q", format=".2f")],
    ).properties(width=480, height=120)


def state_evolution_chart(series: dict) -> alt.Chart:
    """Memory-channel state out to long distances, one line per checkpoint and quantity.

    series: {checkpoint: {"distance": [n], "<quantity>": [n], ...}}, e.g. quantities "retained ρ",
    "query accuracy"; each checkpoint may have its own distances; NaN = not measured.
    """
    rows = []
    for ck, qs in series.items():
        dist = qs["distance"]
        for q, vals in qs.items():
            if q == "distance":
                continue
            for d, v in zip(dist, vals):
                if v is not None and np.isfinite(v):
                    rows.append({"checkpoint": ck, "quantity": q, "distance": int(d), "value": float(v)})
    df = pd.DataFrame(rows, columns=["checkpoint", "quantity", "distance", "value"])
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("distance:Q", scale=alt.Scale(type="log", base=2), title="steps after the write (log2)"),
        y=alt.Y("value:Q", title=None),
        color=alt.Color("checkpoint:N"),
        tooltip=["checkpoint:N", "quantity:N", "distance:Q", alt.Tooltip("value:Q", format=".3g")],
    ).properties(width=260, height=160).facet(column=alt.Column("quantity:N", title=None)).properties(
        title="memory channels after the write, streaming")


def bin_attention(alpha: np.ndarray, max_bins: int) -> tuple:
    """Block max of |α̃| over w x w squares so that at most max_bins bins remain per axis.

    alpha [L, L] -> (binned [ceil(L/w), ceil(L/w)], w); w = 1 (a copy of |α̃|) when L <= max_bins.
    Max, not mean, so that a single written token stays visible in its block.
    """
    a = np.abs(np.asarray(alpha, dtype=np.float64))
    L = a.shape[0]
    w = max(1, -(-L // max(1, int(max_bins))))                        # ceil(L / max_bins)
    n = -(-L // w)
    pad = np.zeros((n * w, n * w))
    pad[:L, :L] = a
    return pad.reshape(n, w, n, w).max(axis=(1, 3)), w                # [n, n]


def hidden_attention_chart(alpha: np.ndarray, tokens: Optional[Sequence[int]] = None, title: str = "",
                           log: bool = True, floor: float = 1e-12, max_bins: Optional[int] = None) -> alt.Chart:
    """Heatmap of a hidden attention matrix α̃ [L, L] (row i = output time, column j = input time).

    log: colour by log10(|α̃| + floor) so that both the written token and the ~1e-13 leak show.
    max_bins: draw at most max_bins x max_bins cells (block max of |α̃| over w x w steps, cells
    labelled by their first timestep; tokens are then left out); None = every cell.
    """
    a, w = (np.abs(np.asarray(alpha, dtype=np.float64)), 1) if max_bins is None else bin_attention(alpha, max_bins)
    L = a.shape[0]
    i, j = np.tril_indices(L)
    v = a[i, j]
    df = pd.DataFrame({"i": i * w, "j": j * w, "value": np.log10(v + floor) if log else v})
    if w > 1:
        title = f"{title or 'hidden attention'} (max |α̃| over {w}x{w}-step blocks)"
        tokens = None
    if tokens is not None:
        tok = np.asarray(tokens)
        df["token_j"] = tok[j]
    enc = dict(x=alt.X("j:O", title="input time j", axis=alt.Axis(labels=False, ticks=False)),
               y=alt.Y("i:O", title="output time i", axis=alt.Axis(labels=False, ticks=False)),
               color=alt.Color("value:Q", title="log10 |α̃|" if log else "|α̃|", scale=alt.Scale(scheme="magma")),
               tooltip=["i:O", "j:O", alt.Tooltip("value:Q", format=".3g")]
               + (["token_j:O"] if tokens is not None else []))
    return alt.Chart(df, title=title or "hidden attention").mark_rect().encode(**enc).properties(width=260, height=260)


def horizon_chart(names: Sequence[str], predicted: Sequence[float], measured: Sequence[float],
                  measured_is_lower_bound: Sequence[bool]) -> alt.Chart:
    """Horizon predicted by the decay formula exp(-τ Δ_filler |A|) vs measured, per checkpoint (log-log)."""
    df = pd.DataFrame({"checkpoint": list(names), "predicted": np.asarray(predicted, dtype=np.float64),
                       "measured": np.asarray(measured, dtype=np.float64),
                       "measured is a lower bound": list(measured_is_lower_bound)})
    lo = float(np.nanmin(df[["predicted", "measured"]].to_numpy())) / 2
    hi = float(np.nanmax(df[["predicted", "measured"]].to_numpy())) * 2
    diag = alt.Chart(pd.DataFrame({"x": [lo, hi], "y": [lo, hi]})).mark_line(strokeDash=[4, 4], color="gray").encode(
        x=alt.X("x:Q", scale=alt.Scale(type="log")), y=alt.Y("y:Q", scale=alt.Scale(type="log")))
    pts = alt.Chart(df).mark_point(size=90, filled=True).encode(
        x=alt.X("predicted:Q", scale=alt.Scale(type="log"), title="predicted by Δ_filler·|A| decay (tokens)"),
        y=alt.Y("measured:Q", scale=alt.Scale(type="log"), title="measured horizon (tokens)"),
        color=alt.Color("checkpoint:N"), shape=alt.Shape("measured is a lower bound:N"),
        tooltip=["checkpoint:N", alt.Tooltip("predicted:Q", format=".3g"), alt.Tooltip("measured:Q", format=".3g")])
    return (diag + pts).properties(width=300, height=260, title="extrapolation horizon")


def intervention_chart(checkpoint: Sequence[str], intervention: Sequence[str], accuracy: Sequence[float]) -> alt.Chart:
    """Accuracy under each intervention, grouped by checkpoint."""
    df = pd.DataFrame({"checkpoint": list(checkpoint), "intervention": list(intervention),
                       "accuracy": np.asarray(accuracy, dtype=np.float64)})
    return alt.Chart(df, title="accuracy under interventions").mark_bar().encode(
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("intervention:N", sort=None, title=None),
        color=alt.Color("checkpoint:N"),
        yOffset=alt.YOffset("checkpoint:N"),
        tooltip=["checkpoint:N", "intervention:N", alt.Tooltip("accuracy:Q", format=".3f")],
    ).properties(width=300)


def prediction_markdown(rows: Sequence[tuple], labels: Sequence[str]) -> str:
    """A Markdown table of query predictions: rows of (name, top token, p(top), M, p(M), note);
    labels: the task's token labels (tasks.Task.labels), indexed by id."""
    def tok(v) -> str:               # an id outside the labels (another model's vocabulary): shown as its id
        return "–" if v is None else labels[int(v)] if 0 <= int(v) < len(labels) else f"id {int(v)}"

    lines = ["| | top token at the query | p(top) | M | p(M) | |", "|---|---|---|---|---|---|"]
    for name, top, p_top, m, p_m, note in rows:
        pm = "–" if p_m is None else f"{p_m:.3g}"
        lines.append(f"| **{name}** | **{tok(top)}** | {p_top:.3g} | {tok(m)} | {pm} | {note} |")
    return "\n".join(lines)
