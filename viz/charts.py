"""Altair charts of a trace: one function per chart, tidy DataFrames in (viz/frames.py), alt.Chart out.

    chart = dashboard(TraceView.from_trace(tr, INDUCTION, label="induction-2layer"), sort="ratio", max_bins=256)

`dashboard` stacks every chart into one compound chart whose time charts share one interval
selection param (TIME_PARAM, declared at the top with the unit view names that define it): drag
over a time range in any of them and every other one shows it (bins outside it fade in the
heatmaps and the token strip; the line charts draw it strong). The chart functions reference
that param by name, so their output is meant to go into `dashboard`, not to stand alone.

Data on the page: the channel heatmaps are images (viz/raster.py) plus their values as
'|'-joined params for the pointer readout (viz/hover.py): one scene item per heatmap instead of
one per cell, which was most of the browser's drawing time. Every other chart's DataFrame is
handed to Vega-Lite as inline CSV text (viz/inline.py: no row or cell is ever sampled or cut).
The size is bounded by the time binning: at most MAX_BINS_LIMIT bins x channels cells per heatmap.

What the tokens are (labels, roles, the target) comes from the view's task; the Δ ratio beside
each Δ heatmap is tasks.measures' (max Δ over the write window / median Δ over the filler after it).
The heatmaps' rows are the view's units: Mamba-1's channels or Mamba-2's heads (view.unit names
them in the titles, the axis and the readout); a few units get taller rows (unit_px).
"""
from __future__ import annotations

import json
from typing import Optional

import altair as alt
import pandas as pd

from tasks.measures import Windows, unit_order

from . import hover, raster
from .frames import (MAX_BINS_LIMIT, Bins, TraceView, clamp_window, heatmap_frame, prediction_series, prob_frame,
                     ratio_frame, role_names, series_frame, time_bins, token_frame, total_state_norm)
from .inline import inline_csv

TIME_PARAM = "time_range"       # not 'brush': gr.Plot strips a param of that name
WIDTH = 720                     # px of the time axis
CHANNEL_PX = 2                  # px per channel row in the heatmaps
UNITS_MIN_PX = 128              # a heatmap of few units (Mamba-2's 8 heads) is still this tall
VOCAB_PX = 6                    # px per vocabulary row in the predictions heatmap
ROLE_COLORS = ["#d9d9d9", "#f58518", "#4c78a8", "#2ca02c", "#d62728"]    # filler, write, marker, correct, wrong


