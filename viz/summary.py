"""One Markdown paragraph that says what the charts show: the task's positions and whether the
model's top-1 at the query is the target (tasks.score, through TraceView.score), and for a
Mamba-2 trace that the rows are heads. numpy only."""
from __future__ import annotations

from .frames import TraceView


def describe(view: TraceView, bins_width: int = 1) -> str:
    pos, lab = view.positions, view.task.labels
    _, write_role, marker_role = view.task.roles
    parts = [f"**L = {view.length:,}** tokens"]
    if view.unit == "head":             # Mamba-1's rows are channels, as they always were
        parts.append(f"Mamba-2: Δ and the state norms are per **head** ({view.n_units} heads per layer)")
    if bins_width > 1:
        parts.append(f"time binned by **{bins_width}** steps (max and mean per bin)")
    if not pos.queries:
        parts.append("the sequence asks for nothing at its end, so there is **no query** (nothing to recall)")
    elif not pos.scored:
        q = pos.queries[0]
        top, p = view.top1(q)
        parts.append(f"**no {marker_role} before the query**: nothing to recall (top-1 at the query: "
                     f"{lab[top]}, p = {p:.3f})")
    else:
        s = view.score
        q, m, top = s.queries[0], s.targets[0], s.top[0]
        cue = f"{marker_role} at t = {pos.markers[0]}, " if pos.markers else ""
        more = (f" ({len(pos.writes)} × {marker_role}; the target is the first {write_role})"
                if len(pos.writes) > 1 else "")
        parts.append(f"{cue}{write_role} = **{lab[m]}** at t = {pos.writes[0]}{more}; "
                     f"query at t = {q}: top-1 **{lab[top]}** (p = {view.top1(q)[1]:.3f}), "
                     f"p(target) = {s.p_target[0]:.3f} → " + ("**correct** ✓" if top == m else "**wrong** ✗"))
    return " · ".join(parts)
