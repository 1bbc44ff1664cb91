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
Another model or query: `readout_for` picks the step to read and its target (a task's query the
corruption changes; a plain LM's actual next token, or its top-1 at the last step), the caller cuts
both sequences after that step and passes target= (and task=, which the model's metadata may not name).

How: a patched row is the corrupted run up to its step t, so the corrupted sequence runs once,
with a snapshot of every layer's state at each patched step, and each position's cells (one batch
row per layer x group) continue that snapshot from t on (model.run's initial_states): the clean
h_t set in the initial state, or Δ_t / the output at t set by a per-row SetDelta / SetOutput.
The rows compute only the steps after their patch -- Σ_t (L - t) row-steps, about half of running
every row from step 0 (`python -m bench.patching`, L = 256, one thread, two runs at load 4.4 and
6.3: states 2.1-3.3x faster, Δ 1.7-2.0x, outputs 2.1x; the p grids agree to 5e-7). A few
consecutive positions share a run (MIN_ROWS), the later ones set by a per-row SetState at their step.
The clean values come from one recorded clean run (states, Δ, resid_post).
PATCH_MAX_LEN and MAX_POSITIONS bound it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from model import run, trace
from model.interventions import SetDelta, SetOutput, SetState
from tasks import IdTask, Task
from tasks.measures import layer_ratios
from tasks.measures import memory_channels as select_memory_channels

from .compare import task_or_next_token

KINDS = ("state", "delta", "output")
GROUPS = ("all", "memory", "rest")
N_MEMORY = 16                 # units in the "memory" group (16 = the induction task's content vocabulary)
PATCH_MAX_LEN = 1024          # tokens, at most: the batch is one corrupted copy per cell
MAX_POSITIONS = 128           # positions patched, at most: beyond, an even grid plus the write window
MIN_ROWS = 12                 # batch rows per model.run, at least: consecutive positions share a run (L=256:
                              # one run per position is mostly per-call overhead for "output", 2 rows each)


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


def _p_target(lm, tr, tokens: np.ndarray, target: int) -> np.ndarray:
    """[L] p(target) at every step: the trace's probs, or (a large vocabulary, whose trace keeps
    only the top-k) a softmax of each block of logits as model.run hands it over (never [L, V])."""
    if tr.probs is not None:
        return tr.probs[:, target].astype(np.float64)
    p, V = np.empty(len(tokens), np.float64), lm.config.vocab_size

    def head(logits, t0):                                        # logits [1, rows, V']
        lp = torch.log_softmax(logits[0, :, :V].float(), -1)[:, target]      # [rows]
        p[t0:t0 + lp.shape[0]] = lp.exp().double().cpu().numpy()
    run(lm, torch.from_numpy(tokens)[None].to(lm.device), head=head)
    return p


def compare_runs(lm, clean, corrupted, target: Optional[int] = None, task: Optional[Task] = None) -> Comparison:
    """p(target), top-1 and the per-layer Δ and state-norm differences of the two sequences.
    target: the token read (default: target_of the clean sequence); task: default task_or_next_token(lm)."""
    clean, corrupted = _check_pair(clean, corrupted)
    task = task or task_or_next_token(lm)
    target = target_of(task, clean) if target is None else int(target)
    a = trace(lm, clean, include=("delta", "state_norm"))
    b = trace(lm, corrupted, include=("delta", "state_norm"))
    pa, pb = _p_target(lm, a, clean, target), _p_target(lm, b, corrupted, target)
    return Comparison(
        target=target, p_clean=float(pa[-1]), p_corrupted=float(pb[-1]),
        top_clean=int(a.top_k_ids[-1, 0]), top_corrupted=int(b.top_k_ids[-1, 0]),
        p_target_clean=pa, p_target_corrupted=pb,
        delta_diff=np.stack([lb.delta - la.delta for la, lb in zip(a.layers, b.layers)]),
        norm_diff=np.stack([lb.state_norm - la.state_norm for la, lb in zip(a.layers, b.layers)]),
        differing=np.flatnonzero(clean != corrupted))


def channel_groups(lm, clean: np.ndarray, deltas: Sequence[np.ndarray], groups: Sequence[str] = GROUPS,
                   task: Optional[Task] = None) -> tuple:
    """(group names, [n_layer][n_groups] unit lists). "memory" needs a write and filler in the clean
    sequence (the Δ ratio); without them the groups are ("all",)."""
    U = [layer.mixer.n_units for layer in lm.backbone.layers]
    ratios = layer_ratios(list(deltas), (task or task_or_next_token(lm)).positions(clean), lm.config.d_conv)
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
                positions: Optional[Sequence[int]] = None, target: Optional[int] = None,
                task: Optional[Task] = None) -> Patching:
    """p(clean target) at the last position of the corrupted run with one clean activation restored,
    for every (layer, group, t) cell. See the module docstring for kinds and groups; target and task
    as compare_runs."""
    if kind not in KINDS:
        raise ValueError(f"unknown patch kind {kind!r}; choose one of {', '.join(KINDS)}")
    clean, corrupted = _check_pair(clean, corrupted)
    L = clean.size
    if L > PATCH_MAX_LEN:
        raise ValueError(f"patching is limited to {PATCH_MAX_LEN:,} tokens (one corrupted copy per cell), got {L:,}")
    task = task or task_or_next_token(lm)
    target = target_of(task, clean) if target is None else int(target)
    values, deltas = _clean_values(lm, clean, kind)
    names, channels = channel_groups(lm, clean, deltas, ("all",) if kind == "output" else groups, task)
    pos = np.asarray(positions_for(L, kind, task.positions(clean).first_write, lm.config.d_conv)
                     if positions is None else positions, dtype=np.int64)
    last = L - 2 if kind == "state" else L - 1
    if pos.size == 0 or pos.min() < 0 or pos.max() > last:
        raise ValueError(f"positions must be in 0..{last} for kind {kind!r}")
    n_layer, G = len(values), len(names)
    cells = [(li, g) for li in range(n_layer) for g in range(G) if kind == "output" or channels[li][g]]
    # a patched row is the corrupted run until its step: the rows continue the corrupted run's
    # snapshot from there instead of recomputing the prefix. Consecutive positions share a run
    # until it has MIN_ROWS rows (one run per position would be mostly per-call overhead).
    first = pos + 1 if kind == "state" else pos                      # [T] the first step that differs
    order = np.argsort(pos, kind="stable").tolist()                  # positions in time order
    per_run = max(1, -(-MIN_ROWS // max(1, len(cells))))              # positions per run
    runs = [order[i:i + per_run] for i in range(0, pos.size, per_run)]
    src = torch.from_numpy(corrupted).to(lm.device)
    starts = [int(first[ks].min()) for ks in runs]
    snaps = run(lm, src[None], num_last_tokens=1, snapshots=[s0 - 1 for s0 in starts if s0 > 0]).snapshots
    p = np.full((n_layer, G, pos.size), np.nan)
    for ks, s0 in zip(runs, starts):
        rows = [(k, li, g) for k in ks for li, g in cells]
        if not rows:
            continue
        R = len(rows)
        init = None if s0 == 0 else [st.repeat(R) for st in snaps[s0 - 1]]                   # [R, ...] each
        ivs = []
        for row, (k, li, g) in enumerate(rows):
            t, units = int(pos[k]), channels[li][g]
            if kind == "state" and t + 1 == s0:   # h_t enters step t + 1: the run's first, set in its state
                init[li].ssm[row, units] = values[li][t][units].to(init[li].ssm.dtype)
            elif kind == "state":
                ivs.append(SetState(li, tuple(units), t + 1 - s0, value=values[li][t][units][None], rows=(row,)))
            elif kind == "delta":
                ivs.append(SetDelta(li, tuple(units), t - s0, value=values[li][t][units][None], rows=(row,)))
            else:
                ivs.append(SetOutput(li, t - s0, value=values[li][t][None], rows=(row,)))
        with torch.no_grad():
            logits = run(lm, src[None, s0:].expand(R, L - s0), ivs, num_last_tokens=1,
                         initial_states=init).logits[:, -1]                                   # [R, V']
        probs = torch.softmax(logits[:, :lm.config.vocab_size].float(), -1)[:, target].cpu().numpy()
        for (k, li, g), pr in zip(rows, probs):
            p[li, g, k] = pr
    base, ref = _p_last(lm, corrupted, target), _p_last(lm, clean, target)
    for li in range(n_layer):                      # an empty group restores nothing: the corrupted value
        for g in range(G):
            if kind != "output" and not channels[li][g]:
                p[li, g] = base
    return Patching(kind, pos, names, channels, p, target, float(ref), float(base))


def _p_last(lm, tokens: np.ndarray, target: int) -> float:
    """p(target) at the last step (the trace's probs; a large vocabulary's from its last logits)."""
    tr = trace(lm, tokens, include=())
    if tr.probs is not None:
        return float(tr.probs[-1, target])
    with torch.no_grad():
        logits = run(lm, torch.from_numpy(tokens)[None].to(lm.device), num_last_tokens=1).logits[0, -1]
    return float(torch.softmax(logits[:lm.config.vocab_size].float(), -1)[target])


# ---------------------------------------------------------------- which step to read, for any model
@dataclass(frozen=True)
class Readout:
    """Where a clean / corrupted pair is scored: the prediction after `step` (the runs stop there:
    later steps cannot change it), p(target) of it; `how` says why, in words."""
    step: int
    target: int
    how: str


def readout_for(lm, clean, corrupted, step: Optional[int] = None, task: Optional[Task] = None) -> Readout:
    """The step to read and its target, for any model (ValueError when there is none):
    - a task with scored queries (induction heads, selective copying, MQAR): `step` must be one of
      the clean sequence's scored queries, its target that query's; by default the first scored
      query at or after the first differing step whose answer the corruption changes, else whose
      recalled write it moves, else the first one there;
    - a plain LM (tasks.IdTask: the next token at every step): the actual next token clean[step + 1]
      for step < L - 1; at the last step (the default) the clean run's top-1, since its next token
      is not in the text."""
    clean, corrupted = _check_pair(clean, corrupted)
    task = task or task_or_next_token(lm)
    L = clean.size
    differ = np.flatnonzero(clean != corrupted)
    if differ.size == 0:
        raise ValueError("the corrupted sequence equals the clean one: change it first (the corrupt buttons, "
                         "or type it)")
    d = int(differ[0])
    if step is not None and not 0 <= step < L:
        raise ValueError(f"query step {step} is out of range 0..{L - 1}")
    if step is not None and step < d:
        raise ValueError(f"the sequences agree up to t = {d - 1}: the prediction after step {step} is the same in "
                         f"both runs; choose a step from {d} on")
    if isinstance(task, IdTask):
        if step is None or step == L - 1:
            with torch.no_grad():
                logits = run(lm, torch.from_numpy(clean)[None].to(lm.device), num_last_tokens=1).logits[0, -1]
            top = int(logits[:lm.config.vocab_size].float().argmax())
            return Readout(L - 1, top, f"the clean run's top-1 at the last step t = {L - 1} (a plain LM: the "
                                       "token after the text is not known)")
        return Readout(int(step), int(clean[step + 1]), f"the actual next token at t = {step} (the clean "
                                                        f"sequence's token {step + 1})")
    scored = task.positions(clean).scored
    if not scored:
        target_of(task, clean)                                      # its error: nothing to score
    if step is not None:
        at = dict(scored)
        if step not in at:
            shown = ", ".join(str(q) for q, _ in scored[:8]) + (" …" if len(scored) > 8 else "")
            raise ValueError(f"step {step} is not a scored query of the clean sequence (queries with an answer: "
                             f"t = {shown})")
        return Readout(int(step), int(at[step]), f"the query at t = {step} (chosen)")
    after = [(q, t) for q, t in scored if q >= d]
    if not after:
        raise ValueError(f"the sequences first differ at t = {d}, after every scored query (the last at "
                         f"t = {scored[-1][0]}): the corruption changes no answer")
    cpos = task.positions(corrupted)
    c_target = dict(zip(cpos.queries, cpos.targets))
    c_source = dict(zip(cpos.queries, cpos.sources))
    source = dict(zip(task.positions(clean).queries, task.positions(clean).sources))
    for q, t in after:
        if c_target.get(q, -1) != t:
            return Readout(int(q), int(t), f"the query at t = {q}, the first whose answer the corruption changes")
    for q, t in after:
        if source and c_source.get(q, -1) != source.get(q):
            return Readout(int(q), int(t), f"the query at t = {q}, the first whose recalled write the corruption "
                                           "moves")
    q, t = after[0]
    return Readout(int(q), int(t), f"the query at t = {q}, the first scored one from the first difference (t = {d})")
