"""One Markdown paragraph that says what the charts show: the task's positions and whether the
model recalled the memory token at the query. numpy only."""
from __future__ import annotations

from .frames import TraceView
from .sequences import token_labels


def describe(view: TraceView, bins_width: int = 1) -> str:
    pos = view.positions
    lab = token_labels
    parts = [f"**L = {view.length:,}** tokens"]
    if bins_width > 1:
        parts.append(f"time binned by **{bins_width}** steps (max and mean per bin)")
    if pos.query is None:
        parts.append("the last token is not the trigger S, so there is **no query** (nothing to recall)")
    elif not pos.triggers:
        top = int(view.probs[pos.query].argmax())
        parts.append(f"**no trigger before the query**: nothing to recall (top-1 at the query: "
                     f"{lab([top])[0]}, p = {view.probs[pos.query, top]:.3f})")
    else:
        m, q = pos.target, pos.query
        top = int(view.probs[q].argmax())
        ok = top == m
        more = f" ({len(pos.triggers)} triggers; the label is the first memory)" if len(pos.triggers) > 1 else ""
        parts.append(f"trigger S at t = {pos.triggers[0]}, memory **M = {m}** at t = {pos.memory_pos[0]}{more}; "
                     f"query at t = {q}: top-1 **{lab([top])[0]}** (p = {view.probs[q, top]:.3f}), "
                     f"p(M) = {view.probs[q, m]:.3f} → " + ("**correct** ✓" if ok else "**wrong** ✗"))
    return " · ".join(parts)
