"""Multi-query associative recall, MQAR (Zoology, Arora et al. 2023). numpy only.

Vocabulary V = 8192 (Zoology's; `MQAR(vocab)` / `mqar_task(vocab)` for another even V >= 8, stored in
the checkpoint's task metadata): 0 = filler (shown `_`); keys from 1..V/2-1, values from V/2..V-1. D pairs:

    k1 v1 k2 v2 ... kD vD  _ _ k2 _ _ _ k1 _ ...     -> after each key query: its value

Positions 0..2D-1 hold k1 v1 ... kD vD (D distinct keys); positions 2D..L-1 hold the filler except
D distinct query positions (uniform), each holding one of the keys (each key once, random order).
The next token after a query must be that key's value. Zoology's settings:
(L, D) = (64, 4), (128, 8), (256, 16), (512, 64).
Scoring: every query is scored (tasks.score); accuracy = the share of queries answered right.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from .base import MAX_LEN, Positions, Task, TokenError

V_DEFAULT = 8192
FILLER = 0
NAME = "mqar"
ZOOLOGY_SETTINGS = ((64, 4), (128, 8), (256, 16), (512, 64))


def _key_range(vocab: int) -> tuple:
    return 1, vocab // 2            # keys in [1, V/2)


def _value_range(vocab: int) -> tuple:
    return vocab // 2, vocab        # values in [V/2, V)


@dataclass
class MQARBatch:
    tokens: np.ndarray        # [B, L] int64
    keys: np.ndarray          # [B, D] k_i at step 2i
    values: np.ndarray        # [B, D] v_i at step 2i+1
    queries: np.ndarray       # [B, D] query steps, ascending
    answers: np.ndarray       # [B, D] the value of the key queried at each query step


def mqar_batch(batch: int, length: int, n_pairs: int, *, vocab: int = V_DEFAULT, seed: int = 0,
               rng: Optional[np.random.Generator] = None) -> MQARBatch:
    """Draw `batch` sequences of `length` tokens with `n_pairs` key-value pairs and as many queries."""
    D = n_pairs
    k0, k1 = _key_range(vocab)
    if D < 1 or 3 * D > length:
        raise ValueError(f"{D} pairs and {D} queries do not fit in length {length} (need 3·D <= L)")
    if D > k1 - k0:
        raise ValueError(f"{D} distinct keys do not fit in the key range {k0}..{k1 - 1} of vocabulary {vocab}")
    g = rng if rng is not None else np.random.default_rng(seed)
    keys = np.argsort(g.random((batch, k1 - k0)), axis=1)[:, :D] + k0               # distinct per row
    v0, v1 = _value_range(vocab)
    values = g.integers(v0, v1, (batch, D))
    tokens = np.full((batch, length), FILLER, dtype=np.int64)
    tokens[:, 0:2 * D:2] = keys
    tokens[:, 1:2 * D:2] = values
    qpos = np.sort(np.argsort(g.random((batch, length - 2 * D)), axis=1)[:, :D], axis=1) + 2 * D
    which = np.argsort(g.random((batch, D)), axis=1)                                # key order at the queries
    rows = np.arange(batch)[:, None]
    tokens[rows, qpos] = keys[rows, which]
    return MQARBatch(tokens=tokens, keys=keys.astype(np.int64), values=values.astype(np.int64),
                     queries=qpos.astype(np.int64), answers=values[rows, which].astype(np.int64))


def positions(tokens: np.ndarray, vocab: int = V_DEFAULT) -> Positions:
    """Pairs: the leading run of (key, value) tokens; writes: their value steps; markers: their key
    steps; queries: every later step holding a key, its target that key's (last written) value."""
    tokens = np.asarray(tokens)
    k0, k1 = _key_range(vocab)
    v0, v1 = _value_range(vocab)
    table, i, L = {}, 0, tokens.shape[0]
    while i + 1 < L and k0 <= tokens[i] < k1 and v0 <= tokens[i + 1] < v1:
        table[int(tokens[i])] = (i + 1, int(tokens[i + 1]))
        i += 2
    ctx = i
    queries = [int(t) for t in range(ctx, L) if k0 <= tokens[t] < k1]
    return Positions(writes=tuple(p for p, _ in table.values()), markers=tuple(p - 1 for p, _ in table.values()),
                     queries=tuple(queries),
                     targets=tuple(table[int(tokens[q])][1] if int(tokens[q]) in table else None for q in queries),
                     sources=tuple(table[int(tokens[q])][0] if int(tokens[q]) in table else None for q in queries))


# ---------------------------------------------------------------- edits
def set_value(tokens: np.ndarray, key: int, value: int, vocab: int = V_DEFAULT) -> np.ndarray:
    """Give `key` another value in the context (the queries of that key now expect it)."""
    v0, v1 = _value_range(vocab)
    if not v0 <= value < v1:
        raise TokenError(f"value {value} is out of the value range {v0}..{v1 - 1}")
    tokens = np.array(tokens, dtype=np.int64, copy=True)
    pos = positions(tokens, vocab)
    for m in pos.markers:
        if tokens[m] == key:
            tokens[m + 1] = value
            return tokens
    raise TokenError(f"key {key} is not among the context's keys {sorted(int(tokens[m]) for m in pos.markers)[:8]}")


