"""The Memories tab's adapters: the Explore tab's sequence on the app's model, seen as many memories
(analysis/memory_lab.py; charts viz/memory.py). For a task with writes and recalls (selective
copying's data tokens, MQAR's values, induction heads' one token): when each write enters a
layer's state and how much of it is left, which channels (heads) hold it when it is recalled,
and, on request, each write's Δ clamped to 0 in turn with every recall scored again.
"""
from __future__ import annotations

import numpy as np
from gradio.components.plot import PlotData

from analysis.memory_lab import clamp_matrix, memory_map
from tasks import induction as ind
from tasks import mqar as mq
from tasks import selective_copy as sc
from viz import charts
from viz.memory import clamp_chart, holders_chart, memory_labels, retention_chart

from . import common
from .common import user_errors

UNIT_VIEWS = {"state held (‖term‖)": "holders", "read at the recall (|C·term|)": "reads",
              "share of the unit's state": "share"}
MAX_WRITES = 64          # the map's rows; MQAR's largest Zoology setting has 64 pairs
CLAMP_MAX_LEN = 8192     # the clamp runs the model once per write (+1): bounded work per request


def _plot(chart) -> PlotData:
    return PlotData(type="altair", plot=charts.spec_json(chart))


def _memories(tokens_text):
    """(tokens [L], MemoryMap, the memories' labels) of the text box's sequence."""
    if common.is_plain_lm():
        raise ValueError("the Memories tab needs a task model (induction heads, selective copying, MQAR): "
                         "a plain language model's text has no write and recall steps to map")
    tokens = common.tokens(tokens_text)
    task = common.MODEL.task
    writes = task.positions(tokens).writes
    if len(writes) > MAX_WRITES:
        raise ValueError(f"the sequence has {len(writes)} writes; the map shows at most {MAX_WRITES}")
    m = memory_map(common.model(), task, tokens)
    return tokens, m, memory_labels(m.writes, tokens, task.labels)


def charts_of(tokens_text, layer, unit_view):
    """(Markdown, retention chart, holders chart) without error conversion."""
    lm = common.model()
    i = common.layer_index(layer, lm.config.n_layer)
    what = UNIT_VIEWS[common.choice(unit_view, "unit view", list(UNIT_VIEWS))]
    tokens, m, labels = _memories(tokens_text)
    values = getattr(m, what)[i]                                          # [K, U]
    lost = [labels[k] for k in range(len(labels)) if m.retained[i][k, np.searchsorted(m.times, m.recall[k])] <
            1e-3 * m.retained[i][k].max()]
    tops = "; ".join(f"{labels[k].split(':')[0]} → {m.unit}s {', '.join(map(str, m.top_holders(i, k, 3)))}"
                     for k in range(min(len(labels), 8)))
    md = (f"**{len(labels)} memories** in layer {i + 1} ({m.unit}s). Top holders at each recall: {tops}"
          + (" …" if len(labels) > 8 else "") +
          (f"<br>Below 0.1% of its peak when recalled: {', '.join(lost)}." if lost else ""))
    ret = retention_chart(m.retained[i], m.times, labels, m.recall,
                          title=f"Layer {i + 1}: each write's part of the state, {common.MODEL.label}")
    hold = holders_chart(values, labels, m.unit, what=unit_view.split(" (")[0],
                         title=f"Layer {i + 1}: which {m.unit}s hold each memory at its recall")
    return md, ret, hold


@user_errors
def show_memories(tokens_text: str, layer: str, unit_view: str):
    """(Markdown, retention plot, holders plot)."""
    md, ret, hold = charts_of(tokens_text, layer, unit_view)
    return md, _plot(ret), _plot(hold)


def clamp_of(tokens_text, layer, window):
    """(Markdown, clamp chart) without error conversion."""
    lm = common.model()
    i = common.layer_index(layer, lm.config.n_layer)
    w = common.whole(window, "clamp window", 1, lm.config.d_conv * 4)
    tokens, m, labels = _memories(tokens_text)
    if len(tokens) > CLAMP_MAX_LEN:
        raise ValueError(f"the clamp runs the model {len(labels) + 1} times: at most {CLAMP_MAX_LEN} tokens "
                         f"(this sequence has {len(tokens)})")
    cm = clamp_matrix(lm, common.MODEL.task, tokens[None], layers=[i], window=w)
    md = (f"Δ clamped to 0 in layer {i + 1} (all {m.unit}s) over [w, w+{w}) of one write at a time: its own recall "
          f"right in **{cm.diagonal:.0%}** of cases, the other memories' in **{cm.off_diagonal:.0%}** "
          f"(no clamp: {cm.baseline:.0%}).")
    return md, clamp_chart(cm.acc, labels, title=f"Layer {i + 1}: clamp one write, score every memory")


@user_errors
def show_clamp(tokens_text: str, layer: str, window: float):
    """(Markdown, clamp plot)."""
    md, chart = clamp_of(tokens_text, layer, window)
    return md, _plot(chart)


# ---------------------------------------------------------------- the tasks' own edits
def edit_kinds() -> list:
    """The loaded task's quick edits (tasks/selective_copy.py, tasks/mqar.py): label -> (a, b) meaning."""
    return list(EDITS.get(common.MODEL.task.name, {}))


def _move_data(tokens, a, b):
    return sc.move_data_token(tokens, common.whole(a, "data token #", 1) - 1, common.whole(b, "new position", 0))


def _set_data(tokens, a, b):
    return sc.set_data_token(tokens, common.whole(a, "data token #", 1) - 1, common.whole(b, "new token", 0))


def _set_value(tokens, a, b):
    return common.MODEL.task.set_value(tokens, common.whole(a, "key", 0), common.whole(b, "value", 0))


def _repeat_key(tokens, a, b):
    return common.MODEL.task.repeat_key(tokens, common.whole(a, "key", 0), common.whole(b, "position", 0))


def _set_memory(tokens, a, b):
    return ind.set_memory_token(tokens, common.whole(b, "memory token", 0))


def _move_trigger(tokens, a, b):
    return ind.move_trigger(tokens, common.whole(b, "trigger position", 0))


EDITS = {ind.NAME: {"set the memory token M to b": _set_memory, "move the S M pair to position b": _move_trigger},
         sc.NAME: {"move data token #a to position b": _move_data, "set data token #a to b": _set_data},
         mq.NAME: {"set key a's value to b": _set_value, "ask for key a again at position b": _repeat_key}}


@user_errors
def apply_edit(tokens_text: str, kind: str, a: float, b: float) -> str:
    """One of the task's edits on the text box's sequence -> the new sequence's text."""
    task = common.MODEL.task
    edits = EDITS.get(task.name)
    if not edits:
        raise ValueError(f"the {task.name or 'plain LM'} model has no edits here; edit the sequence in the text box")
    fn = edits[common.choice(kind, "edit", list(edits))]
    return task.format(fn(common.tokens(tokens_text), a, b))
