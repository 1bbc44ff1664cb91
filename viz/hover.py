"""The pointer readout of an image heatmap (viz/charts.py channel_heatmap): which cell is under
the pointer, outlined, and a label beside it with t, token, channel (or head) and the value(s).

Vega-Lite has no plain pointer-position param and the heatmap is one image, not a scene item per
cell, so the readout is built from two parts:
- `selection`: an interval selection restarted whenever the pointer enters an item and grown with
  it, so its pixel signals ({param}_x, {param}_y = [anchor, current]) always end at the pointer;
- `params`: every cell's value as top-level params ('|'-joined strings split once on the page);
then `readout` maps the pixel to a cell with Vega expressions and draws [outline, halo, label].
"""
from __future__ import annotations

import altair as alt
import pandas as pd

from .frames import Bins
from .inline import csv_column


def param_name(view_name: str) -> str:
    return f"hover_{view_name}"


def cells_name(view_name: str) -> str:
    return f"cells_{view_name}"


def selection(view_name: str) -> alt.TopLevelSelectionParameter:
    """Where the pointer is in one heatmap. No clear event: the pointer crossing the readout's
    own marks would clear it; the last cell stays marked."""
    return alt.TopLevelSelectionParameter(
        name=param_name(view_name), views=[view_name],
        select=alt.IntervalSelectionConfig(type="interval", encodings=["x", "y"],
                                           on="[pointerover, pointerout] > pointermove",
                                           translate=False, zoom=False,
                                           mark=alt.BrushConfig(fillOpacity=0, strokeOpacity=0)))


def params(frame: pd.DataFrame, tokens: pd.DataFrame, order: list, name: str, labels=None) -> list:
    """Every cell of one heatmap for its readout, as top-level params (the readout's expressions
    see them): {cells}_max[, _mean] [n_bins * D] time-major, {cells}_time and _token per bin,
    {cells}_order per row. Each travels as one '|'-joined string and is split once on the page:
    as JSON number lists Altair copied and serialised them for ~1.5 s.
    labels: what to call each row in the readout (e.g. 'layer 3', 'other 1520 channels: mean'), in
    `order`'s order; None = the unit and its id. A '|' in a label or token becomes '¦' (the joiner)."""
    cells = cells_name(name)
    def bar(xs) -> list:
        return [str(x).replace("|", "¦") for x in xs]
    cols = {"order": map(str, order), "time": tokens["time"], "token": bar(tokens["token"]),
            **({"label": bar(labels)} if labels is not None else {}),
            **{s_: csv_column(frame[s_]) for s_ in ("max", "mean") if s_ in frame.columns}}
    out = []
    for key, items in cols.items():
        out.append(alt.VariableParameter(name=f"{cells}_{key}_text", value="|".join(items)))
        out.append(alt.VariableParameter(name=f"{cells}_{key}", expr=f"split({cells}_{key}_text, '|')"))
    return out


def readout(frame: pd.DataFrame, bins: Bins, order: list, name: str, what: str, width: int, row_px: int,
            unit: str = "channel", labels: bool = False) -> list:
    """[outline, halo, label] unit charts for the heatmap view `name` (layer them over it).

    Pixel -> cell: x spans [t0, t1] over `width` px, bins are `bins.width` steps from t0; rows
    are `row_px` apart, row r shows unit order[r] (a channel, or a head: `unit` labels it; with
    `labels`, the row's label param from `params(labels=...)` names it instead)."""
    D, nb = len(order), len(bins.start)
    px_per_step = width / (bins.t1 - bins.t0)
    hx, hy, cells = f"{param_name(name)}_x", f"{param_name(name)}_y", cells_name(name)
    on = f"length({hx}) == 2 && length({hy}) == 2"
    col = f"clamp(floor({hx}[1] / {px_per_step * bins.width}), 0, {nb - 1})"
    row = f"clamp(floor({hy}[1] / {row_px}), 0, {D - 1})"
    ch = f"toNumber({cells}_order[{row}])"
    idx = f"{col} * {frame['channel'].nunique()} + {ch}"
    value = f"'{what} ' + {cells}_max[{idx}]"
    if "mean" in frame.columns:             # a bin of several steps, or a row of several units
        value = f"'{what} max ' + {cells}_max[{idx}] + ', mean ' + {cells}_mean[{idx}]"
    who = f"{cells}_label[{row}]" if labels else f"'{unit} ' + {ch}"
    text = (f"{on} ? ['t ' + {cells}_time[{col}] + ' · token ' + {cells}_token[{col}], "
            f"{who} + ' · ' + {value}] : ''")
    x0 = f"{col} * {px_per_step * bins.width}"
    # off the heatmap: a zero-size box at the origin and an empty label (anything placed outside
    # the plot would grow the view: autosize counts every mark's bounds)
    box = {"type": "rect", "fill": None, "stroke": "black", "strokeWidth": 1.5,
           "strokeOpacity": {"expr": f"{on} ? 1 : 0"},
           "x": {"expr": f"{on} ? {x0} : 0"},
           "x2": {"expr": f"{on} ? min({width}, {x0} + {px_per_step * bins.width}) : 0"},
           "y": {"expr": f"{on} ? {row} * {row_px} : 0"},
           "y2": {"expr": f"{on} ? {row} * {row_px} + {row_px} : 0"}}
    # the label turns towards the inside near the right and top edges (a label outside the plot
    # would also grow the view while hovering)
    right, top = f"{on} && {hx}[1] > {width * 0.6}", f"{on} && {hy}[1] < 32"
    label = {"type": "text", "fontSize": 12,
             "align": {"expr": f"{right} ? 'right' : 'left'"}, "dx": {"expr": f"{right} ? -12 : 12"},
             "baseline": {"expr": f"{top} ? 'top' : 'bottom'"}, "dy": {"expr": f"{top} ? 14 : -6"},
             "x": {"expr": f"{on} ? {hx}[1] : 0"}, "y": {"expr": f"{on} ? {hy}[1] : 0"},
             "text": {"expr": text}}
    one = alt.InlineData(values=[{}])
    halo = {**label, "fill": "white", "stroke": "white", "strokeWidth": 4, "strokeJoin": "round"}   # legible anywhere
    return [alt.Chart(one, mark=box), alt.Chart(one, mark=halo), alt.Chart(one, mark=label)]
