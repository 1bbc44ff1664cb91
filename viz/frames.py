"""From trace arrays to the tidy DataFrames the charts draw: time binning, token roles, channel
order. numpy and pandas (and tasks/: what a token means) only.

Axis order everywhere: time first, [L, U] (as in model/trace.py), U the mixer's units: Mamba-1's
D channels or Mamba-2's H heads (TraceView.unit says which; frames keep the column name
"channel" for either, the charts title it with the unit). A time *bin* covers the timesteps
[t, t_end); with bin width 1 the max and the mean of a bin are the value itself.

Binning rule: a window of n timesteps and at most `max_bins` bins gets bins of width
w = ceil(n / max_bins) and ceil(n / w) bins; the last bin may be shorter (its mean divides by
its own count). Nothing is dropped: every timestep of the window is in exactly one bin.

The task (tasks.Task) says what the tokens are: their labels, the roles of the steps (writes,
markers, queries) and whether a prediction is correct (tasks.score). The Δ ratio is
tasks.measures' (the one definition); nothing here knows the induction vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import numpy as np
import pandas as pd

from tasks import IdTask, Positions, Score, Task, score
from tasks.measures import DeltaRatio, Windows, layer_ratios, windows

MAX_BINS_DEFAULT = 64        # time bins per chart by default: 64 x 128 = 8,192 cells per heatmap.
# Measured click-to-charts in headless chromium (2 cores, image heatmaps): 0.82 s (L=256) and 1.25 s
# (L=16384) at 64 bins, 1.06 / 1.36 s at 128, 1.08-1.22 / 1.58-1.83 s at 256 (Vega's draw barely
# changes; the 2x larger spec's transfer and handling do); the slider goes to MAX_BINS_LIMIT.
MAX_BINS_LIMIT = 1024        # the widget's top; 1024 x 128 = 131,072 cells per heatmap image
QUERY_ROLES = ("query: correct", "query: wrong")
D_CONV_DEFAULT = 4           # mamba_ssm's d_conv, for a trace whose metadata does not say
UNITS = ("channel", "head")  # what a per-layer array's second axis indexes: Mamba-1, Mamba-2


def role_names(task: Task) -> list:
    """The token roles in priority order: the task's (filler, write, marker) then the query's two."""
    return list(task.roles) + list(QUERY_ROLES)


def trace_d_conv(meta: dict) -> int:
    """d_conv from a trace's metadata (meta["config"]["ssm_cfg"]), D_CONV_DEFAULT when absent."""
    cfg = (meta or {}).get("config") or {}
    return int((cfg.get("ssm_cfg") or {}).get("d_conv", D_CONV_DEFAULT)) if isinstance(cfg, dict) else D_CONV_DEFAULT


