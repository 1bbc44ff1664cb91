"""The views of a plain language model (tasks.text: IdTask / TextTask, no task positions): the top-k
decoded next-token predictions at every step, p(actual next token) and the loss per token, and the
summary with the mean loss. numpy, pandas and Altair only (through viz/charts.py).

A 50k-row vocabulary heatmap cannot be drawn (nor sent), and a trace of such a model keeps only
the top-k and p(next) (model/trace.py); these views need no more. Every step t < L-1 predicts the
token at t+1, so p(next)[t] and the loss -log p(next)[t] exist there; the last step has no next
token (NaN in the trace, left out of every mean and bin here).
"""
from __future__ import annotations

from typing import Optional

import altair as alt
import numpy as np
import pandas as pd

from . import charts
from .frames import Bins, TraceView, role_names

RANK_PX = 14                 # px per rank row of the top-k chart
LABEL_MIN_PX = 36            # a bin at least this wide shows its top-1 token as text
LABEL_CHARS = 6              # of a token label drawn in a cell (the tooltip has it whole)


def next_token_arrays(view: TraceView) -> tuple:
    """(top ids [L, k], their p [L, k], p(next) [L], log p(next) [L]) from the trace's top-k, or
    derived from its full distribution (older traces). The last step's p(next) is NaN."""
    if view.top_k_ids is not None:
        ids, p, p_next = view.top_k_ids, view.top_k_probs, np.asarray(view.p_next, dtype=np.float64)
        logp = np.log(p_next) if view.logp_next is None else np.asarray(view.logp_next, dtype=np.float64)
        return ids, p, p_next, logp
    probs = np.asarray(view.probs)                                   # [L, V]
    ids = np.argsort(-probs, axis=1, kind="stable")[:, :min(10, probs.shape[1])]
    p_next = np.full(view.length, np.nan)
    p_next[:-1] = probs[np.arange(view.length - 1), view.tokens[1:]]
    with np.errstate(divide="ignore"):
        return ids, np.take_along_axis(probs, ids, 1), p_next, np.log(p_next)


def mean_loss(view: TraceView, t0: int = 0, t1: Optional[int] = None) -> float:
    """Mean -log p(next token) in nats over the predicting steps of [t0, t1) (NaN when there are none)."""
    logp = next_token_arrays(view)[3][t0:t1]
    logp = logp[np.isfinite(logp) | np.isneginf(logp)]              # drop the last step's NaN only
    return float(-logp.mean()) if logp.size else float("nan")


def topk_frame(view: TraceView, bins: Bins, k: Optional[int] = None) -> pd.DataFrame:
    """One row per (bin, rank): t, rank (1 = most probable), id, predicted (the decoded token), p,
    next ('yes' where the candidate is the actual next token, per step only).
    A bin of several steps ranks the candidates by their mean p over its steps, counting a step
    where one is outside that step's top-k as 0 (so the value is a lower bound; charts say so)."""
    ids, p, _, _ = next_token_arrays(view)
    k = ids.shape[1] if k is None else min(k, ids.shape[1])
    t0, t1 = bins.t0, bins.t1
    if bins.width == 1:
        steps = np.arange(t0, t1)
        nxt = np.where(steps + 1 < view.length, view.tokens[np.minimum(steps + 1, view.length - 1)], -1)   # [n]
        cand = ids[t0:t1, :k]                                          # [n, k]
        df = pd.DataFrame({"t": np.repeat(steps, k), "rank": np.tile(np.arange(1, k + 1), t1 - t0),
                           "id": cand.reshape(-1), "p": np.asarray(p[t0:t1, :k], dtype=np.float64).reshape(-1),
                           "next": np.where((cand == nxt[:, None]).reshape(-1), "yes", "no")})
    else:
        b = (np.arange(t0, t1) - t0) // bins.width                     # [n] bin of each step
        flat = pd.DataFrame({"b": np.repeat(b, ids.shape[1]), "id": ids[t0:t1].reshape(-1),
                             "p": np.asarray(p[t0:t1], dtype=np.float64).reshape(-1)})
        per = flat.groupby(["b", "id"], sort=False)["p"].sum().reset_index()
        per["p"] /= (bins.end - bins.start)[per["b"].to_numpy()]      # mean over the bin's steps
        per = per.sort_values(["b", "p", "id"], ascending=[True, False, True])
        per["rank"] = per.groupby("b").cumcount() + 1
        per = per[per["rank"] <= k]
        df = pd.DataFrame({"t": bins.start[per["b"].to_numpy()], "rank": per["rank"].to_numpy(),
                           "id": per["id"].to_numpy(), "p": per["p"].to_numpy(), "next": "—"})
    df["predicted"] = view.task.token_labels(df["id"].to_numpy())
    return df.reset_index(drop=True)


