"""The Patching tab's adapters: the Explore tab's sequence (clean) beside a corrupted copy, how the
two runs differ, and activation patching on the app's model (analysis/patching.py; charts in
viz/patching.py).

The corrupted sequence is made from the clean one by the task's edits (induction heads: another
memory token, the trigger moved; selective copying and MQAR: the Memories tab's edits; any model: a
token set or two swapped; light, numpy) or typed; both must be equally long and at most
PATCH_MAX_LEN tokens. What is scored: analysis.patching.readout_for (a task's query that the
corruption changes, or a plain LM's next token / top-1 at the last step; a query step chosen), both
runs cut after that step.
"""
from __future__ import annotations

from typing import Optional

from gradio.components.plot import PlotData

from analysis import patching
from tasks import TokenError
from tasks import induction as ind
from viz import charts
from viz.patching import difference_chart, patching_heatmap

from . import common, memory
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


def _induction_only(what: str) -> None:
    """Refuse an induction-heads corruption on another model, naming what it has instead."""
    task = common.MODEL.task
    if task.name != ind.NAME:
        model = "a plain language model" if common.is_plain_lm() else f"a {task.name} model"
        raise ValueError(f"{what} corrupts induction-heads sequences (their S M pair); this model is {model}: use "
                         f"corrupt_edit ({'; '.join(edit_kinds())}) or type the corrupted sequence")


@user_errors
def corrupt_memory(tokens_text: str, memory: float) -> str:
    """The clean sequence with another memory token M (every copy of the old M relabelled)."""
    _induction_only("Corrupt: set M")
    return ind.INDUCTION.format(ind.set_memory_token(common.tokens(tokens_text), common.whole(memory, "memory token")))


@user_errors
def corrupt_trigger(tokens_text: str, position: float) -> str:
    """The clean sequence with its S M pair moved to another position."""
    _induction_only("Corrupt: move S M")
    return ind.INDUCTION.format(ind.move_trigger(common.tokens(tokens_text), common.whole(position, "trigger position")))


# ---------------------------------------------------------------- corruptions of any model
def _set_token(tokens, a, b):
    t = common.whole(a, "step a", 0, tokens.size - 1)
    tokens = tokens.copy()
    tokens[t] = common.whole(b, "token id b", 0, common.MODEL.task.vocab_size - 1)
    return tokens


def _swap_tokens(tokens, a, b):
    i, j = (common.whole(v, f"step {n}", 0, tokens.size - 1) for v, n in ((a, "a"), (b, "b")))
    tokens = tokens.copy()
    tokens[[i, j]] = tokens[[j, i]]
    return tokens


ANY_MODEL = {"set the token at step a to id b": _set_token, "swap the tokens at steps a and b": _swap_tokens}


def edit_kinds() -> list:
    """The corruptions of the app's model besides the induction buttons: its task's edits (selective
    copying, MQAR: ui/memory.py's), then a token set or two swapped (any model, the same length)."""
    return list(memory.EDITS.get(common.MODEL.task.name, {})) + list(ANY_MODEL)


@user_errors
def corrupt_edit(tokens_text: str, kind: str, a: float, b: float) -> str:
    """The clean sequence with one edit of edit_kinds() applied (the corrupted box's new text)."""
    edits = {**memory.EDITS.get(common.MODEL.task.name, {}), **ANY_MODEL}
    fn = edits[common.choice(kind, "corruption", list(edits))]
    tokens = common.tokens(tokens_text)
    out = fn(tokens, a, b)
    if (out == tokens).all():
        raise TokenError(f"{kind} with a = {common.shown(a)}, b = {common.shown(b)} leaves the sequence as it is")
    return common.MODEL.task.format(out)


def caption(clean, corrupted, kind: str) -> str:
    differ = (clean != corrupted).nonzero()[0]
    where = ", ".join(map(str, differ[:8].tolist())) + ("…" if differ.size > 8 else "")
    return (f"clean vs corrupted, L = {clean.size:,}; they differ at t = {where or '(nowhere)'}; restored: "
            f"{kind}; model {common.MODEL.label}")


def chart_of(tokens_text, corrupted_text, kind, query_step=None):
    """(Markdown, difference chart, patching heatmap, the step read) without error conversion (the
    figure export reuses it and names the step). query_step: the step whose prediction is scored
    (None: analysis.patching.readout_for's choice)."""
    clean, corrupted = pair(tokens_text, corrupted_text)
    what = KINDS[common.choice(kind, "patched activation", list(KINDS))]
    step = common.optional_whole(query_step, "query step", 0, clean.size - 1)
    lm, task = common.model(), common.MODEL.task
    ro = patching.readout_for(lm, clean, corrupted, step, task)
    cut = ro.step + 1                                   # the steps after the read one cannot change it
    cmp = patching.compare_runs(lm, clean[:cut], corrupted[:cut], target=ro.target, task=task)
    pat = patching.patch_sweep(lm, clean[:cut], corrupted[:cut], kind=what, target=ro.target, task=task)
    lab = lambda i: task.token_labels([i])[0]                          # (50k labels: one at a time)
    best = pat.p.max(axis=2)                                             # [n_layer, n_groups]
    rows = "\n".join(f"| layer {i + 1} | " + " | ".join(f"{best[i, g]:.3f}" for g in range(len(pat.groups))) + " |"
                     for i in range(best.shape[0]))
    cut_note = f" (both runs stop there: {clean.size - cut:,} later steps left out)" if cut < clean.size else ""
    md = (f"**target {lab(cmp.target)}**, read after t = {ro.step}: {ro.how}{cut_note} · p(target) there: clean "
          f"**{cmp.p_clean:.3f}** (top-1 {lab(cmp.top_clean)}), corrupted **{cmp.p_corrupted:.3f}** (top-1 "
          f"{lab(cmp.top_corrupted)}) · {caption(clean, corrupted, kind)}\n\n"
          f"Best p(target) after restoring the clean {kind} at one step:\n\n"
          f"| | " + " | ".join(pat.groups) + " |\n|---|" + "---|" * len(pat.groups) + "\n" + rows)
    diff = difference_chart(cmp.p_target_clean, cmp.p_target_corrupted, cmp.delta_diff, cmp.norm_diff)
    heat = patching_heatmap(pat.p, pat.positions, pat.groups, pat.p_clean, pat.p_corrupted, kind=what)
    return md, diff, heat, ro.step


@user_errors
def run_patching(tokens_text: str, corrupted_text: str, kind: str, query_step: Optional[float] = None):
    """(Markdown summary, difference chart, patching heatmap) of the clean / corrupted pair, scored
    after query_step (empty: chosen, and the summary says which)."""
    md, diff, heat, _ = chart_of(tokens_text, corrupted_text, kind, query_step)
    return md, _plot(diff), _plot(heat)
