"""Many memories in one state: where each write lives, how long it lasts, and what losing it costs.

Selective copying writes K data tokens, MQAR D values, induction heads one token. Given Δ, the
scan is linear in its inputs, so the state is a sum of one term per step:

    h_t = sum_{s <= t} exp(A * (S_t - S_s)) * delta_s * B_s * x_s,     S_t = sum_{r <= t} delta_r

and a write's part of the state at any later t is exactly the sum of its steps' terms: no probe,
no fit. A write's steps are its write window [w, w + d_conv) (the conv carries token w into x
there), cut at the next write or recall (write_windows). From it:
  retained [K, T]   the norm of write k's term in the layer's state at each time (0 before it):
                    when each memory is written and how it decays
  holders  [K, U]   per unit (Mamba-1 channel, Mamba-2 head), that norm at the step that recalls
                    write k (the last step when nothing recalls it): which units hold which memory
  reads    [K, U]   |C_q . term| at that recall step q: what the unit's output there takes from it
  share    [K, U]   holders / the unit's whole state norm at that step: near 1, the unit holds that
                    memory alone; small, other memories and filler dominate it (above 1 when the
                    other terms partly cancel it)
The causal side (clamp_matrix): Δ clamped to 0 at one write (no input enters there) and every
query scored: a memory that lives where the map says is lost alone, the others kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model import run
from model.interventions import ClampDelta
from tasks import Task
from tasks import induction as ind
from tasks import selective_copy as sc

MAX_TIMES = 256          # time points of `retained` (plus every write and query step)


@dataclass
class MemoryMap:
    writes: np.ndarray      # [K] write steps
    windows: list           # [(w, end)] * K: the steps whose input carries each write (write_windows)
    recall: np.ndarray      # [K] the step that recalls each write (its first query; the last step if none)
    times: np.ndarray       # [T] the steps of `retained`
    unit: str               # "channel" (Mamba-1) or "head" (Mamba-2)
    retained: list          # per layer [K, T]
    holders: list           # per layer [K, U]
    reads: list             # per layer [K, U]
    share: list             # per layer [K, U]

    def kept_at_recall(self, layer: int) -> np.ndarray:
        """[K] each write's term norm at its recall over its largest norm in its write window."""
        r = self.retained[layer]
        peak = np.array([r[k, (self.times >= w) & (self.times < e)].max() for k, (w, e) in enumerate(self.windows)])
        at_q = r[np.arange(len(self.writes)), np.searchsorted(self.times, self.recall)]
        return np.divide(at_q, peak, out=np.zeros_like(at_q), where=peak > 0)

    def top_holders(self, layer: int, k: int, n: int = 5) -> list:
        """The n units holding the most of write k at its recall, largest first."""
        return [int(u) for u in np.argsort(-self.holders[layer][k], kind="stable")[:n]]


def _times(L: int, windows, recall, max_times: int) -> np.ndarray:
    base = np.unique(np.linspace(0, L - 1, min(L, max_times)).round().astype(np.int64))
    steps = [np.arange(w, e) for w, e in windows]
    return np.unique(np.concatenate([base, *steps, np.asarray(recall, np.int64)]))


def _recall_steps(pos, L: int) -> np.ndarray:
    first = {}
    for q, s in zip(pos.queries, pos.sources or (None,) * len(pos.queries)):
        if s is not None and s not in first:
            first[s] = q
    return np.array([first.get(w, L - 1) for w in pos.writes], dtype=np.int64)


def write_windows(writes, recall, d_conv: int, L: int) -> list:
    """[(w, end)] per write: the steps whose input carries the written token into the state. The
    depthwise conv feeds token w to x at steps w .. w + d_conv - 1, so a write is spread over
    them; the window stops early at the next write or at the recall (those steps belong to them)."""
    later = sorted(set(int(w) for w in writes) | set(int(q) for q in recall))
    out = []
    for w in writes:
        nxt = min([v for v in later if v > w] + [L])
        out.append((int(w), int(min(w + d_conv, nxt))))
    return out


