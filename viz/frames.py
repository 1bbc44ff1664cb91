"""From trace arrays to the tidy DataFrames the charts draw: time binning, the Δ ratio, channel
order. numpy and pandas only.

Axis order everywhere: time first, [L, D] (as in model/trace.py). A time *bin* covers the
timesteps [t, t_end); with bin width 1 the max and the mean of a bin are the value itself.

Binning rule: a window of n timesteps and at most `max_bins` bins gets bins of width
w = ceil(n / max_bins) and ceil(n / w) bins; the last bin may be shorter (its mean divides by
its own count). Nothing is dropped: every timestep of the window is in exactly one bin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from .sequences import TRIGGER, TaskPositions, task_positions, token_labels

MAX_BINS_DEFAULT = 64        # time bins per chart by default: 64 x 128 = 8,192 cells per heatmap.
# Measured click-to-charts in headless chromium (2 cores, image heatmaps): 0.82 s (L=256) and 1.25 s
# (L=16384) at 64 bins, 1.06 / 1.36 s at 128, 1.08-1.22 / 1.58-1.83 s at 256 (Vega's draw barely
# changes; the 2x larger spec's transfer and handling do); the slider goes to MAX_BINS_LIMIT.
MAX_BINS_LIMIT = 1024        # the widget's top; 1024 x 128 = 131,072 cells per heatmap image
ROLES = ["filler", "memory M", "trigger S", "query: correct", "query: wrong"]   # priority order


@dataclass
class TraceView:
    """The arrays the charts need, duck-typed from model.Trace (viz never imports the model).
    tokens [L]; probs [L, V]; delta[i], state_norm[i]: [L, D] for layer i."""
    tokens: np.ndarray
    probs: np.ndarray
    delta: list
    state_norm: list
    label: str = ""                     # what model made it, for titles
    positions: TaskPositions = field(init=False)

    def __post_init__(self):
        self.tokens = np.asarray(self.tokens)
        self.positions = task_positions(self.tokens)

    @classmethod
    def from_trace(cls, tr, label: str = "") -> "TraceView":
        return cls(tokens=tr.tokens, probs=tr.probs, delta=[lt.delta for lt in tr.layers],
                   state_norm=[lt.state_norm for lt in tr.layers], label=label)

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_layer(self) -> int:
        return len(self.delta)


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
    """[L] int index into ROLES: the query is coloured by whether its top-1 is the target M."""
    r = np.zeros(view.length, dtype=np.int64)
    pos = view.positions
    r[pos.memory_pos] = 1
    r[pos.triggers] = 2
    if pos.query is not None:
        r[pos.query] = 2
        if pos.target is not None:
            r[pos.query] = 3 if int(view.probs[pos.query].argmax()) == pos.target else 4
    return r


def _bin_tokens(view: TraceView, bins: Bins) -> np.ndarray:
    """Token text per bin: the token itself, or '64 tokens, 1×S' for a wider bin."""
    if bins.width == 1:
        return token_labels(view.tokens[bins.start])
    n_trig = np.add.reduceat((view.tokens[bins.t0:bins.t1] == TRIGGER).astype(np.int64),
                             bins.start - bins.t0)
    return np.array([f"{e - s} tokens" + (f", {k}×S" if k else "")
                     for s, e, k in zip(bins.start.tolist(), bins.end.tolist(), n_trig.tolist())])


def token_frame(view: TraceView, bins: Bins) -> pd.DataFrame:
    """One row per bin: t, t_end, time, token, role (the highest-priority role in the bin)."""
    r = np.maximum.reduceat(roles(view)[bins.t0:bins.t1], bins.start - bins.t0)
    return pd.DataFrame({"t": bins.start, "t_end": bins.end, "time": bins.labels(),
                         "token": _bin_tokens(view, bins), "role": np.array(ROLES)[r]})


def _stats(vmax: np.ndarray, vmean: np.ndarray, bins: Bins) -> dict:
    """Bin statistics as columns: 'max' always; 'mean' only when a bin holds more than one step
    (at width 1 both are the value itself, so the column would only double the page size)."""
    out = {"max": vmax.reshape(-1)}
    if bins.width > 1:
        out["mean"] = vmean.reshape(-1)
    return out


def heatmap_frame(values: np.ndarray, bins: Bins) -> pd.DataFrame:
    """values [L, D] -> one row per (bin, channel): t (bin start), channel, max[, mean].
    Rows are time-major (bin 0 channels 0..D-1, bin 1 ...); n_bins * D rows, none dropped.
    viz/charts.py draws it as an image and ships the values for the pointer readout."""
    vmax, vmean = bins.reduce(values)                                 # [nb, D] each
    nb, D = vmax.shape
    return pd.DataFrame({"t": np.repeat(bins.start, D), "channel": np.tile(np.arange(D), nb),
                         **_stats(vmax, vmean, bins)})


def prob_frame(view: TraceView, bins: Bins) -> pd.DataFrame:
    """probs [L, V] -> one row per (bin, vocabulary entry): t, predicted ('S' for 16), max[, mean]
    of p(next token = predicted)."""
    pmax, pmean = bins.reduce(view.probs)                            # [nb, V]
    nb, V = pmax.shape
    return pd.DataFrame({"t": np.repeat(bins.start, V), "predicted": np.tile(token_labels(np.arange(V)), nb),
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
    """p(top-1) at every step and, when the sequence has a target M, p(M) at every step."""
    out = {"p(top-1)": view.probs.max(axis=1)}
    m = view.positions.target
    if m is not None:
        out[f"p(M={m})"] = view.probs[:, m]
    return out


def total_state_norm(state_norm: np.ndarray) -> np.ndarray:
    """[L, D] per-channel ||h_t[d, :]|| -> [L] ||h_t||_F over all channels and states."""
    return np.sqrt(np.square(state_norm.astype(np.float64)).sum(axis=1))


def delta_ratio(delta: np.ndarray, memory_pos: Optional[int]) -> Optional[pd.DataFrame]:
    """Per channel: Δ at the memory position / the median of Δ over every other timestep, with
    both parts: DataFrame channel, delta_mem, median_else, ratio ([D] rows), or None without a
    memory position. A large ratio marks a channel that writes (large Δ) the token to recall."""
    if memory_pos is None or delta.shape[0] < 2:
        return None
    others = np.delete(delta, memory_pos, axis=0)                     # [L-1, D]
    med = np.median(others, axis=0).astype(np.float64)                # [D]
    dm = delta[memory_pos].astype(np.float64)
    return pd.DataFrame({"channel": np.arange(delta.shape[1]), "delta_mem": dm, "median_else": med,
                         "ratio": dm / med})


def channel_order(ratio: Optional[pd.DataFrame], n_channels: int, sort: str) -> list:
    """Channel ids in display order: 'index' (0..D-1) or 'ratio' (Δ ratio, largest first, ties in
    index order); without a Δ ratio (no memory position) index order."""
    if sort not in ("index", "ratio"):
        raise ValueError(f"unknown channel sort {sort!r}; choose 'index' or 'ratio'")
    if sort == "index" or ratio is None:
        return list(range(n_channels))
    return np.argsort(-ratio["ratio"].to_numpy(), kind="stable").tolist()
