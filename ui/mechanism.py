"""The Mechanism tab's adapters: the Explore tab's sequence on chosen checkpoints — two side by
side (prediction and Δ ratio), the hidden attention α̃ of a layer, and interventions.

The checkpoints are the `*.safetensors` files in CHECKPOINT_DIR (analysis.compare loads each once,
read-only) plus the model the app was started with (`--checkpoint` / MAMBASCOPE_CHECKPOINT, or the
untrained fallback) when it is not one of those files: `checkpoint_names()`. A name outside that
list is refused, so a request cannot name an arbitrary path.
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np
from gradio.components.plot import PlotData

from analysis import compare
from model import trace
from model.checkpoint import read_metadata
from viz import charts, mechanism
from viz.intervention import p_target_chart

from . import common
from .common import shown, user_errors

CHECKPOINT_DIR = common.ROOT / "checkpoints"
ATTENTION_MAX_BINS = 96                  # hidden attention <= 96 x 96 cells: the lower triangle's 4,656
                                         # rects stay under Altair's 5,000-row limit for DataFrames
MEAN_CHANNELS = "mean over channels"     # channel choice: mean |α̃| over all channels
MEMORY_CHANNELS = "memory channels"      # channel text: the 16 top-Δ-ratio channels of the layer
CLAMP_RANGE = (0.0, 1000.0)              # Δ is a softplus output (>= 0); at 1000 exp(Δ·A) is 0 for any
                                         # A of these models already, and fp32 stays far from overflow
CHANNEL_CHARS = 12                       # a channel id longer than this is not one (its text is not echoed)


def _started() -> Optional[str]:
    """The choice naming the app's own model, or None when that model is one of the folder's files
    (or there is no model)."""
    m = common.MODEL
    if m.lm is None:
        return None
    if m.path is not None and m.path.parent.resolve() == CHECKPOINT_DIR.resolve():
        return None
    return f"{m.path.name if m.path is not None else m.label} (loaded at start)"


LM_NOTE = ("This model is a plain language model (no task): the memory-token, trigger and query parts "
           "(memory channels, the write-position default, p(M), the Δ ratio) are hidden; the comparison, hidden "
           "attention and interventions run on it, with p(actual next token) as the measure.")


def task_parts() -> dict:
    """What app.py shows of the tab's task-specific controls for the app's model: task (bool: show
    them), note (the one line saying why they are hidden, or ''), channels (the channel box's default)
    and the labels of the channel and timestep boxes."""
    if common.is_plain_lm():
        return {"task": False, "note": LM_NOTE, "channels": "0", "channels_label": "channels ('3, 7, 88')",
                "t_label": "timestep t"}
    return {"task": True, "note": "", "channels": MEMORY_CHANNELS,
            "channels_label": f"channels ('3, 7, 88' or '{MEMORY_CHANNELS}')",
            "t_label": "timestep t (empty = the write position, M after S)"}


def _vocab(name: str) -> Optional[int]:
    """A checkpoint file's vocabulary size from its metadata (the header only), None if unreadable."""
    try:
        return int((json.loads(read_metadata(CHECKPOINT_DIR / name)["config"]) or {})["vocab_size"])
    except (ValueError, KeyError, TypeError, OSError):     # an unreadable file is simply not offered
        return None


def checkpoint_names() -> list:
    """The folder's checkpoints, then the app's own model when it is not among them. A plain LM is
    compared only with checkpoints of its own vocabulary (its tokens mean nothing to the others)."""
    started = _started()
    names = compare.list_checkpoints(CHECKPOINT_DIR)
    if common.is_plain_lm() and common.MODEL.lm is not None:
        names = [n for n in names if _vocab(n) == common.MODEL.lm.config.vocab_size]
    return names + ([started] if started else [])


def default_pair() -> tuple:
    """(first, second) choice: the app's own model (or the default file) and the closed-form one."""
    names = checkpoint_names()
    own = _started() or (common.MODEL.path.name if common.MODEL.path is not None else None)
    first = own if own in names else common.DEFAULT_CHECKPOINT.name if common.DEFAULT_CHECKPOINT.name in names \
        else (names or [None])[0]
    second = next((n for n in names if n.startswith("analytic")), first)
    return first, second


def _model(name):
    """The model a checkpoint choice names."""
    names = checkpoint_names()
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"unknown checkpoint {shown(name)}; choose one of {', '.join(names) or '(none found)'}")
    if name == _started():
        return common.MODEL.lm
    return compare.load_named(CHECKPOINT_DIR, name, common.DEVICE)