@dataclass
class TraceView:
    """The arrays the charts need, duck-typed from model.Trace (viz never imports the model).
    tokens [L]; probs [L, V] (None when the trace kept only the top-k: a 50k vocabulary);
    top_k_ids, top_k_probs [L, k] and p_next [L] (NaN last) when the trace has them;
    delta[i], state_norm[i]: [L, U] for layer i; the task the tokens
    belong to; d_conv, the layers' causal-conv width (it sets the Δ ratio's write window); unit,
    what the U axis indexes: "channel" (Mamba-1) or "head" (Mamba-2, the trace's meta["units"])."""
    tokens: np.ndarray
    probs: np.ndarray
    delta: list
    state_norm: list
    task: Task
    label: str = ""                     # what model made it, for titles
    d_conv: int = D_CONV_DEFAULT
    unit: str = "channel"
    top_k_ids: Optional[np.ndarray] = None     # [L, k]
    top_k_probs: Optional[np.ndarray] = None   # [L, k]
    p_next: Optional[np.ndarray] = None        # [L]
    logp_next: Optional[np.ndarray] = None     # [L] log p_next (exact where p_next underflows)
    watch_ids: Optional[np.ndarray] = None     # [m] ids whose p the trace kept at every step (a task's targets)
    watch_probs: Optional[np.ndarray] = None   # [L, m]
    positions: Positions = field(init=False)

    def __post_init__(self):
        self.tokens = np.asarray(self.tokens)
        if self.unit not in UNITS:
            raise ValueError(f"unknown unit {self.unit!r}; choose one of {', '.join(UNITS)}")
        if self.probs is None and (self.top_k_ids is None or self.p_next is None):
            raise ValueError("a view needs the full next-token distribution or its top-k and p(next)")
        self.positions = self.task.positions(self.tokens)

    @classmethod
    def from_trace(cls, tr, task: Task, label: str = "") -> "TraceView":
        return cls(tokens=tr.tokens, probs=tr.probs, delta=[lt.delta for lt in tr.layers],
                   state_norm=[lt.state_norm for lt in tr.layers], task=task, label=label,
                   d_conv=trace_d_conv(tr.meta), unit=(tr.meta or {}).get("units", "channel"),
                   top_k_ids=getattr(tr, "top_k_ids", None), top_k_probs=getattr(tr, "top_k_probs", None),
                   p_next=getattr(tr, "p_next", None), logp_next=getattr(tr, "logp_next", None),
                   watch_ids=getattr(tr, "watch_ids", None), watch_probs=getattr(tr, "watch_probs", None))

    @property
    def is_lm(self) -> bool:
        """A plain language model (tasks.text: ids or text, next-token prediction at every step)."""
        return isinstance(self.task, IdTask)

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_layer(self) -> int:
        return len(self.delta)

    @property
    def n_units(self) -> int:
        """U: channels (Mamba-1) or heads (Mamba-2) per layer."""
        return int(np.asarray(self.delta[0]).shape[1])

    def p_of(self, token: int) -> Optional[np.ndarray]:
        """[L] p(next token = token) at every step, from the full distribution or the trace's watched
        ids (trace(watch=): a task model with a large vocabulary); None when the trace kept neither."""
        if self.probs is not None:
            return np.asarray(self.probs[:, token], dtype=np.float64)
        if self.watch_ids is not None:
            hit = np.flatnonzero(np.asarray(self.watch_ids) == token)
            if hit.size:
                return np.asarray(self.watch_probs[:, hit[0]], dtype=np.float64)
        return None

    def top1(self, t: int) -> tuple:
        """(id, p) of the most probable next token at step t."""
        if self.probs is not None:
            i = int(np.asarray(self.probs[t]).argmax())
            return i, float(self.probs[t, i])
        return int(self.top_k_ids[t, 0]), float(self.top_k_probs[t, 0])

    @cached_property
    def score(self) -> Score:
        """The top-1 at each scored query against its target (tasks.score, the one definition).
        Without the full distribution (a vocabulary over model.trace's FULL_PROBS_MAX_VOCAB) the
        top-1 is the top-k's first, and p(target) the trace's p(next) (a plain LM: every target is
        the next token) or its watched p of that target (a task model: trace(watch=targets))."""
        if self.probs is not None:
            return score(self.probs, self.positions)
        pairs, tops, ps = self.positions.scored, [], []
        for q, t in pairs:
            if q + 1 < self.length and t == int(self.tokens[q + 1]):
                p = float(self.p_next[q])
            else:
                col = self.p_of(t)
                if col is None:
                    raise ValueError(f"the trace kept neither the full distribution nor p of the target {t} "
                                     f"at step {q}: trace it with watch=(targets) or full_probs=True")
                p = float(col[q])
            tops.append(self.top1(q)[0])
            ps.append(p)
        return Score(tuple(q for q, _ in pairs), tuple(t for _, t in pairs), tuple(tops), tuple(ps))

    @cached_property
    def windows(self) -> Optional[Windows]:
        """The first write's write window and filler (tasks.measures.windows), or None."""
        return windows(self.positions, self.length, self.d_conv)

    @cached_property
    def ratios(self) -> Optional[list]:
        """[DeltaRatio per layer] of the first write (tasks.measures.layer_ratios), or None without
        a write and a filler after it."""
        return layer_ratios(self.delta, self.positions, self.d_conv)

    @property
    def target(self) -> Optional[int]:
        """The expected token at the first scored query, or None."""
        return self.positions.scored[0][1] if self.positions.scored else None


