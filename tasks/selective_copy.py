"""Selective copying (Mamba paper §4.1.1, Table 1; Arjovsky et al. 2016, Jing et al. 2019). numpy only.

Vocabulary 18: data ids 0..15, noise 16 (shown `_`), marker 17 (shown `?`). A context of n_ctx
positions holds K = 16 data tokens (uniform, repeats allowed) at K distinct uniformly random
positions, noise elsewhere; then K markers. At the j-th marker the next token must be the j-th data
token in context order (so the model copies the data, skipping the noise):

    _ 3 _ _ 9 _ 3 _ ... _  ? ? ? ...      -> at the markers: 3 9 3 ...

Sequence length L = n_ctx + K. The paper's setting: n_ctx = 4096 (2-layer Mamba 99.8%, S4 18.3%).
Scoring: every marker is a query (tasks.score); accuracy = the share of markers answered right.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .base import MAX_LEN, Positions, Task, TokenError

DATA_VOCAB = 16
NOISE = 16
MARKER = 17
VOCAB = 18
K_DEFAULT = 16
NAME = "selective_copying"


@dataclass
class CopyBatch:
    tokens: np.ndarray        # [B, L] int64, L = n_ctx + K
    data_pos: np.ndarray      # [B, K] ascending positions of the data tokens in the context
    data: np.ndarray          # [B, K] the data tokens, in context order
    queries: np.ndarray       # [B, K] the marker steps n_ctx .. n_ctx + K - 1
    answers: np.ndarray       # [B, K] the expected token at each marker (= data)


def copy_batch(batch: int, n_ctx: int, *, k: int = K_DEFAULT, seed: int = 0,
               rng: Optional[np.random.Generator] = None, lead: int = 0, lead_max: int = 0) -> CopyBatch:
    """Draw `batch` sequences: K data tokens at K distinct uniform positions of n_ctx, then K markers.
    `lead` > 0 keeps the first `lead` positions noise (data in [lead, n_ctx)): the same seed and
    n_ctx - lead give the same data at the same distances from the markers after any lead, so a
    model's dependence on time before the data can be measured alone.
    `lead_max` > 0 draws a lead per row, uniform in 0..lead_max (a training mixture: the time before
    the data varies while the noise count at the markers stays n_ctx - K)."""
    for name, v in (("lead", lead), ("lead_max", lead_max)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {v!r}")
    if lead and lead_max:
        raise ValueError(f"give lead ({lead}) or lead_max ({lead_max}), not both")
    most = max(lead, lead_max)
    if k < 1 or n_ctx - most < k:
        raise ValueError(f"{k} data tokens do not fit in a context of {n_ctx}"
                         + (f" after a lead of {most}" if most else ""))
    g = rng if rng is not None else np.random.default_rng(seed)
    if lead_max:
        leads = g.integers(0, lead_max + 1, batch)                       # [B]
        keys = g.random((batch, n_ctx))                                   # [B, n_ctx]
        keys[np.arange(n_ctx)[None, :] < leads[:, None]] = 2.0           # never among the k smallest
    else:
        keys = g.random((batch, n_ctx - lead))
    # K distinct positions per row: the k smallest random keys, sorted
    pos = lead + np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1)
    data = g.integers(0, DATA_VOCAB, (batch, k))
    tokens = np.full((batch, n_ctx + k), NOISE, dtype=np.int64)
    tokens[np.arange(batch)[:, None], pos] = data
    tokens[:, n_ctx:] = MARKER
    q = np.broadcast_to(np.arange(n_ctx, n_ctx + k), (batch, k)).copy()
    return CopyBatch(tokens=tokens, data_pos=pos.astype(np.int64), data=data.astype(np.int64), queries=q,
                     answers=data.astype(np.int64))


def positions(tokens: np.ndarray) -> Positions:
    """writes: the data steps before the first marker; queries: every marker at or after the first,
    its target the data token of the same rank (None past the number of data tokens)."""
    tokens = np.asarray(tokens)
    marks = np.flatnonzero(tokens == MARKER)
    ctx_end = int(marks[0]) if marks.size else tokens.shape[0]
    writes = tuple(int(p) for p in np.flatnonzero(tokens[:ctx_end] < DATA_VOCAB))
    data = [int(tokens[p]) for p in writes]
    targets = tuple(data[j] if j < len(data) else None for j in range(marks.size))
    return Positions(writes=writes, queries=tuple(int(m) for m in marks), targets=targets,
                     sources=tuple(writes[j] if j < len(writes) else None for j in range(marks.size)))


# ---------------------------------------------------------------- edits
def move_data_token(tokens: np.ndarray, index: int, new_pos: int) -> np.ndarray:
    """Move the `index`-th data token (0 = the first) to context position `new_pos` (a noise step):
    the copy's order may change, which is the point."""
    tokens = np.array(tokens, dtype=np.int64, copy=True)
    pos = positions(tokens)
    if not 0 <= index < len(pos.writes):
        raise TokenError(f"data token {index} does not exist (the context holds {len(pos.writes)}: 0..{len(pos.writes) - 1})")
    ctx = pos.queries[0] if pos.queries else tokens.shape[0]
    if not 0 <= new_pos < ctx:
        raise TokenError(f"position {new_pos} is outside the context 0..{ctx - 1}")
    if tokens[new_pos] != NOISE:
        raise TokenError(f"position {new_pos} holds data token {tokens[new_pos]}, not noise: choose a noise step")
    p = pos.writes[index]
    tokens[new_pos], tokens[p] = tokens[p], NOISE
    return tokens


