"""The Explore tab's adapters: widgets in, (chart, summary) or token text out.

One function per view, its parameters mirroring the widgets one to one (app.py wires them). A
view is a pure function of the widgets: every edit re-runs the model (8 ms at L=256), so no trace
is kept between calls and nothing mutable is shared between users. The generator, presets and
quick edits are the induction task's (tasks/induction.py); the charts viz/'s. A plain LM (a model
directory without a task: ui/common.is_plain_lm) takes text or ids, gets the LM views (viz/lm.py)
and refuses the induction generator and edits with a message saying so.
"""
from __future__ import annotations

import time
from typing import Optional

import gradio as gr
from gradio.components.plot import PlotData

from tasks import induction as ind
from viz import charts, lm, scale, summary
from viz.frames import MAX_BINS_LIMIT, TraceView, clamp_window, time_bins

from . import common
from .common import user_errors

VIEW_QUANTITIES = common.CHART_QUANTITIES   # what the charts draw (exports take everything)
# the channel-order radio -> dashboard's sort, or 'top:<score>': the TOP_UNITS best units by that
# score (viz/scale.py SCORES), the rest as one named mean row (the values are ASCII: links carry them)
SORTS = {"index": "index", "Δ ratio": "ratio",
         **{f"top {scale.TOP_UNITS} by {name}": f"top:{key}" for key, name in scale.SCORES.items()}}
BIN_STATS = ("max", "mean")


# the dashboard's height grows with the layers shown (three charts each): a few by default, spread
# over the depth, and a cap, so that a 24-64 layer model opens as fast as the 2-layer one
DEFAULT_LAYERS = 4
MAX_LAYERS_SHOWN = 8


def layer_choices() -> list:
    return common.layer_names(common.MODEL.config.n_layer)


def default_layers() -> list:
    """At most DEFAULT_LAYERS layer names, evenly spread from the first to the last (all of a small model)."""
    names = layer_choices()
    n = len(names)
    if n <= DEFAULT_LAYERS:
        return names
    picks = sorted({round(i * (n - 1) / (DEFAULT_LAYERS - 1)) for i in range(DEFAULT_LAYERS)})
    return [names[i] for i in picks]


FIRST_TEXT_LM = "The quick brown fox jumps over the lazy dog. The quick brown fox"   # a repeat: loss drops


def first_text() -> str:
    """The text box's content when the page opens: the paper's setup (a plain LM: a sentence, or ids)."""
    task = common.MODEL.task
    if common.is_plain_lm():
        return FIRST_TEXT_LM if task.name == "text" else task.format([i % task.vocab_size for i in range(32)])
    if task.name != ind.NAME:                 # selective copying, MQAR: the task's first preset
        return task.format(task.realize(next(iter(task.presets.values()))))
    return ind.INDUCTION.format(ind.INDUCTION.realize(ind.PRESETS["Paper setup (L=256)"]))


def preset_names() -> list:
    """The preset dropdown's choices: the loaded task's presets (none for a plain LM)."""
    return [] if common.is_plain_lm() else list(common.MODEL.task.presets)


def induction_only(what: str) -> None:
    """Refuse an induction-heads edit on a plain LM (its sequences are text, not S M pairs) or on
    another task's model (its sequences have no S M pairs either)."""
    if common.is_plain_lm():
        raise ValueError(f"{what} makes induction-heads sequences; this model is a plain language model: "
                         "type text (or ids) in the box instead")
    if common.MODEL.task.name != ind.NAME:
        raise ValueError(f"{what} makes induction-heads sequences; this model's task is "
                         f"{common.MODEL.task.name}: use its presets or the Memories tab's edits")


def trace_view(tokens_text, include: Optional[tuple] = VIEW_QUANTITIES):
    """(Trace, TraceView, seconds the model took) of the text box's sequence."""
    tokens = common.tokens(tokens_text, include)          # the cap of what this trace keeps
    common.model()
    t = time.perf_counter()
    tr = common.run_trace(tokens, include)
    return tr, TraceView.from_trace(tr, common.MODEL.task, label=common.MODEL.label), time.perf_counter() - t


def view_settings(channel_sort, max_bins, t_from, t_to, layers, bin_stat) -> dict:
    """The view widgets -> dashboard's keyword arguments, each checked and named."""
    picked = common.choices(layers, "layer", layer_choices())
    if not picked:
        raise ValueError("choose at least one layer to show")
    if len(picked) > MAX_LAYERS_SHOWN:
        raise ValueError(f"{len(picked)} layers chosen: show at most {MAX_LAYERS_SHOWN} at once (the dashboard "
                         "draws three charts per layer)")
    sort = SORTS[common.choice(channel_sort, "channel order", list(SORTS))]
    if common.is_plain_lm() and sort.endswith("ratio"):
        raise ValueError("the Δ ratio needs a task's write position, and this model is a plain language model: "
                         "order channels by index or rank them by max Δ, state norm or variance")
    top = {"top_units": scale.TOP_UNITS, "score": sort[4:]} if sort.startswith("top:") else {}
    return {"sort": "index" if top else sort, **top,
            "max_bins": common.whole(max_bins, "time bins", 1, MAX_BINS_LIMIT),
            "t_from": common.whole(t_from, "window from t", optional=True),
            "t_to": common.whole(t_to, "window to t", optional=True),
            "layers": [common.layer_index(s, common.MODEL.config.n_layer) for s in picked],
            "stat": common.choice(bin_stat, "bin statistic", BIN_STATS)}


