"""What every task shares: the text format of a sequence, its positions of interest, and the
interface a task implements. numpy only (no torch): viz/ and ui/ read tasks without the model.

A *task* knows its vocabulary and how to show a token, draws sequences from a seed, offers
presets and edits, finds where a sequence writes and queries memories, and scores a prediction.
The app, exports, training and the mechanism study ask the task; none of them hard-codes it.

Text format: token ids separated by spaces and/or commas (ASCII digits only); a task may add
aliases (induction heads: `S` for the trigger). Tokens are counted from 1 in error messages
("token 3 ('x') ..."), timesteps t from 0 everywhere else (charts, exports, trace arrays).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

MAX_LEN = 1 << 16            # the app's length cap: charts bin time, so 2^16 stays responsive
_SEP = re.compile(r"[\s,]+")
_INT = re.compile(r"[+-]?[0-9]+")   # ASCII digits only: '١' is a character, not an id
_MAX_DIGITS = 12                     # longer numerals are out of any vocabulary; never parsed


class TokenError(ValueError):
    """The text does not hold a valid sequence (or an edit is impossible); the message names the
    token and the rule."""


def _shown(p: str, n: int = 20) -> str:
    return p if len(p) <= n else p[:n] + "…"


def parse_ids(text: str, vocab_size: int, aliases: Mapping[str, int] = {}, max_len: int = MAX_LEN,
              hint: str = "") -> np.ndarray:
    """'3 7, 1 S 9' -> int64 [L]. Raises TokenError naming the first bad token.

    aliases: case-insensitive names for ids (induction heads: {'s': 16}); hint: appended to the
    message for an empty sequence (what to type)."""
    if text is not None and not isinstance(text, str):
        raise TokenError(f"the sequence must be text, got {type(text).__name__}")
    parts = [p for p in _SEP.split(text or "") if p]
    if not parts:
        raise TokenError(f"the sequence is empty: type token ids 0..{vocab_size - 1} separated by spaces "
                         f"or commas{hint}")
    if len(parts) > max_len:
        raise TokenError(f"the sequence has {len(parts):,} tokens, over the cap of {max_len:,}")
    lower = {k.lower(): v for k, v in aliases.items()}
    ids = np.empty(len(parts), dtype=np.int64)
    for i, p in enumerate(parts):
        if p.lower() in lower:
            ids[i] = lower[p.lower()]
        elif _INT.fullmatch(p):
            digits = p.lstrip("+-").lstrip("0") or "0"
            if len(digits) > _MAX_DIGITS:
                raise TokenError(f"token id {_shown(p)} is out of range 0..{vocab_size - 1} (token {i + 1})")
            ids[i] = int(p)
        else:
            names = "".join(f" or {k}" for k in aliases)
            raise TokenError(f"token {i + 1} ('{_shown(p)}') is not a whole number{names}")
    bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
    if bad.size:
        i = int(bad[0])
        raise TokenError(f"token id {ids[i]} is out of range 0..{vocab_size - 1} (token {i + 1})")
    return ids


@dataclass(frozen=True)
class Positions:
    """Where a sequence writes and recalls memories (timesteps, from 0).

    writes:   steps holding a token the model must keep (induction heads: M after each S)
    queries:  steps at which a recall is asked for (the prediction there is scored)
    targets:  the expected next token at each query, aligned with `queries`; None where the
              sequence asks but holds no answer (induction heads: S at the end, no S M before)
    markers:  cue steps that are neither (induction heads: the triggers S before the query)
    sources:  the write step each query recalls, aligned with `queries` (None where it recalls no
              write); empty when the task does not say (plain text)
    """
    writes: tuple = ()
    queries: tuple = ()
    targets: tuple = ()
    markers: tuple = ()
    sources: tuple = ()

    @property
    def first_write(self) -> Optional[int]:
        return self.writes[0] if self.writes else None

    @property
    def scored(self) -> list:
        """[(query step, target)] for every query with a target."""
        return [(q, t) for q, t in zip(self.queries, self.targets) if t is not None]


@dataclass(frozen=True)
class Score:
    """Top-1 predictions at the scored queries of one sequence."""
    queries: tuple           # steps
    targets: tuple           # expected tokens
    top: tuple               # argmax token at each query
    p_target: tuple          # p(target) at each query

    @property
    def n(self) -> int:
        return len(self.queries)

    @property
    def correct(self) -> int:
        return sum(int(a == b) for a, b in zip(self.top, self.targets))


def score(probs: np.ndarray, positions: Positions) -> Score:
    """probs [L, V] (next-token distribution at each step) -> the Score at the scored queries.
    The one definition of "correct": the argmax at a query step equals its target."""
    pairs = positions.scored
    q = [p for p, _ in pairs]
    tgt = [t for _, t in pairs]
    top = [int(np.argmax(probs[p])) for p in q]
    return Score(tuple(q), tuple(tgt), tuple(top), tuple(float(probs[p, t]) for p, t in pairs))


class Task:
    """The interface a task implements (tasks/induction.py is the example).

    name:        the `task.name` stored in checkpoints
    vocab_size:  V, the model's vocabulary
    labels:      [V] str, how each id is shown ('S' for the trigger)
    roles:       display names for ('filler', 'write', 'marker') steps
    """
    name: str = ""
    vocab_size: int = 0
    labels: tuple = ()
    roles: tuple = ("filler", "write", "marker")
    aliases: Mapping[str, int] = {}
    hint: str = ""
    presets: Mapping = {}          # name -> generator settings (a dataclass of the task)
    preset_notes: Mapping = {}     # name -> one sentence

    def parse(self, text: str, max_len: int = MAX_LEN) -> np.ndarray:
        return parse_ids(text, self.vocab_size, self.aliases, max_len, self.hint)

    def format(self, tokens) -> str:
        return " ".join(self.labels[int(t)] for t in np.asarray(tokens).tolist())

    def token_labels(self, tokens) -> np.ndarray:
        """int [L] -> str [L]."""
        return np.asarray(self.labels, dtype=object)[np.asarray(tokens, dtype=np.int64)].astype(str)

    def positions(self, tokens: np.ndarray) -> Positions:
        raise NotImplementedError

    def batch(self, n: int, length: int, seed: int = 0, **options):
        raise NotImplementedError

    def metadata(self, **extra) -> dict:
        """The `task` JSON stored in checkpoints trained on this task."""
        raise NotImplementedError