def unit_px(n_units: int) -> int:
    """px per unit row: CHANNEL_PX for a layer of channels (128 x 2 px), taller rows when there are
    few units (8 heads x 16 px), so a heatmap is at least UNITS_MIN_PX tall."""
    return max(CHANNEL_PX, UNITS_MIN_PX // max(1, n_units))


# what the titles say per unit: (Δ heatmap suffix, state-norm symbol)
UNIT_WORDS = {"channel": ("", "‖h_t[d,:]‖"), "head": (" per head", "‖h_t[head]‖ (over P × N)")}


class _Stacked:
    """A concat or layer built by `stack` or `layered`. Altair's to_dict starts with copy(deep=False),
    which re-runs the constructor and so deep-copies every subchart again (~0.2 s of a mamba-130m
    dashboard's serialisation, one core); these are complete as built, so their shallow copy is a
    new object over the same properties."""

    def copy(self, deep=True, ignore=None):
        if deep is not False:
            return super().copy(deep, ignore)
        out = object.__new__(type(self))
        object.__setattr__(out, "_args", self._args)
        object.__setattr__(out, "_kwds", dict(self._kwds))
        return out


class _VStack(_Stacked, alt.VConcatChart):
    pass


class _HStack(_Stacked, alt.HConcatChart):
    pass


class _Layered(_Stacked, alt.LayerChart):
    pass


def layered(*layers: alt.Chart, **kwargs) -> alt.LayerChart:
    """alt.layer without its deep copy of every layer (~0.1 s of a mamba-130m dashboard: the
    heatmaps' link and readout layers). Altair copies to lift the layers' params and shared data
    and move their width/height/view up; here no layer may hold params, width, height or view (as
    the dashboard's never do), and data every layer shares is lifted the same way."""
    for c in layers:
        if not all(alt.utils.is_undefined(getattr(c, k, alt.Undefined)) for k in ("params", "width", "height", "view")):
            raise ValueError("layered(...) takes layers without params, width, height or view; use alt.layer")
    out = _Layered(**kwargs)
    out.layer = _lift_shared_data(out, layers)
    return out


def _lift_shared_data(parent, subcharts) -> list:
    """What Altair's layer and concat constructors do with data all subcharts share: set it on the
    parent; returns the subcharts, those changed as shallow copies (a new top object, data unset)."""
    data = subcharts[0].data if subcharts else alt.Undefined
    if alt.utils.is_undefined(data) or any(c.data is not data for c in subcharts):
        return list(subcharts)
    subcharts = [c.copy(deep=False) for c in subcharts]
    for c in subcharts:
        c.data = alt.Undefined
    parent.data = data
    return subcharts


def stack(kind: str, *charts: alt.TopLevelMixin, **kwargs):
    """alt.vconcat ("v") or a one-chart alt.hconcat ("h") without Altair's deep copies of every
    subchart, at construction (its _combine_subchart_params; 0.4 s of a mamba-130m dashboard's
    1.7 s, one busy core) and again in to_dict (_Stacked). Those copies exist to lift subcharts'
    params and data and rename repeated views; the dashboard declares its params at the top level
    itself and names every view, and shared data is lifted here, so the spec is the same
    (tests/test_lm_views.py compares it with Altair's own concat)."""
    if kind == "h" and len(charts) != 1:
        raise ValueError("stack('h', ...) wraps one chart; use alt.hconcat for several")
    out = (_VStack if kind == "v" else _HStack)(**kwargs)
    setattr(out, f"{kind}concat", _lift_shared_data(out, charts))
    return out


def time_selection(views: list) -> alt.TopLevelSelectionParameter:
    """The one interval selection over time, defined in each of the named unit `views`.
    Declared once at the top level with explicit view names: Altair's automatic lifting of a
    param added to several subcharts invents view names that repeat across rows (and warns,
    vega/altair#3891)."""
    return alt.TopLevelSelectionParameter(name=TIME_PARAM, views=list(views),
                                          select=alt.IntervalSelectionConfig(type="interval", encodings=["x"]))


def _bin_note(bins: Bins, stat: str = "max") -> str:
    return "per timestep" if bins.width == 1 else f"{stat} over {bins.width}-step bins"


def _x(bins: Bins, title="timestep t") -> alt.X:
    return alt.X("t:Q", title=title, scale=alt.Scale(domain=[bins.t0, bins.t1], nice=False, zero=False))


def _faded_outside() -> alt.OpacityValue:
    """Opacity 1 inside the selected time range (or when nothing is selected), 0.3 outside.
    (A typed channel: the dict that alt.when() builds is re-parsed by Altair, ~50 ms a chart.)"""
    return alt.OpacityValue(0.3, condition={"param": TIME_PARAM, "value": 1.0, "empty": True})


def _value_tooltips(bins: Bins, what: str) -> list:
    if bins.width == 1:
        return [alt.Tooltip("max:Q", title=what, format=".4g")]
    return [alt.Tooltip("max:Q", title=f"{what} (bin max)", format=".4g"),
            alt.Tooltip("mean:Q", title=f"{what} (bin mean)", format=".4g")]


def _join_tokens(chart: alt.Chart, tokens: pd.DataFrame) -> alt.Chart:
    """Add each bin's end, label and token text (from token_frame) to a per-(bin, x) frame."""
    return chart.transform_lookup(lookup="t", from_=alt.LookupData(
        data=inline_csv(tokens[["t", "t_end", "time", "token"]], numeric=("t", "t_end")),
        key="t", fields=["t_end", "time", "token"]))


def token_strip(tokens: pd.DataFrame, bins: Bins, roles: list, name: str = "tokens") -> alt.Chart:
    """The input as a colour strip by role (frames.role_names: the task's filler, write and marker,
    and the query coloured by whether the model's top-1 there is the target: correct or not)."""
    return alt.Chart(inline_csv(tokens, numeric=("t", "t_end")), mark="rect", width=WIDTH, height=24, name=name,
                     title=f"Tokens ({_bin_note(bins, 'most salient role')})").encode(
        x=_x(bins, title=None), x2=alt.X2("t_end"),
        color=alt.Color("role:N", title="token role", scale=alt.Scale(domain=list(roles), range=ROLE_COLORS)),
        opacity=_faded_outside(),
        tooltip=[alt.Tooltip("time:N", title="t"), alt.Tooltip("token:N"), alt.Tooltip("role:N")],
    )


def prediction_heatmap(probs: pd.DataFrame, tokens: pd.DataFrame, bins: Bins, vocab: list,
                       name: str = "predictions") -> alt.Chart:
    """p(next token = v) for every vocabulary entry v (labels `vocab`, in id order) at every
    timestep: the darkest cell of a column is the top-1 prediction there."""
    base = alt.Chart(inline_csv(probs, numeric=("t", "max", "mean")), mark="rect", width=WIDTH,
                     height=VOCAB_PX * len(vocab),
                     name=name,
                     title=f"Predictions: p(next token) ({_bin_note(bins)})")
    return _join_tokens(base, tokens).encode(
        x=_x(bins, title=None), x2=alt.X2("t_end"),
        y=alt.Y("predicted:O", sort=list(vocab), title="next token"),
        color=alt.Color("max:Q", title="p", scale=alt.Scale(scheme="blues", domain=[0, 1])),
        opacity=_faded_outside(),
        tooltip=[alt.Tooltip("time:N", title="t"), alt.Tooltip("token:N", title="input token"),
                 alt.Tooltip("predicted:N", title="next token")] + _value_tooltips(bins, "p"),
    )


def series_chart(frame: pd.DataFrame, bins: Bins, title: str, y_title: str, name: str) -> alt.HConcatChart:
    """Lines over time, one per series (max solid, mean dashed when binned). The selected time
    range is drawn strong, the rest faint."""
    enc = dict(
        x=_x(bins), y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False)),
        color=alt.Color("series:N", title=None),
        strokeDash=alt.StrokeDash("stat:N", title="bin stat", legend=None if bins.width == 1 else alt.Legend(),
                                  scale=alt.Scale(domain=["value", "max", "mean"], range=[[1, 0], [1, 0], [4, 3]])),
        detail=alt.Detail("stat:N"),
        tooltip=[alt.Tooltip("time:N", title="t"), alt.Tooltip("token:N"), alt.Tooltip("series:N"),
                 alt.Tooltip("stat:N"), alt.Tooltip("value:Q", format=".4g")])
    data = inline_csv(frame, numeric=("t", "t_end", "value"))
    base = alt.Chart(data, mark=alt.MarkDef(type="line", opacity=0.3), name=name).encode(**enc)
    strong = alt.Chart(data, mark="line").encode(**enc).transform_filter({"param": TIME_PARAM, "empty": True})
    note = _bin_note(bins) + ("" if bins.width == 1 else "; solid = max, dashed = mean")
    # wrapped in a one-chart hconcat: a layer placed directly in a concat gets its views renamed
    # by Altair (name -> name_<row>), which would break the selection's `views` list
    return stack("h", layered(base, strong, title=f"{title} ({note})", width=WIDTH, height=90))