def repeat_key(tokens: np.ndarray, key: int, at: int, vocab: int = V_DEFAULT) -> np.ndarray:
    """Query `key` once more at step `at` (a filler step after the context)."""
    tokens = np.array(tokens, dtype=np.int64, copy=True)
    pos = positions(tokens, vocab)
    if key not in {int(tokens[m]) for m in pos.markers}:
        raise TokenError(f"key {key} is not among the context's keys")
    ctx = 2 * len(pos.writes)
    if not ctx <= at < tokens.shape[0] or tokens[at] != FILLER:
        raise TokenError(f"step {at} must be a filler step after the context ({ctx}..{tokens.shape[0] - 1})")
    tokens[at] = key
    return tokens


@dataclass(frozen=True)
class Generator:
    length: int = 256
    n_pairs: int = 16
    seed: int = 0


PRESETS = {f"Zoology (L={L}, D={D})": Generator(length=L, n_pairs=D, seed=i) for i, (L, D) in enumerate(ZOOLOGY_SETTINGS)}
PRESET_NOTES = {name: f"{g.n_pairs} key-value pairs, {g.n_pairs} queries in {g.length} tokens (Zoology's setting)."
                for name, g in PRESETS.items()}


def realize(g: Generator, vocab: int = V_DEFAULT) -> np.ndarray:
    if not 3 <= g.length <= MAX_LEN:
        raise TokenError(f"length {g.length} is out of range 3..{MAX_LEN}")
    if not 0 <= g.seed < 2 ** 63:
        raise TokenError(f"seed {g.seed} is out of range 0..2^63-1")
    try:
        return mqar_batch(1, g.length, g.n_pairs, vocab=vocab, seed=g.seed).tokens[0]
    except ValueError as e:
        raise TokenError(str(e)) from None


VOCAB_MAX = 1 << 20              # a sanity bound on metadata read from a checkpoint


def check_vocab(vocab) -> int:
    """An MQAR vocabulary: an even whole number 8..2^20 (keys and values split it in halves)."""
    if isinstance(vocab, bool) or not isinstance(vocab, (int, np.integer)) or not 8 <= vocab <= VOCAB_MAX \
            or vocab % 2:
        raise ValueError(f"an MQAR vocabulary must be an even whole number 8..{VOCAB_MAX}, got {vocab!r}")
    return int(vocab)


class MQAR(Task):
    name = NAME
    roles = ("filler", "value", "key")
    aliases = {"_": FILLER}
    Generator = Generator

    def __init__(self, vocab: int = V_DEFAULT):
        V = self.vocab_size = check_vocab(vocab)
        self.labels = ("_",) + tuple(str(i) for i in range(1, V))
        self.hint = f" (keys 1..{V // 2 - 1}, values {V // 2}..{V - 1}, _ = filler), or use a preset"
        # a preset needs D distinct keys: small vocabularies keep the Zoology settings that fit
        self.presets = {n: g for n, g in PRESETS.items() if g.n_pairs <= V // 2 - 1}
        self.preset_notes = {n: PRESET_NOTES[n] for n in self.presets}

    def positions(self, tokens) -> Positions:
        return positions(tokens, self.vocab_size)

    def batch(self, n: int, length: int, seed: int = 0, n_pairs=16, **options) -> MQARBatch:
        """n_pairs: D, or a list of D values, one drawn uniformly per batch (a mixture, as Zoology
        trains on several settings at once). A `vocab` option must name this task's vocabulary."""
        vocab = options.pop("vocab", self.vocab_size)
        if vocab != self.vocab_size:
            raise ValueError(f"vocab {vocab!r} in the task options, but this MQAR task has vocabulary {self.vocab_size}")
        if not isinstance(n_pairs, (int, np.integer)):
            choices = [int(d) for d in n_pairs]
            if not choices:
                raise ValueError("n_pairs is an empty list")
            g = options.pop("rng", None) or np.random.default_rng(seed)
            return mqar_batch(n, length, int(g.choice(choices)), vocab=self.vocab_size, rng=g, **options)
        return mqar_batch(n, length, int(n_pairs), vocab=self.vocab_size, seed=seed, **options)

    def realize(self, g: Generator) -> np.ndarray:
        return realize(g, self.vocab_size)

    def set_value(self, tokens, key: int, value: int) -> np.ndarray:
        return set_value(tokens, key, value, self.vocab_size)

    def repeat_key(self, tokens, key: int, at: int) -> np.ndarray:
        return repeat_key(tokens, key, at, self.vocab_size)

    def metadata(self, train_len: int = 256, **extra) -> dict:
        return {"name": NAME, "vocab": self.vocab_size, "filler_id": FILLER, "train_len": train_len, **extra}


@lru_cache(maxsize=16)
def mqar_task(vocab: int = V_DEFAULT) -> MQAR:
    """The MQAR task at vocabulary `vocab` (one instance per V, so `is` comparisons hold)."""
    return MQAR(check_vocab(vocab))


MQAR_TASK = mqar_task(V_DEFAULT)
