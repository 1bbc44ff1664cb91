"""Figures for papers: any of the app's charts as PNG (at a chosen DPI) or SVG, with a caption that
says what it shows (viz/figure.py renders; this module rebuilds the chart from the widgets and
writes the caption).

    export_figure("dashboard", "png", 300, <every widget the charts read>) -> path of the file

Every widget a tab's chart reads is a parameter here (the Patching and Logit lens tabs' "read at
step t" too): the figure is the chart on screen, and its caption names the step read.

The chart is recomputed on the server from the same widgets the tab uses (never taken from the
page: a spec sent by a client could name any URL for vl-convert to fetch). The caption names the
model (label, sha256), the sequence (its generator settings when the text is what they generate,
else its length and sha256) and the binning / window / order or the chart's own settings.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from tasks import induction as ind
from viz import figure
from viz.frames import clamp_window, time_bins

from . import common, explore, lens, mechanism, patching, permalink, storage
from .common import user_errors

CHARTS = ("dashboard", "Δ ratio (checkpoint)", "Δ ratio (compare with)", "hidden attention", "intervention",
          "patching: differences", "patching: heatmap", "logit lens")
FORMATS = ("png", "svg")


def describe_sequence(tokens: np.ndarray, generator_values) -> str:
    """'L = 256, generated: length 256, seed 0, ...' when the generator widgets make exactly these
    tokens, else 'L = 300, sequence sha256 9f86d081884c7d65 (not generated)'."""
    g = permalink._generator(generator_values)
    try:
        if g is not None and np.array_equal(ind.INDUCTION.realize(g), tokens):
            settings = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in vars(g).items())
            return f"L = {tokens.size:,}, generated ({settings})"
    except ValueError:
        pass
    return f"L = {tokens.size:,}, sequence sha256 {permalink.sequence_hash(tokens)} (typed or edited)"


def model_line(name: Optional[str] = None) -> str:
    """The app's model (or a Mechanism-tab checkpoint choice) and its sha256."""
    if name is None:
        lm = common.model()
        # the untrained fallback model was never saved: it has no sha256
        return f"model {common.MODEL.label}, sha256 {(getattr(lm, 'checkpoint_sha256', None) or 'unsaved')[:12]}"
    return f"model {name}, sha256 {mechanism.checkpoint_sha(name)}"


