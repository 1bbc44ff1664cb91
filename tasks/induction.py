"""The induction-heads task (Mamba paper §4.1.2 and E.1; Olsson et al. 2022). numpy only.

A sequence of length L over content tokens 0..15 and the trigger S = 16:

    filler ... S M filler ... S      -> predict M at the last position (the query)

- filler: uniform over 0..15 (M may recur in it, unless filler_excludes_memory)
- the first trigger at a uniform position p in [0, L-3], the memory token M (uniform) at p+1
- the last position holds the trigger again; no other trigger appears
- correct = the argmax at the last position equals M

Variants for experiments: a fixed trigger position, filler that excludes M, several planted
trigger/memory pairs (the target is the memory after the *first* trigger; `memory` lists all).
A batch is a pure function of its seed (numpy's PCG64).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .base import MAX_LEN, Positions, Task, TokenError

CONTENT_VOCAB = 16
TRIGGER = 16
VOCAB = CONTENT_VOCAB + 1
NAME = "induction_heads"


@dataclass
class InductionBatch:
    tokens: np.ndarray        # [B, L] int64
    target: np.ndarray        # [B]    M after the first trigger, the label at the last position
    trigger_pos: np.ndarray   # [B, k] planted trigger positions, ascending (the final query excluded)
    memory: np.ndarray        # [B, k] token right after each planted trigger

    # the interface every task's batch has (training and eval score these)
    @property
    def queries(self) -> np.ndarray:      # [B, 1] the query step: the last one
        return np.full((self.tokens.shape[0], 1), self.tokens.shape[1] - 1, dtype=np.int64)

    @property
    def answers(self) -> np.ndarray:      # [B, 1] the expected next token there: M
        return self.target[:, None]


def induction_batch(batch: int, length: int, *, seed: int = 0, rng: Optional[np.random.Generator] = None,
                    trigger_pos: Optional[int] = None, n_triggers: int = 1,
                    filler_excludes_memory: bool = False) -> InductionBatch:
    """Draw `batch` sequences of `length` tokens from `seed` (or from `rng`, for a stream of batches)."""
    if length < 3:
        raise ValueError(f"length must be >= 3 (trigger, memory, query), got {length}")
    if n_triggers < 1 or 2 * n_triggers + 1 > length:
        raise ValueError(f"{n_triggers} trigger/memory pairs do not fit in length {length}")
    if trigger_pos is not None and not (0 <= trigger_pos <= length - 3):
        raise ValueError(f"trigger_pos {trigger_pos} must be in 0..{length - 3}")
    if trigger_pos is not None and n_triggers != 1:
        raise ValueError("a fixed trigger_pos goes with n_triggers=1")
    g = rng if rng is not None else np.random.default_rng(seed)
    k = n_triggers
    memory = g.integers(0, CONTENT_VOCAB, (batch, k))                          # [B, k]
    if trigger_pos is not None:
        pos = np.full((batch, 1), trigger_pos, dtype=np.int64)
    elif k == 1:
        pos = g.integers(0, length - 2, (batch, 1))                            # p in [0, L-3]
    else:
        # k sorted distinct q in [0, L-2-k], then p_i = q_i + i: pairs never overlap, p_k <= L-3
        q = np.sort(np.argsort(g.random((batch, length - 1 - k)), axis=1)[:, :k], axis=1)
        pos = q + np.arange(k)
    if filler_excludes_memory:
        r = g.integers(0, CONTENT_VOCAB - 1, (batch, length))
        tokens = r + (r >= memory[:, :1])                                      # skips M (first)
    else:
        tokens = g.integers(0, CONTENT_VOCAB, (batch, length))                 # [B, L]
    tokens = tokens.astype(np.int64)
    rows = np.arange(batch)[:, None]
    tokens[rows, pos] = TRIGGER
    tokens[rows, pos + 1] = memory
    tokens[:, -1] = TRIGGER
    return InductionBatch(tokens=tokens, target=memory[:, 0].astype(np.int64),
                          trigger_pos=pos.astype(np.int64), memory=memory.astype(np.int64))


def positions(tokens: np.ndarray) -> Positions:
    """writes: p+1 after every S at p < L-2 that is followed by a content token; markers: those
    S; query: L-1 when the last token is S; target: the memory after the *first* S (the label)."""
    tokens = np.asarray(tokens)
    L = tokens.shape[0]
    trig = [int(p) for p in np.flatnonzero(tokens[: max(L - 2, 0)] == TRIGGER) if tokens[p + 1] != TRIGGER]
    if L >= 1 and tokens[-1] == TRIGGER:
        target = int(tokens[trig[0] + 1]) if trig else None
        return Positions(writes=tuple(p + 1 for p in trig), queries=(L - 1,), targets=(target,),
                         markers=tuple(trig), sources=(trig[0] + 1 if trig else None,))
    return Positions(writes=tuple(p + 1 for p in trig), markers=tuple(trig))


# ---------------------------------------------------------------- edits (pure, copy in, copy out)
def set_memory_token(tokens: np.ndarray, memory: int) -> np.ndarray:
    """Replace the token after the first trigger by `memory`; nothing else changes (a clean
    counterfactual: same filler, different thing to recall)."""
    if not (0 <= memory < CONTENT_VOCAB):
        raise TokenError(f"memory token {memory} is out of range 0..{CONTENT_VOCAB - 1}")
    pos = positions(tokens)
    if not pos.writes:
        raise TokenError("there is no trigger S followed by a memory token to swap")
    out = np.array(tokens, dtype=np.int64, copy=True)
    out[pos.writes[0]] = memory
    return out


def move_trigger(tokens: np.ndarray, new_pos: int) -> np.ndarray:
    """Move the first trigger/memory pair (S M) so that S lands at `new_pos`: the pair is taken out
    and re-inserted; the filler keeps its order; the length and the final query are unchanged."""
    tokens = np.asarray(tokens, dtype=np.int64)
    L = tokens.shape[0]
    pos = positions(tokens)
    if not pos.markers:
        raise TokenError("there is no trigger S followed by a memory token to move")
    if not (0 <= new_pos <= L - 3):
        raise TokenError(f"trigger position {new_pos} is out of range 0..{L - 3} for length {L}")
    p = pos.markers[0]
    pair = tokens[p:p + 2].copy()
    rest = np.delete(tokens, [p, p + 1])                                    # [L-2]
    return np.insert(rest, new_pos, pair)


def exchange_ids(tokens: np.ndarray, a: int, b: int) -> np.ndarray:
    """Swap two content ids everywhere (a relabelling: keeps every statistic of the filler)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    out = tokens.copy()
    out[tokens == a] = b
    out[tokens == b] = a
    return out