@dataclass
class Bins:
    start: np.ndarray        # [n_bins] first timestep of each bin
    end: np.ndarray          # [n_bins] one past its last timestep
    width: int               # w (the last bin may be shorter)
    t0: int                  # the window [t0, t1)
    t1: int

    @property
    def n(self) -> int:
        return int(self.start.shape[0])

    def labels(self) -> np.ndarray:
        """'12' for one timestep, '64–127' for a bin (inclusive, as a person reads it)."""
        if self.width == 1:
            return self.start.astype(str)
        return np.array([f"{a}–{b - 1}" for a, b in zip(self.start.tolist(), self.end.tolist())])

    def reduce(self, x: np.ndarray):
        """x: [L, ...] over the whole sequence -> (max, mean) each [n_bins, ...] over the window."""
        xw = np.asarray(x[self.t0:self.t1], dtype=np.float64)         # [n, ...]
        if self.width == 1:                                           # one step per bin
            return xw, xw
        idx = self.start - self.t0
        counts = (self.end - self.start).reshape((-1,) + (1,) * (xw.ndim - 1))
        return np.maximum.reduceat(xw, idx, axis=0), np.add.reduceat(xw, idx, axis=0) / counts


def clamp_window(length: int, t_from: Optional[int], t_to: Optional[int]) -> tuple:
    """The user's time window -> a valid half-open [t0, t1) inside [0, length); None = the edge."""
    t0 = 0 if t_from is None else int(t_from)
    t1 = length if t_to is None or int(t_to) <= 0 else int(t_to)
    t0, t1 = max(0, min(t0, length - 1)), max(1, min(t1, length))
    if t1 <= t0:
        raise ValueError(f"time window {t0}..{t1} is empty (the sequence has {length} timesteps)")
    return t0, t1


def time_bins(t0: int, t1: int, max_bins: int) -> Bins:
    if max_bins < 1:
        raise ValueError(f"max_bins must be >= 1, got {max_bins}")
    n = t1 - t0
    w = math.ceil(n / max_bins)
    nb = math.ceil(n / w)
    start = t0 + np.arange(nb, dtype=np.int64) * w
    return Bins(start=start, end=np.minimum(start + w, t1), width=w, t0=t0, t1=t1)


def roles(view: TraceView) -> np.ndarray:
    """[L] int index into role_names(task): filler 0, write 1, marker 2, and a scored query 3 or 4
    by whether its top-1 is the target (tasks.score); a query without a target is a marker."""
    r = np.zeros(view.length, dtype=np.int64)
    pos = view.positions
    r[list(pos.writes)] = 1
    r[list(pos.markers) + list(pos.queries)] = 2
    s = view.score
    for q, top, target in zip(s.queries, s.top, s.targets):
        r[q] = 3 if top == target else 4
    return r


def _bin_tokens(view: TraceView, bins: Bins) -> np.ndarray:
    """Token text per bin: the token itself, or '64 tokens, 1×S' for a wider bin (counting the cue
    tokens: those at the task's markers and queries)."""
    if bins.width == 1:
        return view.task.token_labels(view.tokens[bins.start])
    if view.is_lm:          # every step is a query there: name the bin's first and last tokens instead
        first = view.task.token_labels(view.tokens[bins.start])
        last = view.task.token_labels(view.tokens[bins.end - 1])
        return np.array([f"{e - s} tokens: {a} … {b}" for s, e, a, b in
                         zip(bins.start.tolist(), bins.end.tolist(), first.tolist(), last.tolist())])
    pos = view.positions
    cues = sorted({int(view.tokens[p]) for p in (*pos.markers, *pos.queries)})
    window = view.tokens[bins.t0:bins.t1]
    counts = [np.add.reduceat((window == c).astype(np.int64), bins.start - bins.t0).tolist() for c in cues]
    labels = [view.task.labels[c] for c in cues]
    out = []
    for b, (s, e) in enumerate(zip(bins.start.tolist(), bins.end.tolist())):
        out.append(f"{e - s} tokens" + "".join(f", {k[b]}×{lab}" for k, lab in zip(counts, labels) if k[b]))
    return np.array(out)


def token_frame(view: TraceView, bins: Bins) -> pd.DataFrame:
    """One row per bin: t, t_end, time, token, role (the highest-priority role in the bin)."""
    r = np.maximum.reduceat(roles(view)[bins.t0:bins.t1], bins.start - bins.t0)
    return pd.DataFrame({"t": bins.start, "t_end": bins.end, "time": bins.labels(),
                         "token": _bin_tokens(view, bins), "role": np.array(role_names(view.task))[r]})


