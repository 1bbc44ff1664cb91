"""Plain language models: free text in, next-token prediction at every step. numpy only.

A model without a task (a downloaded Mamba LM) has no write or query positions of its own; what
one scores is next-token prediction: every step t < L-1 is a query whose target is token t+1, so
tasks.score gives top-1 accuracy and p(actual next token) per step (the loss is -log of it).

Two tasks serve such models, so that the app and exports need no special case:
- IdTask(V): the text box takes token ids 0..V-1 (a model directory without a tokenizer);
- TextTask(labels, encode, decode): text in, through the model's tokenizer (model/tokenizer.py
  builds it; this module never imports a tokenizer library), decoded token labels out.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .base import MAX_LEN, Positions, Task, TokenError


def next_token_positions(tokens) -> Positions:
    """Every step but the last is a query; its target is the token that follows."""
    tokens = np.asarray(tokens)
    L = tokens.shape[0]
    return Positions(queries=tuple(range(L - 1)), targets=tuple(int(t) for t in tokens[1:]))


class IdTask(Task):
    """Token ids 0..V-1, shown as numbers: a plain LM without a tokenizer."""
    name = "next_token"
    roles = ("token", "write", "marker")

    def __init__(self, vocab_size: int):
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.hint = ""

    @property
    def labels(self) -> tuple:           # built on demand: 50k strings are not free
        return tuple(str(i) for i in range(self.vocab_size))

    def token_labels(self, tokens) -> np.ndarray:
        return np.asarray(tokens, dtype=np.int64).astype(str)

    def format(self, tokens) -> str:
        return " ".join(str(int(t)) for t in np.asarray(tokens).tolist())

    def positions(self, tokens) -> Positions:
        return next_token_positions(tokens)

    def metadata(self, **extra) -> dict:
        return {"name": self.name, **extra}


class TextTask(IdTask):
    """Free text through a tokenizer: parse encodes, format decodes, labels are the decoded tokens
    with whitespace and unprintable bytes made visible (`labels` from model/tokenizer.py)."""
    name = "text"

    def __init__(self, labels: Sequence[str], encode: Callable[[str], list], decode: Callable[[list], str]):
        super().__init__(len(labels))
        self._labels = tuple(labels)
        self._encode, self._decode = encode, decode

    @property
    def labels(self) -> tuple:
        return self._labels

    def token_labels(self, tokens) -> np.ndarray:
        return np.asarray(self._labels, dtype=object)[np.asarray(tokens, dtype=np.int64)].astype(str)

    def parse(self, text: str, max_len: int = MAX_LEN) -> np.ndarray:
        if text is not None and not isinstance(text, str):
            raise TokenError(f"the text must be a string, got {type(text).__name__}")
        if not text:
            raise TokenError("the text is empty: type some text to run the model on")
        # a cheap bound first: no tokenizer makes fewer than one token per 64 characters
        if len(text) > 64 * max_len:
            raise TokenError(f"the text has {len(text):,} characters: over what {max_len:,} tokens can hold")
        ids = np.asarray(self._encode(text), dtype=np.int64)
        if ids.size == 0:
            raise TokenError("the text encodes to no tokens")
        if ids.size > max_len:
            raise TokenError(f"the text encodes to {ids.size:,} tokens, over the cap of {max_len:,}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
        if bad.size:
            raise TokenError(f"the tokenizer gave id {ids[bad[0]]}, outside the model's vocabulary 0..{self.vocab_size - 1}")
        return ids

    def format(self, tokens) -> str:
        return self._decode([int(t) for t in np.asarray(tokens).tolist()])
