"""Token sequences as the app edits them: parse / format the text box, find the task's positions,
quick edits, and the named presets. numpy only (no torch, no gradio).

The text format: token ids separated by spaces and/or commas; `S` (any case) or `16` is the
trigger. Tokens are counted from 1 in error messages ("token 3 ('x') ..."), timesteps t from 0
everywhere else (charts, exports), as in the trace arrays.

The induction-heads layout (model/data.py, Mamba paper §4.1.2):

    filler ... S M filler ... S      -> predict M at the last position (the query)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

TRIGGER = 16                 # model/data.py TRIGGER (S); kept in sync by tests/test_viz.py
CONTENT_VOCAB = 16           # content tokens 0..15
VOCAB = CONTENT_VOCAB + 1    # ids 0..16
MAX_LEN = 1 << 16            # the app's length cap: charts bin time, so 2^16 stays responsive
_SEP = re.compile(r"[\s,]+")


class TokenError(ValueError):
    """The text box does not hold a valid sequence; the message names the token and the rule."""


def parse_tokens(text: str, vocab_size: int = VOCAB, max_len: int = MAX_LEN) -> np.ndarray:
    """'3 7, 1 S 9' -> int64 [L]. Raises TokenError naming the first bad token."""
    parts = [p for p in _SEP.split(text or "") if p]
    if not parts:
        raise TokenError(f"the sequence is empty: type token ids 0..{vocab_size - 1} separated by "
                         "spaces or commas (S = the trigger, id 16), or use Generate / a preset")
    if len(parts) > max_len:
        raise TokenError(f"the sequence has {len(parts):,} tokens, over the cap of {max_len:,}")
    ids = np.empty(len(parts), dtype=np.int64)
    for i, p in enumerate(parts):
        if p in ("S", "s"):
            ids[i] = TRIGGER
        elif re.fullmatch(r"[+-]?\d+", p):
            ids[i] = int(p)
        else:
            shown = p if len(p) <= 20 else p[:20] + "…"
            raise TokenError(f"token {i + 1} ('{shown}') is not an integer or S")
    bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
    if bad.size:
        i = int(bad[0])
        raise TokenError(f"token id {ids[i]} is out of range 0..{vocab_size - 1} (token {i + 1})")
    return ids


def format_tokens(tokens: np.ndarray) -> str:
    """int [L] -> '3 7 1 S 9 ...' (the trigger written as S)."""
    return " ".join("S" if int(t) == TRIGGER else str(int(t)) for t in np.asarray(tokens).tolist())


def token_labels(tokens: np.ndarray) -> np.ndarray:
    """int [L] -> str [L], 'S' for the trigger."""
    lab = np.asarray(tokens).astype(str)
    lab[np.asarray(tokens) == TRIGGER] = "S"
    return lab


@dataclass
class TaskPositions:
    """Where the induction task's pieces are in a (possibly hand-edited) sequence.

    query:      L-1 when the last token is S, else None (nothing to recall)
    triggers:   positions p < L-2 of every other S that has a token after it
    memory_pos: p+1 for each trigger; memory_tokens the tokens there
    target:     the memory token after the *first* trigger (model/data.py's label), or None
    """
    query: Optional[int]
    triggers: list = field(default_factory=list)
    memory_pos: list = field(default_factory=list)
    memory_tokens: list = field(default_factory=list)

    @property
    def target(self) -> Optional[int]:
        return self.memory_tokens[0] if (self.query is not None and self.memory_tokens) else None

    @property
    def first_memory_pos(self) -> Optional[int]:
        return self.memory_pos[0] if (self.query is not None and self.memory_pos) else None


def task_positions(tokens: np.ndarray) -> TaskPositions:
    tokens = np.asarray(tokens)
    L = tokens.shape[0]
    query = L - 1 if L >= 1 and tokens[-1] == TRIGGER else None
    trig = [int(p) for p in np.flatnonzero(tokens[: max(L - 2, 0)] == TRIGGER)
            if tokens[p + 1] != TRIGGER]
    return TaskPositions(query=query, triggers=trig, memory_pos=[p + 1 for p in trig],
                         memory_tokens=[int(tokens[p + 1]) for p in trig])


# ---------------------------------------------------------------- quick edits (pure, copy in, copy out)
def set_memory_token(tokens: np.ndarray, memory: int) -> np.ndarray:
    """Replace the token after the first trigger by `memory`; nothing else changes (a clean
    counterfactual: same filler, different thing to recall)."""
    if not (0 <= memory < CONTENT_VOCAB):
        raise TokenError(f"memory token {memory} is out of range 0..{CONTENT_VOCAB - 1}")
    pos = task_positions(tokens)
    if not pos.memory_pos:
        raise TokenError("there is no trigger S followed by a memory token to swap")
    out = np.array(tokens, dtype=np.int64, copy=True)
    out[pos.memory_pos[0]] = memory
    return out


def move_trigger(tokens: np.ndarray, new_pos: int) -> np.ndarray:
    """Move the first trigger/memory pair (S M) so that S lands at `new_pos`: the pair is taken out
    and re-inserted; the filler keeps its order; the length and the final query are unchanged."""
    tokens = np.asarray(tokens, dtype=np.int64)
    L = tokens.shape[0]
    pos = task_positions(tokens)
    if not pos.triggers:
        raise TokenError("there is no trigger S followed by a memory token to move")
    if not (0 <= new_pos <= L - 3):
        raise TokenError(f"trigger position {new_pos} is out of range 0..{L - 3} for length {L}")
    p = pos.triggers[0]
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
    pos = task_positions(tokens)
    protected = set(pos.triggers) | set(pos.memory_pos) | {tokens.shape[0] - 1}
    free = np.array([t for t in range(tokens.shape[0]) if t not in protected and tokens[t] != TRIGGER])
    rng = np.random.default_rng(seed)
    k = max(1, free.size // every)
    tokens[rng.choice(free, size=min(k, free.size), replace=False)] = token
    return tokens


# ---------------------------------------------------------------- presets
@dataclass(frozen=True)
class Generator:
    """The generator widgets, one field each (model/data.py induction_batch's arguments).
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


def strip_triggers(tokens: np.ndarray, seed: int = 0) -> np.ndarray:
    """Replace every S but the final one by a random content token (the 'no trigger' preset)."""
    tokens = np.array(tokens, dtype=np.int64, copy=True)
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(tokens[:-1] == TRIGGER)
    tokens[idx] = rng.integers(0, CONTENT_VOCAB, size=idx.size)
    return tokens


def realize(g: Generator, induction_batch) -> np.ndarray:
    """Draw the sequence a Generator describes. `induction_batch` is model.data.induction_batch,
    passed in so that this module stays torch-free (its tensors are read with np.asarray)."""
    if not (3 <= g.length <= MAX_LEN):
        raise TokenError(f"length {g.length} is out of range 3..{MAX_LEN}")
    if not (-1 <= g.memory < CONTENT_VOCAB):
        raise TokenError(f"memory token {g.memory} is out of range 0..{CONTENT_VOCAB - 1} (-1 = random)")
    if g.n_triggers not in (0, 1, 2):
        raise TokenError(f"number of triggers {g.n_triggers} must be 0, 1 or 2")
    kw = {"seed": g.seed, "n_triggers": max(g.n_triggers, 1),
          "filler_excludes_memory": g.filler_excludes_memory}
    if g.trigger_pos >= 0:
        if g.n_triggers != 1:
            raise TokenError("a fixed trigger position goes with exactly one trigger")
        kw["trigger_pos"] = g.trigger_pos
    batch = induction_batch(1, g.length, **kw)           # raises ValueError with the limit named
    tokens = np.asarray(batch.tokens[0]).astype(np.int64)                   # [L]
    drawn = int(np.asarray(batch.target)[0])
    if g.memory >= 0 and g.memory != drawn:
        tokens = exchange_ids(tokens, drawn, g.memory)   # relabel: filler statistics unchanged
    if g.memory_in_filler_every > 0:
        tokens = plant_in_filler(tokens, g.memory if g.memory >= 0 else drawn, g.memory_in_filler_every,
                                 seed=g.seed)
    if g.n_triggers == 0:
        tokens = strip_triggers(tokens, seed=g.seed)
    return tokens