def chart_of(tokens_text, channel_sort, max_bins, t_from, t_to, layers, bin_stat, links: bool = False):
    """(compound chart, summary Markdown) of the view; no error conversion (callers add it).
    links: the overview's rows (a deep model) link to this view with their layer added (the page's
    permalinks; not in exported files, where a relative link leads nowhere)."""
    settings = view_settings(channel_sort, max_bins, t_from, t_to, layers, bin_stat)
    _, view, seconds = trace_view(tokens_text)
    layer_links = None
    if links and common.MODEL.config.n_layer >= scale.OVERVIEW_MIN_LAYERS:
        from . import permalink         # here: permalink builds on this module
        layer_links = permalink.drill_links(tokens_text, channel_sort, max_bins, t_from, t_to, layers, bin_stat)
    chart = charts.dashboard(view, **settings, layer_links=layer_links)
    width = time_bins(*clamp_window(view.length, settings["t_from"], settings["t_to"]), settings["max_bins"]).width
    note = f"<br><small>model run: {seconds * 1000:.0f} ms ({common.backend_note()})</small>"
    return chart, (lm.describe(view, width) if view.is_lm else summary.describe(view, width)) + note


@user_errors
def show(tokens_text: str, channel_sort: str, max_bins: float, t_from: Optional[float], t_to: Optional[float],
         layers: list, bin_stat: str):
    """The whole view: (compound chart, summary Markdown)."""
    return chart_of(tokens_text, channel_sort, max_bins, t_from, t_to, layers, bin_stat, links=True)


def show_plot(tokens_text: str, channel_sort: str, max_bins: float, t_from: Optional[float],
              t_to: Optional[float], layers: list, bin_stat: str):
    """`show` for gr.Plot: the spec serialised here without a second schema validation (gr.Plot
    would call chart.to_json(), which re-validates: ~0.5 s per trace; tests validate the specs)."""
    chart, text = show(tokens_text, channel_sort, max_bins, t_from, t_to, layers, bin_stat)
    return PlotData(type="altair", plot=charts.spec_json(chart)), text


@user_errors
def generate(length: float, trigger_pos: float, memory: float, seed: float, n_triggers: float,
             filler_excludes_memory: bool, memory_in_filler_every: float) -> str:
    induction_only("the generator")
    g = ind.Generator(length=common.whole(length, "length"),
                      trigger_pos=common.whole(trigger_pos, "trigger position"),
                      memory=common.whole(memory, "memory token"),
                      seed=common.whole(seed, "seed", 0),
                      n_triggers=common.whole(n_triggers, "number of triggers"),
                      filler_excludes_memory=common.flag(filler_excludes_memory, "filler excludes M"),
                      memory_in_filler_every=common.whole(memory_in_filler_every, "M in filler every"))
    return ind.INDUCTION.format(ind.INDUCTION.realize(g))


@user_errors
def apply_preset(name: str):
    """A preset fills the generator widgets and the text box (then the view re-runs); another
    task's preset fills the text box only (its generator is not the induction one)."""
    task = common.MODEL.task
    if not common.is_plain_lm() and task.name != ind.NAME:
        name = common.choice(name, "preset", list(task.presets))
        return (*[gr.skip()] * 7, task.format(task.realize(task.presets[name])), task.preset_notes[name])
    induction_only("a preset")
    g = ind.PRESETS[common.choice(name, "preset", list(ind.PRESETS))]
    text = ind.INDUCTION.format(ind.INDUCTION.realize(g))
    return (g.length, g.trigger_pos, g.memory, g.seed, g.n_triggers, g.filler_excludes_memory,
            g.memory_in_filler_every, text, ind.PRESET_NOTES[name])


@user_errors
def set_memory(tokens_text: str, memory: float) -> str:
    induction_only("'set M'")
    tokens = common.tokens(tokens_text)
    return ind.INDUCTION.format(ind.set_memory_token(tokens, common.whole(memory, "memory token")))


@user_errors
def move_trigger(tokens_text: str, position: float) -> str:
    induction_only("'move S M'")
    tokens = common.tokens(tokens_text)
    return ind.INDUCTION.format(ind.move_trigger(tokens, common.whole(position, "trigger position")))