def channel_heatmap(frame: pd.DataFrame, tokens: pd.DataFrame, bins: Bins, order: list, title: str, what: str,
                    name: str, stat: str = "max", scheme: str = "viridis", unit: str = "channel",
                    labels: Optional[list] = None, y_title: Optional[str] = None, pooled: bool = False,
                    links: Optional[list] = None) -> tuple:
    """timestep x unit heatmap of one [L, U] quantity, units (channels, or heads: `unit`) top to
    bottom in `order`.

    Layers over one quantitative (t, row) plane, row = position in `order`:
      image    every cell, drawn server-side in Vega's `scheme` (viz/raster.py): one scene item
      fade     per time bin, white over the bins outside the selected time range
      legend   the colour scale (same scheme and domain as the image), on an invisible point
      readout  the cell under the pointer, outlined and labelled (viz/hover.py)
    The cells also go to the page as numbers (hover.params: frame's max[, mean], none dropped),
    which the readout shows and an export of the spec holds.
    labels: each row's name in `order`'s order (layers of the overview, the top-k units and the
    'other N: mean' row; viz/scale.py), on the axis and in the readout; y_title: the axis title.
    pooled: each row pools several units (viz/scale.pool_units; frame has both max and mean): `stat`
    then chooses the colour even at one step per bin, and the title says over what it is taken.
    links: one URL per row (in `order`'s order): a click on the row opens it (the overview's rows
    link to the same view with that layer drawn below; an invisible rect per row carries the href).
    Returns (layer chart, params): the params (hover.selection, hover.params) belong at the
    top level of the chart the layer ends up in, where the readout's expressions see them."""
    stat = stat if bins.width > 1 or pooled else "max"     # one step, one unit: max == mean == the value
    D = len(order)
    px = unit_px(D)
    nb = len(bins.start)
    values = frame[stat].to_numpy().reshape(nb, -1)[:, order].T      # [D rows, nb bins]
    domain = raster.extent(values)
    url = raster.data_uri(raster.png_bytes(raster.colorize(values, scheme, domain)))
    by_index = list(order) == sorted(order)
    # plain dicts, not Altair objects: every concat around this layer deep-copies it, and the
    # objects' unset properties made that ~150 ms per dashboard
    step = min(16, max(1, D // 8))                     # 128 channels: every 16th; 8 heads: each
    y_axis = ({"values": [r + 0.5 for r in range(0, D, step)], "labelExpr": "floor(datum.value)", "ticks": False,
               "grid": False} if by_index else {"labels": False, "ticks": False, "grid": False})
    if labels is not None:          # named rows: every row's name when they fit, else every step-th
        step = 1 if px >= 10 else step
        y_axis = {"values": [r + 0.5 for r in range(0, D, step)], "ticks": False, "grid": False,
                  "labelExpr": f"{json.dumps(list(map(str, labels)))}[floor(datum.value)]"}
    x = {"field": "t", "type": "quantitative", "title": "timestep t",
         "scale": {"domain": [bins.t0, bins.t1], "nice": False, "zero": False}}
    y = {"field": "row", "type": "quantitative",
         "title": y_title or (unit + ("" if by_index or labels is not None else " (by Δ ratio)")),
         "axis": y_axis, "scale": {"domain": [0, D], "reverse": True, "nice": False, "zero": False}}
    image = alt.Chart(alt.InlineData(values=[{"t": bins.t0, "t_end": bins.t1, "row": 0, "row_end": D, "url": url}]),
                      mark={"type": "image", "aspect": False, "smooth": False}, name=name,
                      encoding=alt.FacetedEncoding(x=x, x2={"field": "t_end"}, y=y, y2={"field": "row_end"},
                                                   url={"field": "url", "type": "nominal"}))
    fade = alt.Chart(inline_csv(tokens[["t", "t_end"]], numeric=("t", "t_end")), mark={"type": "rect", "fill": "white"},
                     encoding=alt.FacetedEncoding(
                         x={"field": "t", "type": "quantitative"}, x2={"field": "t_end"}, y={"datum": 0},
                         y2={"datum": D}, opacity={"value": 0.65,
                                                   "condition": {"param": TIME_PARAM, "value": 0.0, "empty": True}}))
    legend = alt.Chart(alt.InlineData(values=[{"v": domain[0]}]), mark={"type": "point", "opacity": 0, "size": 0},
                       encoding=alt.FacetedEncoding(color={
                           "field": "v", "type": "quantitative", "title": what if bins.width == 1 and not pooled else f"{what} ({stat})",
                           "scale": {"scheme": scheme, "domain": list(domain)}}))
    readout = hover.readout(frame, bins, order, name, what, WIDTH, px, unit, labels=labels is not None)
    if links is not None:
        if len(links) != D:
            raise ValueError(f"{len(links)} links for {D} rows")
        # invisible rects over the rows; Vega-Lite makes a mark clickable only with a tooltip
        names = labels if labels is not None else [f"{unit} {u}" for u in order]
        readout = [alt.Chart(alt.InlineData(values=[{"t": bins.t0, "t_end": bins.t1, "row": r, "row_end": r + 1,
                                                     "href": h, "tip": f"{names[r]}: click to show it below"}
                                                    for r, h in enumerate(links)]),
                             mark={"type": "rect", "fill": "black", "fillOpacity": 0, "cursor": "pointer"},
                             encoding=alt.FacetedEncoding(x={"field": "t", "type": "quantitative"}, x2={"field": "t_end"},
                                                          y={"field": "row", "type": "quantitative"},
                                                          y2={"field": "row_end"},
                                                          href={"field": "href", "type": "nominal"},
                                                          tooltip={"field": "tip", "type": "nominal"})), *readout]
    note = _bin_note(bins, stat) if not pooled else \
        f"{stat} over each row's {unit}s" + ("" if bins.width == 1 else f" and {bins.width}-step bins")
    layer = layered(image, fade, legend, *readout, width=WIDTH, height=px * D, title=f"{title} ({note})")
    return layer, [hover.selection(name), *hover.params(frame, tokens, order, name, labels)]


def ratio_chart(frame: pd.DataFrame, order: list, win: Windows, unit: str = "channel") -> alt.Chart:
    """Per channel (or head: `unit`), tasks.measures' Δ ratio: the max of Δ over the write window /
    the median of Δ over the filler after it (frames.ratio_frame), in the heatmap's row order so
    the bars line up with its rows."""
    (w0, w1), (f0, f1) = win.write, win.filler
    write, filler = f"t = {w0}..{w1 - 1}", f"t = {f0}..{f1 - 1}"
    return alt.Chart(inline_csv(frame, numeric=("channel", "write", "write_step", "filler_median", "ratio")),
                     mark=alt.MarkDef(type="bar", color="#f58518"), width=140, height=unit_px(len(order)) * len(order),
                     title=alt.TitleParams("Δ ratio", subtitle=[f"max Δ, write {write}",
                                                                f"÷ median Δ, filler {filler}"])).encode(
        y=alt.Y("channel:O", sort=list(order), axis=None),
        x=alt.X("ratio:Q", title="ratio (log; bars start at 1)", scale=alt.Scale(type="log")),
        x2=alt.X2Datum(1),                  # a bar from 1 (no change) to the ratio: log has no 0
        tooltip=[alt.Tooltip("name:N" if "name" in frame.columns else "channel:O", title=unit),
                 alt.Tooltip("write:Q", title=f"max Δ over the write window {write}", format=".4g"),
                 alt.Tooltip("write_step:Q", title="at t"),
                 alt.Tooltip("filler_median:Q", title=f"median Δ over the filler {filler}", format=".4g"),
                 alt.Tooltip("ratio:Q", format=".4g")],
    )


def dashboard(view: TraceView, sort: str = "index", max_bins: int = 256, t_from=None, t_to=None,
              layers=None, stat: str = "max", top_units: Optional[int] = None, score: str = "ratio",
              overview: Optional[bool] = None, layer_links: Optional[list] = None) -> alt.VConcatChart:
    """Every chart of one trace, stacked, sharing the time selection.
    sort: channel order, 'index' or 'ratio'; max_bins: time bins per chart (1..MAX_BINS_LIMIT);
    t_from/t_to: the time window [t_from, t_to) (None = whole sequence); layers: layer indices to
    draw (None = all); stat: 'max' or 'mean', what a heatmap cell's colour shows when binned.
    top_units: draw only this many units per layer, the best by `score` (viz/scale.py SCORES), the
    rest as one 'other N: mean' row (None: every unit; a layer wider than scale.MAX_UNIT_ROWS then
    pools runs of consecutive units per row in index order, and takes its top scale.TOP_UNITS by
    the Δ ratio in ratio order); overview: the layer x time overview
    above the layers (None: for models deeper than scale.OVERVIEW_MIN_LAYERS - 1 layers);
    layer_links: one URL per layer, opened by a click on its overview row (the app's permalinks).
    A plain LM (view.is_lm) gets the LM views (viz/lm.py) where a task model has its predictions."""
    # imported here: both build on this module's chart functions
    from . import lm as lm_views
    from . import scale
    if stat not in ("max", "mean"):
        raise ValueError(f"unknown bin statistic {stat!r}; choose 'max' or 'mean'")
    if not (1 <= max_bins <= MAX_BINS_LIMIT):
        raise ValueError(f"time bins {max_bins} is out of range 1..{MAX_BINS_LIMIT}")
    layers = list(range(view.n_layer)) if layers is None else list(layers)
    bad = [i for i in layers if not (0 <= i < view.n_layer)]
    if bad:
        raise ValueError(f"layer {bad[0] + 1} does not exist; the model has {view.n_layer} layers")
    bins = time_bins(*clamp_window(view.length, t_from, t_to), max_bins)
    ratios = view.ratios                                             # None without a write and a filler
    tokens = token_frame(view, bins)
    if view.is_lm:
        rows, views = lm_views.prediction_rows(view, bins, tokens)
    else:
        if view.probs is not None:
            vocab = list(view.task.token_labels(range(view.probs.shape[1])))
            predictions = prediction_heatmap(prob_frame(view, bins), tokens, bins, vocab, "predictions")
        else:            # a large vocabulary (MQAR's 8,192 rows): the trace's top-k, as for a plain LM
            k = int(view.top_k_ids.shape[1])
            predictions = lm_views.topk_chart(lm_views.topk_frame(view, bins, k), tokens, bins, k, "predictions")
        rows = [token_strip(tokens, bins, role_names(view.task), "tokens"), predictions,
                series_chart(series_frame(prediction_series(view), view, bins), bins,
                             "Probability of the top-1 token and of the target", "p", "p_lines")]
        views = ["tokens", "predictions", "p_lines"]
    heatmap_params = []                                               # each heatmap's hover params
    if view.n_layer >= scale.OVERVIEW_MIN_LAYERS if overview is None else overview:
        o_rows, o_views, o_params = scale.overview_rows(view, bins, tokens, stat, layers, layer_links)
        rows, views, heatmap_params = rows + o_rows, views + o_views, o_params
    unit = view.unit
    per_unit, norm_of = UNIT_WORDS[unit]
    U = view.n_units
    if top_units is None and sort == "ratio" and U > scale.MAX_UNIT_ROWS and ratios is not None:
        top_units, score = scale.TOP_UNITS, "ratio"        # a wide layer by Δ ratio: its top units, named
    group = scale.pool_size(U) if sort == "index" and (top_units is None or top_units >= U) else 1
    for i in layers:
        ratio = None if ratios is None else ratio_frame(ratios[i])
        delta, norm, labels, note = view.delta[i], view.state_norm[i], None, ""
        delta_mean = norm_mean = None                                 # [L, rows] where a row pools units
        if top_units is not None and top_units < U:
            kept = scale.top_units(scale.unit_scores(score, delta, norm, bins.t0, bins.t1,
                                                     None if ratios is None else ratios[i].ratio), top_units)
            (delta, labels), (norm, _) = scale.keep_top(delta, kept, unit), scale.keep_top(norm, kept, unit)
            note = f" · top {top_units} {unit}s by {scale.SCORES[score]}, last row: the other {U - top_units}'s mean"
            ratio = None if ratio is None else scale.ratio_rows(ratio, kept)
            order = list(range(delta.shape[1]))
        elif group > 1:
            delta, delta_mean, labels = scale.pool_units(delta, group, unit)
            norm, norm_mean, _ = scale.pool_units(norm, group, unit)
            note = f" · all {U} {unit}s, {group} per row"
            ratio = None if ratio is None else scale.ratio_pooled(ratio, group, unit)
            order = list(range(delta.shape[1]))
        else:
            order = unit_order(None if ratios is None else ratios[i].ratio, view.delta[i].shape[1], sort)
        dh, params = channel_heatmap(heatmap_frame(delta, bins, delta_mean), tokens, bins, order,
                                     f"Layer {i + 1}: Δ (step size, after softplus){per_unit}{note}", "Δ",
                                     f"delta_{i + 1}", stat, unit=unit, labels=labels, pooled=group > 1)
        heatmap_params += params
        # a layer placed in a concat beside other charts (or alone in the vconcat) gets its view
        # renamed by Altair (delta_1 -> delta_0): each layer sits in its own one-chart hconcat
        dh = stack("h", dh)
        rows.append(alt.hconcat(dh, ratio_chart(ratio, order, view.windows, unit)) if ratio is not None else dh)
        nh, params = channel_heatmap(heatmap_frame(norm, bins, norm_mean), tokens, bins, order,
                                     f"Layer {i + 1}: hidden-state norm {norm_of}{note}", "‖h‖", f"norm_{i + 1}",
                                     stat, "magma", unit, labels=labels, pooled=group > 1)
        heatmap_params += params
        rows.append(stack("h", nh))
        rows.append(series_chart(series_frame({f"layer {i + 1}": total_state_norm(view.state_norm[i])},
                                              view, bins), bins,
                                 f"Layer {i + 1}: total state norm ‖h_t‖ over all {unit}s", "‖h_t‖",
                                 f"total_norm_{i + 1}"))
        views += [f"delta_{i + 1}", f"norm_{i + 1}", f"total_norm_{i + 1}"]
    window = "" if (bins.t0, bins.t1) == (0, view.length) else f" · window t = {bins.t0}..{bins.t1 - 1}"
    return stack("v", *rows, params=[time_selection(views), *heatmap_params], spacing=18,
                 title=alt.TitleParams(f"{view.label} · L = {view.length:,}{window}", anchor="start"),
                 resolve=alt.Resolve(scale=alt.ScaleResolveMap(color="independent", strokeDash="independent")))


def chart_html(chart: alt.TopLevelMixin) -> str:
    """A standalone HTML page that works offline: spec, data and the vega / vega-lite / vega-embed
    JavaScript all inline (~0.9 MB of script, bundled by vl-convert-python; no CDN)."""
    return chart.to_html(inline=True)


def fast_construction() -> None:
    """Skip Altair's schema validation at object construction, process-wide (its DEBUG_MODE):
    it costs ~1 s per dashboard on a busy CPU. Servers call this once; tests leave it on and
    validate every chart spec (to_dict validates regardless)."""
    alt.utils.schemapi.disable_debug_mode()


def spec_json(chart: alt.TopLevelMixin) -> str:
    """The Vega-Lite JSON, compact and not re-validated against the schema (that costs seconds per
    trace on a busy CPU; tests/test_viz.py validates the same charts)."""
    return chart.to_json(validate=False, indent=None)