def plant_in_filler(tokens: np.ndarray, token: int, every: int, seed: int = 0) -> np.ndarray:
    """Put `token` at about one filler position in `every` (never on a trigger, the memory slot or
    the query): the 'memory token also in the filler' distractor preset."""
    tokens = np.array(tokens, dtype=np.int64, copy=True)
    pos = positions(tokens)
    protected = set(pos.markers) | set(pos.writes) | {tokens.shape[0] - 1}
    free = np.array([t for t in range(tokens.shape[0]) if t not in protected and tokens[t] != TRIGGER])
    rng = np.random.default_rng(seed)
    k = max(1, free.size // every)
    tokens[rng.choice(free, size=min(k, free.size), replace=False)] = token
    return tokens


def strip_triggers(tokens: np.ndarray, seed: int = 0) -> np.ndarray:
    """Replace every S but the final one by a random content token (the 'no trigger' preset)."""
    tokens = np.array(tokens, dtype=np.int64, copy=True)
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(tokens[:-1] == TRIGGER)
    tokens[idx] = rng.integers(0, CONTENT_VOCAB, size=idx.size)
    return tokens


# ---------------------------------------------------------------- the generator widgets and presets
@dataclass(frozen=True)
class Generator:
    """The generator widgets, one field each (induction_batch's arguments).
    trigger_pos / memory = -1 mean 'draw it from the seed'."""
    length: int = 256
    trigger_pos: int = -1
    memory: int = -1
    seed: int = 0
    n_triggers: int = 1
    filler_excludes_memory: bool = False
    memory_in_filler_every: int = 0      # >0: plant M at ~1/every filler positions (distractors)


PRESETS = {
    "Paper setup (L=256)": Generator(length=256, seed=0),
    "Long: 16384 tokens": Generator(length=16384, seed=1),
    "Memory token also in the filler": Generator(length=256, seed=2, memory_in_filler_every=16),
    "No trigger before the query": Generator(length=256, seed=3, n_triggers=0),
    "Two triggers": Generator(length=256, seed=4, n_triggers=2),
}
PRESET_NOTES = {
    "Paper setup (L=256)": "Mamba paper §4.1.2: 16 content tokens, one S M pair, S again at the end.",
    "Long: 16384 tokens": "64x the training length: does recall extrapolate? Charts are binned in time.",
    "Memory token also in the filler": "M planted at ~1/16 of the filler positions as distractors.",
    "No trigger before the query": "Only the final S: there is nothing to recall (no memory position).",
    "Two triggers": "Two S M pairs; the label is the memory after the first one.",
}


def realize(g: Generator) -> np.ndarray:
    """Draw the one sequence a Generator describes: int64 [L]."""
    if not (3 <= g.length <= MAX_LEN):
        raise TokenError(f"length {g.length} is out of range 3..{MAX_LEN}")
    if not (-1 <= g.memory < CONTENT_VOCAB):
        raise TokenError(f"memory token {g.memory} is out of range 0..{CONTENT_VOCAB - 1} (-1 = random)")
    if g.n_triggers not in (0, 1, 2):
        raise TokenError(f"number of triggers {g.n_triggers} must be 0, 1 or 2")
    if not (0 <= g.seed < 2 ** 63):
        raise TokenError(f"seed {g.seed} is out of range 0..2^63-1")
    if g.memory_in_filler_every < 0:
        raise TokenError(f"'memory in the filler every' {g.memory_in_filler_every} must be >= 0")
    kw = {"seed": g.seed, "n_triggers": max(g.n_triggers, 1), "filler_excludes_memory": g.filler_excludes_memory}
    if g.trigger_pos >= 0:
        if g.n_triggers != 1:
            raise TokenError("a fixed trigger position goes with exactly one trigger")
        kw["trigger_pos"] = g.trigger_pos
    try:
        batch = induction_batch(1, g.length, **kw)
    except ValueError as e:                                  # the limit is named in the message
        raise TokenError(str(e)) from None
    tokens = batch.tokens[0]                                                 # [L]
    drawn = int(batch.target[0])
    if g.memory >= 0 and g.memory != drawn:
        tokens = exchange_ids(tokens, drawn, g.memory)   # relabel: filler statistics unchanged
    if g.memory_in_filler_every > 0:
        tokens = plant_in_filler(tokens, g.memory if g.memory >= 0 else drawn, g.memory_in_filler_every,
                                 seed=g.seed)
    if g.n_triggers == 0:
        tokens = strip_triggers(tokens, seed=g.seed)
    return tokens


class InductionHeads(Task):
    name = NAME
    vocab_size = VOCAB
    labels = tuple(str(i) for i in range(CONTENT_VOCAB)) + ("S",)
    roles = ("filler", "memory M", "trigger S")
    aliases = {"S": TRIGGER}
    hint = " (S = the trigger, id 16), or use Generate / a preset"
    presets = PRESETS
    preset_notes = PRESET_NOTES
    Generator = Generator

    def positions(self, tokens) -> Positions:
        return positions(tokens)

    def batch(self, n: int, length: int, seed: int = 0, **options) -> InductionBatch:
        return induction_batch(n, length, seed=seed, **options)

    def realize(self, g: Generator) -> np.ndarray:
        return realize(g)

    def metadata(self, train_len: int = 256, **extra) -> dict:
        return {"name": NAME, "content_vocab": CONTENT_VOCAB, "trigger_id": TRIGGER, "train_len": train_len,
                **extra}


INDUCTION = InductionHeads()
