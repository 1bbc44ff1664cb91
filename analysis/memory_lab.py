"""Many memories in one state: where each write lives, how long it lasts, and what losing it costs.

Selective copying writes K data tokens, MQAR D values, induction heads one token. Given Δ, the
scan is linear in its inputs, so the state is a sum of one term per step:

    h_t = sum_{s <= t} exp(A * (S_t - S_s)) * delta_s * B_s * x_s,     S_t = sum_{r <= t} delta_r

and write s's part of the state at any later t is exactly its term: no probe, no fit. From it:
  retained [K, T]   the norm of write k's term in the layer's state at each time (0 before it):
                    when each memory is written and how it decays
  holders  [K, U]   per unit (Mamba-1 channel, Mamba-2 head), that norm at the step that recalls
                    write k (the last step when nothing recalls it): which units hold which memory
  reads    [K, U]   |C_q . term| at that recall step q: what the unit's output there takes from it
  share    [K, U]   holders / the unit's whole state norm at that step: the rest is other memories
                    and filler (interference)
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
from tasks import selective_copy as sc

MAX_TIMES = 256          # time points of `retained` (plus every write and query step)


@dataclass
class MemoryMap:
    writes: np.ndarray      # [K] write steps
    recall: np.ndarray      # [K] the step that recalls each write (its first query; the last step if none)
    times: np.ndarray       # [T] the steps of `retained`
    unit: str               # "channel" (Mamba-1) or "head" (Mamba-2)
    retained: list          # per layer [K, T]
    holders: list           # per layer [K, U]
    reads: list             # per layer [K, U]
    share: list             # per layer [K, U]

    def top_holders(self, layer: int, k: int, n: int = 5) -> list:
        """The n units holding the most of write k at its recall, largest first."""
        return [int(u) for u in np.argsort(-self.holders[layer][k], kind="stable")[:n]]


def _times(L: int, writes, recall, max_times: int) -> np.ndarray:
    base = np.unique(np.linspace(0, L - 1, min(L, max_times)).round().astype(np.int64))
    return np.unique(np.concatenate([base, np.asarray(writes, np.int64), np.asarray(recall, np.int64)]))


def _recall_steps(pos, L: int) -> np.ndarray:
    first = {}
    for q, s in zip(pos.queries, pos.sources or (None,) * len(pos.queries)):
        if s is not None and s not in first:
            first[s] = q
    return np.array([first.get(w, L - 1) for w in pos.writes], dtype=np.int64)


def _layer_terms(mixer, rec: dict, writes, recall, times):
    """One layer's (retained [K, T], holders [K, U], reads [K, U]) from its records (batch row 0)."""
    delta = rec["delta"][0].double().cpu().numpy()                      # [L, U]
    x = rec["ssm_input"][0].double().cpu().numpy()                      # [L, D]
    Bm = rec["B"][0].double().cpu().numpy()                             # [L, N] or [L, G, N]
    Cm = rec["C"][0].double().cpu().numpy()
    A = mixer.A.detach().double().cpu().numpy()                         # [D, N] or [H]
    S = np.cumsum(delta, axis=0)                                        # [L, U]
    K, T, U = len(writes), len(times), delta.shape[1]
    retained, holders, reads = np.zeros((K, T)), np.zeros((K, U)), np.zeros((K, U))
    head = A.ndim == 1
    if head:                                                            # Mamba-2: one decay per head
        H, G = U, Bm.shape[1]
        x = x.reshape(x.shape[0], H, -1)                                # [L, H, P]
        g = np.arange(H) // (H // G)                                    # head -> its B/C group
    for k, (w, q) in enumerate(zip(writes, recall)):
        after = times >= w
        if head:
            size = delta[w] * np.linalg.norm(x[w], axis=-1) * np.linalg.norm(Bm[w][g], axis=-1)   # [H]
            decay = np.exp(A[None] * (S[times[after]] - S[w]))          # [T', H]
            retained[k, after] = np.linalg.norm(decay * size, axis=-1)
            dq = np.exp(A * (S[q] - S[w]))                              # [H]
            holders[k] = dq * size
            cb = np.einsum("hn,hn->h", Cm[q][g], Bm[w][g])              # C_q . B_w per head
            reads[k] = np.abs(cb) * dq * delta[w] * np.linalg.norm(x[w], axis=-1)
        else:                                                           # Mamba-1: decay per (d, n)
            amp = np.abs(delta[w] * x[w])                               # [D]
            ts = times[after]
            e = np.exp(A[None] * (S[ts] - S[w])[:, :, None])            # [T', D, N]
            per_d = amp * np.sqrt(np.einsum("tdn,n->td", e ** 2, Bm[w] ** 2))   # [T', D]
            retained[k, after] = np.linalg.norm(per_d, axis=-1)
            eq = np.exp(A * (S[q] - S[w])[:, None])                     # [D, N]
            holders[k] = amp * np.sqrt((eq ** 2) @ (Bm[w] ** 2))
            reads[k] = np.abs((eq * (Bm[w] * Cm[q])[None]).sum(-1) * delta[w] * x[w])
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
    times = _times(L, writes, recall, max_times)
    res = run(lm, torch.from_numpy(tokens)[None], include=("delta", "ssm_input", "B", "C", "state_norm"),
              num_last_tokens=1)
    out = {"retained": [], "holders": [], "reads": [], "share": []}
    for mixer_block, rec in zip(lm.backbone.layers, res.records):
        r, h, rd = _layer_terms(mixer_block.mixer, rec, writes, recall, times)
        norm = rec["state_norm"][0].double().cpu().numpy()[recall]      # [K, U]
        out["retained"].append(r)
        out["holders"].append(h)
        out["reads"].append(rd)
        out["share"].append(np.divide(h, norm, out=np.zeros_like(h), where=norm > 0))
    return MemoryMap(writes=writes, recall=recall, times=times, unit=lm.backbone.layers[0].mixer.unit, **out)


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
    copying gets row 0's data positions with fresh data tokens in every row. tokens [n, L]."""
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