def chart_and_caption(which, tokens_text, gen, view, mech, corrupted_text, patch_kind, top_k,
                      patch_step=None, lens_step=None) -> tuple:
    """(chart, caption lines) of one chart choice. gen: the 7 generator widgets; view: (sort, bins,
    t_from, t_to, layers, stat); mech: (checkpoint, compare with, attention layer, channel,
    intervention kind, layer, channels, t, until, value); patch_step, lens_step: the Patching and
    Logit lens tabs' "read at step t" boxes (empty: the step those tabs choose)."""
    which = common.choice(which, "figure of", CHARTS)
    tokens = common.tokens(tokens_text)
    seq = describe_sequence(tokens, gen)
    ck_a, ck_b, att_layer, att_ch, iv_kind, iv_layer, iv_ch, iv_t, iv_until, iv_value = mech
    if which == "dashboard":
        chart, _ = explore.chart_of(tokens_text, *view)
        s = explore.view_settings(*view)
        t0, t1 = clamp_window(tokens.size, s["t_from"], s["t_to"])
        w = time_bins(t0, t1, s["max_bins"]).width
        binning = "per timestep" if w == 1 else f"time binned by {w} steps (heatmaps: {s['stat']} per bin)"
        order = "channels by index" if s["sort"] == "index" else "channels sorted by Δ ratio"
        if "top_units" in s:
            order = f"the top {s['top_units']} channels by {s['score']}, the rest as one mean row"
        return chart, [model_line(), seq, f"window t = {t0}..{t1 - 1}; {binning}; {order}"]
    if which.startswith("Δ ratio"):
        name = ck_a if which == "Δ ratio (checkpoint)" else ck_b
        _, a, b = mechanism.compare_charts(tokens_text, ck_a, ck_b)
        chart = a if which == "Δ ratio (checkpoint)" else b
        if chart is None:
            raise ValueError("no Δ ratio: the sequence needs a trigger S, a memory token M and filler after it")
        return chart, [model_line(name), seq, "Δ ratio per channel: max Δ over the write window / median Δ over "
                                              "the filler after it; memory channels highlighted"]
    if which == "hidden attention":
        chart = mechanism.attention_chart(tokens_text, ck_a, att_layer, att_ch)
        return chart, [model_line(ck_a), seq, f"hidden attention α̃, {att_layer}, channel {att_ch}; "
                                              f"at most {mechanism.ATTENTION_MAX_BINS} x {mechanism.ATTENTION_MAX_BINS} "
                                              "blocks (max |α̃| per block)"]
    if which == "intervention":
        _, chart = mechanism.intervention_chart(tokens_text, ck_a, iv_kind, iv_layer, iv_ch, iv_t, iv_until, iv_value)
        if chart is None:
            raise ValueError("no p(M) chart: the sequence has no S M pair")
        return chart, [model_line(ck_a), seq, f"intervention: {iv_kind}, {iv_layer}, channels {common.shown(iv_ch, 40)}"]
    if which.startswith("patching"):
        _, diff, heat, step = patching.chart_of(tokens_text, corrupted_text, patch_kind, patch_step)
        clean, corrupted = patching.pair(tokens_text, corrupted_text)
        return (diff if which == "patching: differences" else heat), [
            model_line(), seq + " (clean)", f"{patching.caption(clean, corrupted, patch_kind)}; read after t = {step}"]
    _, chart, step = lens.chart_of(tokens_text, top_k, lens_step)
    read = "" if step is None else f"; read at t = {step}"
    return chart, [model_line(), seq, f"logit lens: resid_post after each layer → norm_f → head; top-{top_k}{read}"]


@user_errors
def export_figure(which: str, fmt: str, dpi: float, tokens_text: str, length, trigger_pos, memory, seed, n_triggers,
                  filler_excludes_memory, memory_in_filler_every, channel_sort, max_bins, t_from, t_to, layers,
                  bin_stat, checkpoint_a, checkpoint_b, attention_layer, attention_channel, intervention_kind,
                  intervention_layer, intervention_channels, timestep, until, value, corrupted_text, patch_kind,
                  top_k, patch_step: Optional[str] = None, lens_step: Optional[str] = None) -> str:
    """The chart `which` as a PNG at `dpi` or an SVG, captioned; returns the stored file's path.
    patch_step, lens_step last (and optional): API callers from before they existed still work."""
    fmt = common.choice(fmt, "figure format", FORMATS)
    dots = figure.check_dpi(common.number(dpi, "dpi", *figure.DPI_RANGE)) if fmt == "png" else None
    gen = (length, trigger_pos, memory, seed, n_triggers, filler_excludes_memory, memory_in_filler_every)
    view = (channel_sort, max_bins, t_from, t_to, layers, bin_stat)
    mech = (checkpoint_a, checkpoint_b, attention_layer, attention_channel, intervention_kind, intervention_layer,
            intervention_channels, timestep, until, value)
    chart, caption = chart_and_caption(which, tokens_text, gen, view, mech, corrupted_text, patch_kind, top_k,
                                       patch_step, lens_step)
    fig = figure.captioned(chart, caption)
    stem = "figure-" + "-".join("".join(c if c.isascii() and c.isalnum() else " " for c in which).split())
    if fmt == "svg":
        svg = figure.to_svg(fig)
        return str(storage.store(f"{stem}.svg", lambda p: p.write_text(svg, encoding="utf-8")))
    png = figure.to_png(fig, dots)
    return str(storage.store(f"{stem}-{dots:g}dpi.png", lambda p: p.write_bytes(png)))