def topk_chart(frame: pd.DataFrame, tokens: pd.DataFrame, bins: Bins, k: int, name: str = "predictions"):
    """rank x time: the top-k decoded next tokens at every step (bin), coloured by p; the tooltip
    names the input token, the candidate and whether it is the actual next token."""
    what = "p" if bins.width == 1 else "mean p over the bin (0 outside a step's top-k)"
    title = (f"Top-{k} next-token predictions (per timestep)" if bins.width == 1 else
             f"Top-{k} next-token predictions (ranked by mean p over {bins.width}-step bins; a lower bound)")
    enc = {"x": charts._x(bins, title=None), "x2": alt.X2("t_end"),
           "y": alt.Y("rank:O", title="rank", sort="ascending"),
           "tooltip": [alt.Tooltip("time:N", title="t"), alt.Tooltip("token:N", title="input token"),
                       alt.Tooltip("rank:O"), alt.Tooltip("predicted:N", title="next token"),
                       alt.Tooltip("p:Q", title=what, format=".4g"),
                       alt.Tooltip("next:N", title="= actual next token")]}
    data = charts.inline_csv(frame[["t", "rank", "predicted", "p", "next"]], numeric=("t", "rank", "p"))
    rect = charts._join_tokens(alt.Chart(data, mark="rect", name=name), tokens).encode(
        color=alt.Color("p:Q", title="p", scale=alt.Scale(scheme="blues", domain=[0, 1])),
        opacity=charts._faded_outside(), **enc)
    layers = [rect]
    if charts.WIDTH / max(1, bins.n) >= LABEL_MIN_PX:               # wide cells: the token as text
        short = frame.assign(predicted=[s if len(s) <= LABEL_CHARS else s[:LABEL_CHARS - 1] + "…"
                                        for s in frame["predicted"]])
        text = alt.Chart(charts.inline_csv(short[["t", "rank", "predicted", "p", "next"]],
                                           numeric=("t", "rank", "p")), mark=alt.MarkDef(type="text", align="left",
                                                                                           dx=2, fontSize=10))
        layers.append(charts._join_tokens(text, tokens).encode(
            x=enc["x"], y=enc["y"], text="predicted:N", tooltip=enc["tooltip"],
            color=alt.condition("datum.p > 0.5", alt.value("white"), alt.value("black"))))
    # a one-chart hconcat, as charts.series_chart: keeps the view name for the time selection
    return charts.stack("h", charts.layered(*layers, width=charts.WIDTH, height=RANK_PX * k, title=title))


def _nan_reduce(bins: Bins, x: np.ndarray) -> tuple:
    """x [L] -> (max, mean) per bin [n_bins] ignoring NaN (the last step's p(next)); NaN for a bin
    holding only NaN."""
    xw = np.asarray(x[bins.t0:bins.t1], dtype=np.float64)
    if bins.width == 1:
        return xw, xw
    idx = bins.start - bins.t0
    ok = ~np.isnan(xw)
    n = np.add.reduceat(ok.astype(np.int64), idx)
    vmax = np.fmax.reduceat(xw, idx)
    with np.errstate(invalid="ignore", divide="ignore"):
        return vmax, np.where(n > 0, np.add.reduceat(np.where(ok, xw, 0.0), idx) / n, np.nan)


def series_frame(series: dict, bins: Bins, tokens: pd.DataFrame) -> pd.DataFrame:
    """{name: [L]} -> charts.series_chart's long rows (t, t_end, time, token, series, stat, value),
    NaN steps left out of the bins (frames.series_frame would make a bin holding one NaN)."""
    parts = []
    for name, x in series.items():
        vmax, vmean = _nan_reduce(bins, x)
        stats = {"value": vmax} if bins.width == 1 else {"max": vmax, "mean": vmean}
        for stat, v in stats.items():
            parts.append(pd.DataFrame({"t": bins.start, "t_end": bins.end, "time": tokens["time"].to_numpy(),
                                       "token": tokens["token"].to_numpy(), "series": name, "stat": stat,
                                       "value": v}))
    df = pd.concat(parts, ignore_index=True)
    return df[np.isfinite(df["value"])].reset_index(drop=True)      # no point where nothing follows


def prediction_rows(view: TraceView, bins: Bins, tokens: pd.DataFrame) -> tuple:
    """The LM's rows of the dashboard, (charts, view names): the token strip (green where the top-1
    is the actual next token), the top-k, p(actual next token), and the loss per token."""
    ids, _, p_next, logp = next_token_arrays(view)
    k = int(ids.shape[1])
    with np.errstate(invalid="ignore"):
        loss = -logp
    rows = [charts.token_strip(tokens, bins, role_names(view.task), "tokens"),
            topk_chart(topk_frame(view, bins, k), tokens, bins, k, "predictions"),
            charts.series_chart(series_frame({"p(actual next token)": p_next}, bins, tokens), bins,
                                "p(actual next token)", "p", "p_lines"),
            charts.series_chart(series_frame({"loss −log p(next)": loss}, bins, tokens), bins,
                                "Loss per token, −log p(actual next token) in nats", "nats", "loss")]
    return rows, ["tokens", "predictions", "p_lines", "loss"]


def describe(view: TraceView, bins_width: int = 1) -> str:
    """The summary line of a plain LM: length, mean loss (and perplexity), top-1 accuracy."""
    s = view.score                                                   # every step but the last
    parts = [f"**L = {view.length:,}** tokens (plain language model: next-token prediction at every step)"]
    if view.unit == "head":
        parts.append(f"Mamba-2: Δ and the state norms are per **head** ({view.n_units} heads per layer)")
    if bins_width > 1:
        parts.append(f"time binned by **{bins_width}** steps (max and mean per bin)")
    if s.n:
        loss = mean_loss(view)
        parts.append(f"mean loss **{loss:.3f}** nats/token (perplexity {np.exp(loss):.3g}) over {s.n:,} predicted "
                     f"tokens · top-1 = actual next token at **{s.correct:,}/{s.n:,}** steps")
    else:
        parts.append("one token: nothing follows it, so there is no loss to show")
    if view.probs is None:
        parts.append(f"the trace keeps the top-{next_token_arrays(view)[0].shape[1]} and p(next) per step, "
                     "not the full distribution")
    return " · ".join(parts)
