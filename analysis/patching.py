"""Two inputs and activation patching: a clean and a corrupted sequence, how they differ inside the
model, and how much of the clean answer comes back when one activation of the clean run is
restored in the corrupted one.

    cmp = compare_runs(lm, clean, corrupted)       # p(target) both ways, Δ and state-norm differences
    pat = patch_sweep(lm, clean, corrupted, kind="state")
    pat.p            # [n_layer, n_groups, T] p(clean target) at the query after restoring (layer, t)
    pat.recovered    # the same, as (p - p_corrupted) / (p_clean - p_corrupted)

What is restored at (layer, t), the rest of the corrupted run left as it runs:
    "state"   h_t of that layer (the state just after step t; Mamba-1 [D, N]), for a channel group:
              the clean h_t enters step t + 1 (model.interventions.SetState)
    "delta"   Δ of that layer at step t, for a channel group (SetDelta)
    "output"  the layer's mixer output (after out_proj) at step t, all d_model dims (SetOutput)
Channel groups (units: channels for Mamba-1, heads for Mamba-2): "all"; "memory", the layer's
N_MEMORY units with the largest Δ ratio in the clean run (tasks.measures, the one selector); "rest".

The target is the clean sequence's answer at its last step (tasks' positions: the first scored
query's target), read at the last position in both runs. Both sequences must have the same length.

How: one model.run over a batch with one row per (t, layer, group) cell; each row is the corrupted
sequence with its one cell set (the Set* interventions take per-row values), so a sweep of T
positions costs one batched run cut at each t, not T x layers x groups runs. The clean values come
from one recorded clean run (states, Δ, resid_post). PATCH_MAX_LEN and MAX_POSITIONS bound it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from model import run, trace
from model.interventions import SetDelta, SetOutput, SetState
from tasks import Task
from tasks.measures import layer_ratios
from tasks.measures import memory_channels as select_memory_channels

from .compare import task_of

KINDS = ("state", "delta", "output")
GROUPS = ("all", "memory", "rest")
N_MEMORY = 16                 # units in the "memory" group (16 = the induction task's content vocabulary)
PATCH_MAX_LEN = 1024          # tokens, at most: the batch is one corrupted copy per cell
MAX_POSITIONS = 128           # positions patched, at most: beyond, an even grid plus the write window
MAX_ROWS = 96                 # batch rows per model.run: a slice of 16 positions x 2 layers x 3 groups; its run
                              # is cut at each of its positions (state edits), so smaller slices mean
                              # fewer one-step chunks per row (measured L=256: 15 s at 96 vs 18 s at 384, 40 s at 24)


@dataclass
class Comparison:
    """Clean vs corrupted, run once each (numpy)."""
    target: int                    # the clean answer (the token expected after the last step)
    p_clean: float                 # p(target) at the last position, clean run
    p_corrupted: float             # ... corrupted run
    top_clean: int
    top_corrupted: int
    p_target_clean: np.ndarray     # [L] p(target) at every step, clean
    p_target_corrupted: np.ndarray  # [L]
    delta_diff: np.ndarray         # [n_layer, L, U] Δ corrupted - clean
    norm_diff: np.ndarray          # [n_layer, L, U] ‖h‖ corrupted - clean
    differing: np.ndarray          # [k] the steps where the two sequences differ


@dataclass
class Patching:
    kind: str
    positions: np.ndarray          # [T] the steps t patched
    groups: tuple                  # group names, in p's second axis
    channels: list                 # [n_layer][n_groups] the units of each group
    p: np.ndarray                  # [n_layer, n_groups, T] p(target) at the last position, patched
    target: int
    p_clean: float
    p_corrupted: float

    @property
    def recovered(self) -> np.ndarray:
        """(p - p_corrupted) / (p_clean - p_corrupted): 0 = nothing restored, 1 = all of it; NaN when
        the two runs agree on p(target) (nothing to recover)."""
        gap = self.p_clean - self.p_corrupted
        return (self.p - self.p_corrupted) / gap if abs(gap) > 1e-6 else np.full_like(self.p, np.nan)


def _tokens(x, name: str) -> np.ndarray:
    t = np.asarray(x, dtype=np.int64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"{name}: one non-empty sequence of token ids, got shape {t.shape}")
    return t


def target_of(task: Task, clean: np.ndarray) -> int:
    """The clean sequence's answer at its last step (its first scored query's target)."""
    scored = task.positions(clean).scored
    if not scored:
        raise ValueError("the clean sequence asks for nothing it holds the answer to (no scored query): "
                         "patching needs a target")
    return int(scored[0][1])


def _check_pair(clean, corrupted) -> tuple:
    clean, corrupted = _tokens(clean, "clean"), _tokens(corrupted, "corrupted")
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean and corrupted must be equally long, got {clean.size} and {corrupted.size} tokens")
    return clean, corrupted


def compare_runs(lm, clean, corrupted) -> Comparison:
    """p(target), top-1 and the per-layer Δ and state-norm differences of the two sequences."""
    clean, corrupted = _check_pair(clean, corrupted)
    task = task_of(lm)
    target = target_of(task, clean)
    a = trace(lm, clean, include=("delta", "state_norm"))
    b = trace(lm, corrupted, include=("delta", "state_norm"))
    return Comparison(
        target=target, p_clean=float(a.probs[-1, target]), p_corrupted=float(b.probs[-1, target]),
        top_clean=int(a.probs[-1].argmax()), top_corrupted=int(b.probs[-1].argmax()),
        p_target_clean=a.probs[:, target].astype(np.float64), p_target_corrupted=b.probs[:, target].astype(np.float64),
        delta_diff=np.stack([lb.delta - la.delta for la, lb in zip(a.layers, b.layers)]),
        norm_diff=np.stack([lb.state_norm - la.state_norm for la, lb in zip(a.layers, b.layers)]),
        differing=np.flatnonzero(clean != corrupted))


def channel_groups(lm, clean: np.ndarray, deltas: Sequence[np.ndarray], groups: Sequence[str] = GROUPS) -> tuple:
    """(group names, [n_layer][n_groups] unit lists). "memory" needs a write and filler in the clean
    sequence (the Δ ratio); without them the groups are ("all",)."""
    U = [layer.mixer.n_units for layer in lm.backbone.layers]
    ratios = layer_ratios(list(deltas), task_of(lm).positions(clean), lm.config.d_conv)
    if ratios is None:
        groups = ("all",)
    out = []
    for i, u in enumerate(U):
        mem = sorted(select_memory_channels(ratios[i].ratio, k=min(N_MEMORY, u))) if ratios is not None else []
        by_name = {"all": list(range(u)), "memory": mem, "rest": sorted(set(range(u)) - set(mem))}
        out.append([by_name[g] for g in groups])
    return tuple(groups), out


def positions_for(L: int, kind: str, first_write: Optional[int], d_conv: int, max_positions: int = MAX_POSITIONS):
    """The steps t to patch: every one that can change the last prediction (a state after the last
    step cannot), or, beyond max_positions, an even grid plus the write window [w, w + d_conv)."""
    last = L - 2 if kind == "state" else L - 1
    if last < 0:
        raise ValueError(f"a sequence of {L} token(s) has no step to patch")
    if last + 1 <= max_positions:
        return np.arange(last + 1)
    special = [] if first_write is None else [t for t in range(first_write - 1, first_write + d_conv) if 0 <= t <= last]
    grid = np.linspace(0, last, max_positions - len(special)).round().astype(np.int64)
    return np.unique(np.concatenate([grid, np.asarray(special, dtype=np.int64)]))


def _clean_values(lm, clean: np.ndarray, kind: str):
    """The clean run's records that a patch restores: per layer [L, U, *state] / [L, U] / [L, d_model],
    and the clean Δ per layer [L, U] (for the channel groups)."""
    with torch.no_grad():
        res = run(lm, torch.from_numpy(clean)[None].to(lm.device), include=("delta", "resid_post"),
                  states=kind == "state")
    deltas = [r["delta"][0].float().cpu().numpy() for r in res.records]
    if kind == "state":
        values = [r["states"][0].float().cpu() for r in res.records]              # h_t after step t
    elif kind == "delta":
        values = [r["delta"][0].float().cpu() for r in res.records]
    else:   # the mixer output is what the block adds: resid_post[i] - resid_post[i - 1] (embedding before layer 0)
        emb = lm.backbone.embedding(torch.from_numpy(clean).to(lm.device)).float().cpu()
        posts = [emb] + [r["resid_post"][0].float().cpu() for r in res.records]
        values = [posts[i + 1] - posts[i] for i in range(len(res.records))]
    return values, deltas


def patch_sweep(lm, clean, corrupted, kind: str = "state", groups: Sequence[str] = GROUPS,
                positions: Optional[Sequence[int]] = None, max_rows: int = MAX_ROWS) -> Patching:
    """p(clean target) at the last position of the corrupted run with one clean activation restored,
    for every (layer, group, t) cell. See the module docstring for kinds and groups."""
    if kind not in KINDS:
        raise ValueError(f"unknown patch kind {kind!r}; choose one of {', '.join(KINDS)}")
    clean, corrupted = _check_pair(clean, corrupted)
    L = clean.size
    if L > PATCH_MAX_LEN:
        raise ValueError(f"patching is limited to {PATCH_MAX_LEN:,} tokens (one corrupted copy per cell), got {L:,}")
    task = task_of(lm)
    target = target_of(task, clean)
    values, deltas = _clean_values(lm, clean, kind)
    names, channels = channel_groups(lm, clean, deltas, ("all",) if kind == "output" else groups)
    pos = np.asarray(positions_for(L, kind, task.positions(clean).first_write, lm.config.d_conv)
                     if positions is None else positions, dtype=np.int64)
    last = L - 2 if kind == "state" else L - 1
    if pos.size == 0 or pos.min() < 0 or pos.max() > last:
        raise ValueError(f"positions must be in 0..{last} for kind {kind!r}")
    n_layer, G = len(values), len(names)
    cells = [(li, g, k) for k in range(pos.size) for li in range(n_layer) for g in range(G)]
    p = np.full((n_layer, G, pos.size), np.nan)
    src = torch.from_numpy(corrupted).to(lm.device)
    for start in range(0, len(cells), max_rows):
        part = cells[start:start + max_rows]
        ivs = [_set(kind, li, channels[li][g], int(pos[k]), values[li], row) for row, (li, g, k) in enumerate(part)
               if kind == "output" or channels[li][g]]
        with torch.no_grad():
            logits = run(lm, src[None].expand(len(part), L), ivs, num_last_tokens=1).logits[:, -1]   # [R, V']
        probs = torch.softmax(logits[:, :lm.config.vocab_size].float(), -1)[:, target].cpu().numpy()
        for (li, g, k), pr in zip(part, probs):
            p[li, g, k] = pr
    base = trace(lm, corrupted, include=()).probs[-1, target]
    ref = trace(lm, clean, include=()).probs[-1, target]
    for li in range(n_layer):                      # an empty group restores nothing: the corrupted value
        for g in range(G):
            if kind != "output" and not channels[li][g]:
                p[li, g] = base
    return Patching(kind, pos, names, channels, p, target, float(ref), float(base))


def _set(kind: str, layer: int, units: list, t: int, values, row: int):
    """One row's Set* intervention: the clean value at (layer, t) for those units."""
    if kind == "state":      # h_t (after step t) is the state entering step t + 1
        return SetState(layer, tuple(units), t + 1, value=values[t][units][None], rows=(row,))
    if kind == "delta":
        return SetDelta(layer, tuple(units), t, value=values[t][units][None], rows=(row,))
    return SetOutput(layer, t, value=values[t][None], rows=(row,))