def set_data_token(tokens: np.ndarray, index: int, value: int) -> np.ndarray:
    """Replace the `index`-th data token by `value` (a counterfactual: same layout, other data)."""
    if not 0 <= value < DATA_VOCAB:
        raise TokenError(f"data token value {value} is out of range 0..{DATA_VOCAB - 1}")
    tokens = np.array(tokens, dtype=np.int64, copy=True)
    pos = positions(tokens)
    if not 0 <= index < len(pos.writes):
        raise TokenError(f"data token {index} does not exist (the context holds {len(pos.writes)})")
    tokens[pos.writes[index]] = value
    return tokens


@dataclass(frozen=True)
class Generator:
    n_ctx: int = 256
    k: int = K_DEFAULT
    seed: int = 0


PRESETS = {
    "Short context (n_ctx=256)": Generator(n_ctx=256, seed=0),
    "Paper setting (n_ctx=4096)": Generator(n_ctx=4096, seed=1),
    "Long: n_ctx=16384": Generator(n_ctx=16384, seed=2),
}
PRESET_NOTES = {
    "Short context (n_ctx=256)": "16 data tokens among 240 noise steps, then 16 markers.",
    "Paper setting (n_ctx=4096)": "Mamba paper Table 1: 2-layer Mamba copies 99.8% of tokens here.",
    "Long: n_ctx=16384": "4x the paper's context: does the copy extrapolate?",
}


def realize(g: Generator) -> np.ndarray:
    if not 1 <= g.k <= DATA_VOCAB * 64 or not g.k <= g.n_ctx or g.n_ctx + g.k > MAX_LEN:
        raise TokenError(f"context {g.n_ctx} with {g.k} data tokens: need 1 <= k <= n_ctx and n_ctx + k <= {MAX_LEN}")
    if not 0 <= g.seed < 2 ** 63:
        raise TokenError(f"seed {g.seed} is out of range 0..2^63-1")
    return copy_batch(1, g.n_ctx, k=g.k, seed=g.seed).tokens[0]


class SelectiveCopying(Task):
    name = NAME
    vocab_size = VOCAB
    labels = tuple(str(i) for i in range(DATA_VOCAB)) + ("_", "?")
    roles = ("noise", "data token", "marker")
    aliases = {"_": NOISE, "?": MARKER}
    hint = " (_ = noise, id 16; ? = a marker, id 17), or use Generate / a preset"
    presets = PRESETS
    preset_notes = PRESET_NOTES
    Generator = Generator

    def positions(self, tokens) -> Positions:
        return positions(tokens)

    def batch(self, n: int, length: int, seed: int = 0, **options) -> CopyBatch:
        """`length` is n_ctx (the sequence has n_ctx + k tokens)."""
        return copy_batch(n, length, seed=seed, **options)

    def realize(self, g: Generator) -> np.ndarray:
        return realize(g)

    def metadata(self, train_len: int = 256, **extra) -> dict:
        return {"name": NAME, "data_vocab": DATA_VOCAB, "noise_id": NOISE, "marker_id": MARKER,
                "k": K_DEFAULT, "train_len": train_len, **extra}


SELECTIVE_COPYING = SelectiveCopying()