def _layer_terms(mixer, rec: dict, windows, recall, times):
    """One layer's (retained [K, T], holders [K, U], reads [K, U]) from its records (batch row 0):
    the term of each write window, sum_{s in window, s <= t} exp(A (S_t - S_s)) delta_s B_s x_s."""
    delta = rec["delta"][0].double().cpu().numpy()                      # [L, U]
    x = rec["ssm_input"][0].double().cpu().numpy()                      # [L, D]
    Bm = rec["B"][0].double().cpu().numpy()                             # [L, N] or [L, G, N]
    Cm = rec["C"][0].double().cpu().numpy()
    A = mixer.A.detach().double().cpu().numpy()                         # [D, N] or [H]
    S = np.cumsum(delta, axis=0)                                        # [L, U]
    K, T, U = len(windows), len(times), delta.shape[1]
    retained, holders, reads = np.zeros((K, T)), np.zeros((K, U)), np.zeros((K, U))
    head = A.ndim == 1
    if head:                                                            # Mamba-2: one decay per head
        H, G = U, Bm.shape[1]
        x = x.reshape(x.shape[0], H, -1)                                # [L, H, P]
        g = np.arange(H) // (H // G)                                    # head -> its B/C group
        Bm, Cm = Bm[:, g], Cm[:, g]                                     # [L, H, N]
    for k, ((w, end), q) in enumerate(zip(windows, recall)):
        ts = np.append(times[times >= w], q)                            # the time points, then the recall
        term = 0.0
        for s in range(w, end):
            on = (ts >= s)[:, None]                                     # [T', 1] the step's input is in
            if head:                                                    # [T', H, P, N]
                decay = np.exp(A[None] * (S[ts] - S[s])) * on           # [T', H]
                term = term + decay[:, :, None, None] * (delta[s][:, None] * x[s])[None, :, :, None] \
                    * Bm[s][None, :, None, :]
            else:                                                       # [T', D, N]
                decay = np.exp(A[None] * (S[ts] - S[s])[:, :, None]) * on[:, :, None]
                term = term + decay * (delta[s] * x[s])[None, :, None] * Bm[s][None, None, :]
        flat = term.reshape(len(ts), U, -1)                             # [T', U, F]
        per_unit = np.linalg.norm(flat, axis=-1)                        # [T', U]
        retained[k, times >= w] = np.linalg.norm(per_unit[:-1], axis=-1)
        holders[k] = per_unit[-1]
        at_q = term[-1]                                                 # [U, F] or [H, P, N]
        reads[k] = np.abs(at_q @ Cm[q]) if not head else np.linalg.norm(at_q @ Cm[q][:, :, None], axis=(1, 2))
    return retained, holders, reads


@torch.no_grad()
def memory_map(lm, task: Task, tokens, max_times: int = MAX_TIMES) -> MemoryMap:
    """The memory map of one sequence (tokens [L]) under `task`'s positions (its writes, queries
    and the write each query recalls)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    pos = task.positions(tokens)
    if not pos.writes:
        raise ValueError(f"this {task.name} sequence writes nothing to remember (no write steps)")
    L = tokens.shape[0]
    writes = np.asarray(pos.writes, dtype=np.int64)
    recall = _recall_steps(pos, L)
    wins = write_windows(writes, recall, lm.config.d_conv, L)
    times = _times(L, wins, recall, max_times)
    res = run(lm, torch.from_numpy(tokens)[None], include=("delta", "ssm_input", "B", "C", "state_norm"),
              num_last_tokens=1)
    out = {"retained": [], "holders": [], "reads": [], "share": []}
    for mixer_block, rec in zip(lm.backbone.layers, res.records):
        r, h, rd = _layer_terms(mixer_block.mixer, rec, wins, recall, times)
        norm = rec["state_norm"][0].double().cpu().numpy()[recall]      # [K, U]
        out["retained"].append(r)
        out["holders"].append(h)
        out["reads"].append(rd)
        out["share"].append(np.divide(h, norm, out=np.zeros_like(h), where=norm > 0))
    return MemoryMap(writes=writes, windows=wins, recall=recall, times=times, unit=lm.backbone.layers[0].mixer.unit, **out)


# ---------------------------------------------------------------- causal: one write clamped
@dataclass
class ClampMatrix:
    layers: tuple           # the layers whose Δ was clamped
    window: int             # steps clamped from each write on
    writes: np.ndarray      # [K] write steps (shared by every row of the batch)
    acc: np.ndarray         # [K + 1, K]: row 0 no clamp, row 1 + i write i clamped; column j: accuracy
                            # of the queries recalling write j
    n_seqs: int

    @property
    def baseline(self) -> float:
        return float(self.acc[0].mean())

    @property
    def diagonal(self) -> float:
        """Mean accuracy of the clamped write's own queries."""
        return float(np.diag(self.acc[1:]).mean())

    @property
    def off_diagonal(self) -> float:
        """Mean accuracy of every other write's queries while one write is clamped."""
        m = self.acc[1:]
        return float(m[~np.eye(len(m), dtype=bool)].mean()) if len(m) > 1 else float("nan")