def _stats(vmax: np.ndarray, vmean: np.ndarray, bins: Bins, both: bool = False) -> dict:
    """Bin statistics as columns: 'max' always; 'mean' only when a bin holds more than one step
    (at width 1 both are the value itself, so the column would only double the page size) or
    `both` (a cell pools several units)."""
    out = {"max": vmax.reshape(-1)}
    if bins.width > 1 or both:
        out["mean"] = vmean.reshape(-1)
    return out


def heatmap_frame(values: np.ndarray, bins: Bins, mean_values: Optional[np.ndarray] = None) -> pd.DataFrame:
    """values [L, U] -> one row per (bin, unit): t (bin start), channel (the unit id: a channel or
    a head), max[, mean]. Rows are time-major (bin 0 units 0..U-1, bin 1 ...); n_bins * U rows,
    none dropped.
    mean_values [L, U]: where a row pools several units (viz/scale.pool_units), `values` holds their
    max and this their mean at each step: max is then the max of values over the bin, mean the mean
    of mean_values, and both columns are kept even at one step per bin.
    viz/charts.py draws it as an image and ships the values for the pointer readout."""
    vmax, vmean = bins.reduce(values)                                 # [nb, D] each
    if mean_values is not None:
        _, vmean = bins.reduce(mean_values)
    nb, D = vmax.shape
    return pd.DataFrame({"t": np.repeat(bins.start, D), "channel": np.tile(np.arange(D), nb),
                         **_stats(vmax, vmean, bins, both=mean_values is not None)})


def prob_frame(view: TraceView, bins: Bins) -> pd.DataFrame:
    """probs [L, V] -> one row per (bin, vocabulary entry): t, predicted (the task's label),
    max[, mean] of p(next token = predicted)."""
    pmax, pmean = bins.reduce(view.probs)                            # [nb, V]
    nb, V = pmax.shape
    return pd.DataFrame({"t": np.repeat(bins.start, V), "predicted": np.tile(view.task.token_labels(np.arange(V)), nb),
                         **_stats(pmax, pmean, bins)})


def series_frame(series: dict, view: TraceView, bins: Bins) -> pd.DataFrame:
    """{name: [L] values} -> long rows: t, t_end, time, token, series, stat, value.
    stat is 'value' at bin width 1, else 'max' and 'mean' (both drawn)."""
    parts = []
    labels, tok = bins.labels(), _bin_tokens(view, bins)
    for name, x in series.items():
        vmax, vmean = bins.reduce(x)
        stats = {"value": vmax} if bins.width == 1 else {"max": vmax, "mean": vmean}
        for stat, v in stats.items():
            parts.append(pd.DataFrame({"t": bins.start, "t_end": bins.end, "time": labels, "token": tok,
                                       "series": name, "stat": stat, "value": v}))
    return pd.concat(parts, ignore_index=True)


def prediction_series(view: TraceView) -> dict:
    """p(top-1) at every step and, when the sequence has a scored query, p(its target) at every step."""
    out = {"p(top-1)": view.probs.max(axis=1) if view.probs is not None else view.top_k_probs[:, 0]}
    m = view.target
    p_target = None if m is None else view.p_of(m)
    if p_target is not None:
        out[f"p(target {view.task.labels[m]})"] = p_target
    return out


def total_state_norm(state_norm: np.ndarray) -> np.ndarray:
    """[L, U] per-unit norms (||h_t[d, :]|| per channel, ||h_t[head]||_F per head) -> [L] ||h_t||_F
    over the whole layer state."""
    return np.sqrt(np.square(state_norm.astype(np.float64)).sum(axis=1))


def ratio_frame(r: DeltaRatio) -> pd.DataFrame:
    """One layer's DeltaRatio -> [U] rows: channel (the unit id), write (max Δ over the write window),
    write_step (the t of that max), filler_median, ratio."""
    return pd.DataFrame({"channel": np.arange(r.ratio.shape[0]), "write": r.write, "write_step": r.write_step,
                         "filler_median": r.filler_median, "ratio": r.ratio})
