"""The Logit lens tab's adapter: the Explore tab's sequence on the app's model, the residual stream
after each layer read out through the final norm and the head (analysis/lens.py; viz/lens.py)."""
from __future__ import annotations

from typing import Optional

from gradio.components.plot import PlotData

from analysis.lens import logit_lens
from viz import charts
from viz.lens import lens_chart

from . import common
from .common import user_errors

TOP_K_MAX = 10


def chart_of(tokens_text, top_k, query_step=None):
    """(Markdown, chart, the step read or None) without error conversion (the figure export reuses it
    and names the step). query_step: the step read (None: the task's first scored query; a plain LM's
    last step)."""
    tokens = common.tokens(tokens_text)
    k = common.whole(top_k, "top-k", 1, TOP_K_MAX)
    step = common.optional_whole(query_step, "query step", 0, tokens.size - 1)
    task = common.MODEL.task
    lens = logit_lens(common.model(), tokens, k=k, step=step, task=task)
    lab = task.labels
    if lens.query is None:
        md = "The sequence has no scored query (nothing to recall): the chart shows p(top-1) after each layer."
    else:
        at = lens.top_ids[:, lens.query]                                   # [n_layer, k]
        tops = " · ".join(f"layer {i + 1}: " + ", ".join(f"{lab[v]} ({lens.top_p[i, lens.query, j]:.2f})"
                                                         for j, v in enumerate(at[i])) for i in range(lens.n_layer))
        first = "no layer" if lens.first_layer is None else f"layer **{lens.first_layer + 1}**"
        what = "Query" if not common.is_plain_lm(task) else "Read"
        md = (f"{what} at t = {lens.query} ({lens.how}), answer **{lab[lens.target]}**: first the top-1 after "
              f"{first}. Top-{k} at the query: {tops}")
    chart = lens_chart(lens.score, lens.top_ids, lens.top_p, lab, lens.target, lens.query, lens.first_layer,
                       title=f"Logit lens, {common.MODEL.label}")
    return md, chart, lens.query


@user_errors
def show_lens(tokens_text: str, top_k: float, query_step: Optional[float] = None):
    """(Markdown summary, lens chart) at query_step (empty: chosen, and the summary says which)."""
    md, chart, _ = chart_of(tokens_text, top_k, query_step)
    return md, PlotData(type="altair", plot=charts.spec_json(chart))