def shared_layout_batch(task: Task, n: int, length: int, seed: int = 0, **options) -> np.ndarray:
    """n sequences of the task whose write steps are the same in every row (clamps are per step,
    so one clamp hits the same memory in every row): MQAR's writes are fixed already; selective
    copying gets row 0's data positions with fresh data tokens in every row; induction heads its
    trigger at L/4 unless options place it. tokens [n, L]."""
    if task.name == ind.NAME:
        options = {"trigger_pos": length // 4, **options}
    b = task.batch(n, length, seed=seed, **options)
    tokens = np.array(b.tokens, copy=True)
    if task.name == sc.NAME:
        pos = b.data_pos[0]                                             # [K] one layout
        tokens[:, :length] = sc.NOISE
        tokens[:, pos] = b.data
    return tokens


@torch.no_grad()
def clamp_matrix(lm, task: Task, tokens: np.ndarray, layers, window: int = 1) -> ClampMatrix:
    """Accuracy of every memory's queries with Δ clamped to 0 in `layers` (all units) over
    [w_i, w_i + window) for each write w_i in turn. tokens [B, L] with shared write steps."""
    tokens = np.asarray(tokens, dtype=np.int64)
    rows = [task.positions(t) for t in tokens]
    writes = np.asarray(rows[0].writes, dtype=np.int64)
    if not len(writes) or any(tuple(p.writes) != tuple(writes) for p in rows):
        raise ValueError("clamp_matrix needs the same write steps in every row (shared_layout_batch)")
    first_q = min(min(p.queries) for p in rows if p.queries)
    L = tokens.shape[1]
    t = torch.from_numpy(tokens)
    units = list(range(lm.backbone.layers[0].mixer.n_units))

    def acc(ivs) -> np.ndarray:
        logits = run(lm, t, ivs, num_last_tokens=L - first_q).logits
        pred = logits.argmax(-1).cpu().numpy()                          # [B, L - first_q]
        right, count = np.zeros(len(writes)), np.zeros(len(writes))
        for b, p in enumerate(rows):
            for q, target, src in zip(p.queries, p.targets, p.sources):
                if target is None or src is None:
                    continue
                j = int(np.flatnonzero(writes == src)[0])
                right[j] += pred[b, q - first_q] == target
                count[j] += 1
        return np.divide(right, count, out=np.full(len(writes), np.nan), where=count > 0)

    layers = tuple(int(i) for i in layers)
    acc_rows = [acc(())]
    for w in writes:
        acc_rows.append(acc([ClampDelta(layer=i, channels=units, from_t=int(w), to_t=int(w) + window)
                             for i in layers]))
    return ClampMatrix(layers=layers, window=window, writes=writes, acc=np.stack(acc_rows), n_seqs=len(tokens))