def _task_checkpoint(name):
    """_model(name), refused when the app's model has a task and this checkpoint is a plain LM
    (analysis.compare.task_of is None): it has no M, write position or Δ ratio, and the task's
    sequence and token labels mean nothing to it."""
    lm = _model(name)
    if common.is_plain_lm():
        return lm
    theirs, ours = compare.task_of(lm), common.MODEL.task
    if theirs is None:
        raise ValueError(f"{shown(name)} is a plain language model (no task): it has no memory token M or Δ ratio, "
                         f"and this {ours.name} sequence means nothing to it; choose a task checkpoint")
    if (theirs.name, theirs.vocab_size) != (ours.name, ours.vocab_size):
        raise ValueError(f"{shown(name)} was trained on {theirs.name} (vocabulary {theirs.vocab_size}), this app's "
                         f"sequence is {ours.name} (vocabulary {ours.vocab_size}): choose a {ours.name} checkpoint")
    return lm


def _plot(chart) -> PlotData:
    return PlotData(type="altair", plot=charts.spec_json(chart))


def _ratio_note(ratio: Optional[np.ndarray]) -> str:
    if ratio is None:
        return "no write and filler: no Δ ratio"
    return " · ".join(f"layer {i + 1}: max Δ ratio {r.max():.3g} (ch {int(r.argmax())})" for i, r in enumerate(ratio))


def _channel(choice, n_channels: int) -> Optional[int]:
    """The channel dropdown: an id in 0..n_channels-1, or None for the mean over channels."""
    if choice is None or (isinstance(choice, str) and choice.strip() == MEAN_CHANNELS):
        return None
    s = str(choice).strip() if isinstance(choice, (str, int)) and not isinstance(choice, bool) else ""
    if not (s.isascii() and s.isdigit() and len(s) <= CHANNEL_CHARS):
        raise ValueError(f"channel {shown(choice)} is not a whole number or {MEAN_CHANNELS!r}")
    c = int(s)
    if not 0 <= c < n_channels:
        raise ValueError(f"channel {c} is out of range 0..{n_channels - 1}")
    return c


def _channels(text: str, lm, tokens: np.ndarray, layer: int) -> list:
    """The intervention's channel text: 'memory channels' or ids like '3, 7, 88'."""
    if text.strip().lower() == MEMORY_CHANNELS:
        if common.is_plain_lm():
            raise ValueError(f"'{MEMORY_CHANNELS}' are the top Δ-ratio channels at a task's write position; this "
                             "model is a plain language model: give channel ids, e.g. '3, 7, 88'")
        return compare.memory_channels(lm, tokens, layer)
    long = next((p for p in text.replace(",", " ").split() if len(p) > CHANNEL_CHARS), None)
    if long is not None:
        raise ValueError(f"channel {shown(long, 20)} is not a whole number (write e.g. '3, 7, 88')")
    return compare.parse_channels(text, lm.config.d_inner)


def checkpoint_sha(name) -> str:
    """The first 12 hex digits of a checkpoint choice's sha256 ('unsaved' for an untrained model)."""
    return (getattr(_model(name), "checkpoint_sha256", None) or "unsaved")[:12]


def compare_charts(tokens_text, checkpoint_a, checkpoint_b) -> tuple:
    """(Markdown table, Δ-ratio chart A or None, chart B or None); no error conversion."""
    tokens = common.tokens(tokens_text)
    rows, charts_ = [], []
    for name in (checkpoint_a, checkpoint_b):
        lm = _task_checkpoint(name)
        if common.is_plain_lm():     # no write position: the last step's prediction and the mean loss
            tr = trace(lm, tokens, include=())
            loss = -np.nanmean(tr.logp_next.astype(np.float64)) if len(tokens) > 1 else float("nan")
            pred, ratio = compare.prediction(tr), None
            rows.append((name, pred.top, pred.p_top, None, None, f"mean loss {loss:.4g} nats/token"))
            charts_.append(None)
            continue
        pred, ratio = compare.query_summary(lm, tokens)
        rows.append((name, pred.top, pred.p_top, pred.memory, pred.p_memory, _ratio_note(ratio)))
        charts_.append(None if ratio is None else mechanism.delta_ratio_chart(
            ratio, label=name, highlight=compare.memory_channel_pairs(ratio)))
    return mechanism.prediction_markdown(rows, common.MODEL.task.labels), charts_[0], charts_[1]


@user_errors
def compare_checkpoints(tokens_text: str, checkpoint_a: str, checkpoint_b: str):
    """The same sequence on two checkpoints: (Markdown table, Δ-ratio chart A, Δ-ratio chart B)."""
    md, a, b = compare_charts(tokens_text, checkpoint_a, checkpoint_b)
    return md, None if a is None else _plot(a), None if b is None else _plot(b)


