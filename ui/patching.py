"""The Patching tab's adapters: the Explore tab's sequence (clean) beside a corrupted copy, how the
two runs differ, and activation patching on the app's model (analysis/patching.py; charts in
viz/patching.py).

The corrupted sequence is made from the clean one by the task's edits (another memory token, the
trigger moved: light, numpy) or typed; both must be equally long and at most PATCH_MAX_LEN tokens.
"""
from __future__ import annotations

from gradio.components.plot import PlotData

from analysis import patching
from tasks import induction as ind
from viz import charts
from viz.patching import difference_chart, patching_heatmap

from . import common
from .common import user_errors

KINDS = {"state h": "state", "Δ": "delta", "layer output": "output"}     # radio label -> analysis kind


def _plot(chart) -> PlotData:
    return PlotData(type="altair", plot=charts.spec_json(chart))


def pair(clean_text, corrupted_text) -> tuple:
    """(clean, corrupted) int64 [L] each, checked: the same length, within the patching limit."""
    clean = common.tokens(clean_text)
    corrupted = common.tokens(corrupted_text)
    if clean.size != corrupted.size:
        raise ValueError(f"the corrupted sequence has {corrupted.size:,} tokens, the clean one {clean.size:,}: "
                         "they must be equally long (use the corrupt buttons)")
    if clean.size > patching.PATCH_MAX_LEN:
        raise ValueError(f"patching is limited to {patching.PATCH_MAX_LEN:,} tokens, got {clean.size:,}")
    return clean, corrupted


@user_errors
def corrupt_memory(tokens_text: str, memory: float) -> str:
    """The clean sequence with another memory token M (every copy of the old M relabelled)."""
    return ind.INDUCTION.format(ind.set_memory_token(common.tokens(tokens_text), common.whole(memory, "memory token")))


@user_errors
def corrupt_trigger(tokens_text: str, position: float) -> str:
    """The clean sequence with its S M pair moved to another position."""
    return ind.INDUCTION.format(ind.move_trigger(common.tokens(tokens_text), common.whole(position, "trigger position")))


def caption(clean, corrupted, kind: str) -> str:
    differ = (clean != corrupted).nonzero()[0]
    where = ", ".join(map(str, differ[:8].tolist())) + ("…" if differ.size > 8 else "")
    return (f"clean vs corrupted, L = {clean.size:,}; they differ at t = {where or '(nowhere)'}; restored: "
            f"{kind}; model {common.MODEL.label}")


def chart_of(tokens_text, corrupted_text, kind):
    """(Markdown, difference chart, patching heatmap) without error conversion (the figure export reuses it)."""
    clean, corrupted = pair(tokens_text, corrupted_text)
    what = KINDS[common.choice(kind, "patched activation", list(KINDS))]
    lm = common.model()
    cmp = patching.compare_runs(lm, clean, corrupted)
    pat = patching.patch_sweep(lm, clean, corrupted, kind=what)
    lab = common.MODEL.task.labels
    best = pat.p.max(axis=2)                                             # [n_layer, n_groups]
    rows = "\n".join(f"| layer {i + 1} | " + " | ".join(f"{best[i, g]:.3f}" for g in range(len(pat.groups))) + " |"
                     for i in range(best.shape[0]))
    md = (f"**target {lab[cmp.target]}** · p(target) at the query: clean **{cmp.p_clean:.3f}** (top-1 "
          f"{lab[cmp.top_clean]}), corrupted **{cmp.p_corrupted:.3f}** (top-1 {lab[cmp.top_corrupted]}) · "
          f"{caption(clean, corrupted, kind)}\n\n"
          f"Best p(target) after restoring the clean {kind} at one step:\n\n"
          f"| | " + " | ".join(pat.groups) + " |\n|---|" + "---|" * len(pat.groups) + "\n" + rows)
    diff = difference_chart(cmp.p_target_clean, cmp.p_target_corrupted, cmp.delta_diff, cmp.norm_diff)
    heat = patching_heatmap(pat.p, pat.positions, pat.groups, pat.p_clean, pat.p_corrupted, kind=what)
    return md, diff, heat


@user_errors
def run_patching(tokens_text: str, corrupted_text: str, kind: str):
    """(Markdown summary, difference chart, patching heatmap) of the clean / corrupted pair."""
    md, diff, heat = chart_of(tokens_text, corrupted_text, kind)
    return md, _plot(diff), _plot(heat)