@user_errors
def show_attention(tokens_text: str, checkpoint: str, layer: str, channel: str) -> PlotData:
    """Hidden attention α̃ of one layer (one channel or mean |α̃|), binned to ATTENTION_MAX_BINS."""
    return _plot(attention_chart(tokens_text, checkpoint, layer, channel))


def attention_chart(tokens_text, checkpoint, layer, channel):
    """show_attention's chart; no error conversion."""
    tokens = common.tokens(tokens_text)
    lm = _model(checkpoint)
    li = common.layer_index(layer, lm.config.n_layer)
    ch = _channel(channel, lm.config.d_inner)
    alpha = compare.attention_map(lm, tokens, li, ch)
    what = MEAN_CHANNELS + " of |α̃|" if ch is None else f"channel {ch}"
    return mechanism.hidden_attention_chart(alpha, tokens=tokens, max_bins=ATTENTION_MAX_BINS,
                                            title=f"{checkpoint}: layer {li + 1}, {what}")


@user_errors
def intervene(tokens_text: str, checkpoint: str, kind: str, layer: str, channels_text: str,
              timestep: Optional[float], until: Optional[float], value: float):
    """Query prediction before vs after one intervention: (Markdown table, p(M)-over-t chart).
    timestep empty = the write position (the memory token M after the first S)."""
    md, chart = intervention_chart(tokens_text, checkpoint, kind, layer, channels_text, timestep, until, value)
    return md, None if chart is None else _plot(chart)


def intervention_chart(tokens_text, checkpoint, kind, layer, channels_text, timestep, until, value) -> tuple:
    """intervene's (Markdown, chart or None); no error conversion."""
    tokens = common.tokens(tokens_text)
    lm = _task_checkpoint(checkpoint)
    kind = common.choice(kind, "intervention", compare.INTERVENTIONS)
    li = common.layer_index(layer, lm.config.n_layer)
    t = common.whole(timestep, "timestep", optional=True)
    end = common.whole(until, "until t", optional=True)
    clamp = common.number(value, "clamp Δ to", *CLAMP_RANGE) if kind == "clamp Δ" else 0.0
    channels_text = common.text(channels_text, "channels")
    if t is None:
        if common.is_plain_lm():
            raise ValueError("give a timestep: a plain language model has no write position to default to")
        t = common.MODEL.task.positions(tokens).first_write
        if t is None:
            raise ValueError("give a timestep: the sequence has no S M pair whose write position to default to")
    channels = () if kind == "ablate layer SSM output" else _channels(channels_text, lm, tokens, li)
    iv = compare.make_intervention(kind, li, channels, t, end, clamp, len(tokens))
    if common.is_plain_lm():
        return _lm_intervention(lm, tokens, iv, kind, li, t, channels)
    before, after = compare.run_intervention(lm, tokens, iv)
    where = f"layer {li + 1}, t = {t}" + (f", channels {', '.join(map(str, channels))}" if channels else "")
    md = mechanism.prediction_markdown([("before", before.top, before.p_top, before.memory, before.p_memory, ""),
                                        ("after", after.top, after.p_top, after.memory, after.p_memory,
                                         f"{kind} ({where})")], common.MODEL.task.labels)
    chart = None if before.p_memory_t is None else p_target_chart(
        before.p_memory_t, after.p_memory_t, title=f"p(M) before vs after {kind}, {where}", y_title="p(M)")
    return md, chart


def _lm_intervention(lm, tokens: np.ndarray, iv, kind: str, li: int, t: int, channels) -> tuple:
    """A plain LM's intervention: the last step's top-1 and the mean loss before vs after, and
    p(actual next token) at every step before vs after (the last step predicts nothing: left out)."""
    before, after = trace(lm, tokens, include=()), trace(lm, tokens, include=(), interventions=[iv])
    where = f"layer {li + 1}, t = {t}" + (f", channels {', '.join(map(str, channels))}" if channels else "")
    rows = []
    for name, tr, note in (("before", before, ""), ("after", after, f"{kind} ({where})")):
        pred = compare.prediction(tr)
        loss = -np.nanmean(tr.logp_next.astype(np.float64)) if len(tokens) > 1 else float("nan")
        rows.append((name, pred.top, pred.p_top, None, None, f"mean loss {loss:.4g} nats/token" +
                     (f" · {note}" if note else "")))
    md = mechanism.prediction_markdown(rows, common.MODEL.task.labels)
    chart = None if len(tokens) < 2 else p_target_chart(
        before.p_next[:-1], after.p_next[:-1], title=f"p(actual next token) before vs after {kind}, {where}",
        y_title="p(actual next token)")
    return md, chart
