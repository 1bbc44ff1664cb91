"""The induction-heads task (Mamba paper §4.1.2 and E.1; Olsson et al. 2022), as a seeded generator.

A sequence of length L over content tokens 0..15 and the trigger S = 16:

    filler ... S M filler ... S      -> predict M at the last position

- filler: uniform over 0..15 (M may recur in it, unless filler_excludes_memory)
- the first trigger at a uniform position p in [0, L-3], the memory token M (uniform) at p+1
- the last position holds the trigger again; no other trigger appears
- accuracy = argmax of the logits at the last position equals M

Variants for experiments: a fixed trigger position, filler that excludes M, several planted
trigger/memory pairs (then `target` is the memory token after the *first* trigger and
`memory` lists all of them, so one can ask which one a model recalls).
Everything is vectorised; a torch.Generator makes a batch a pure function of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

CONTENT_VOCAB = 16
TRIGGER = 16
MODEL_VOCAB = CONTENT_VOCAB + 1


@dataclass
class InductionBatch:
    tokens: Tensor        # [B, L] int64
    target: Tensor        # [B]    M after the first trigger, the label at the last position
    trigger_pos: Tensor   # [B, k] planted trigger positions, ascending (the final query excluded)
    memory: Tensor        # [B, k] token right after each planted trigger


def task_metadata(train_len: int, **extra) -> dict:
    """The `task` JSON stored in checkpoints trained on this task."""
    return {"name": "induction_heads", "content_vocab": CONTENT_VOCAB, "trigger_id": TRIGGER,
            "train_len": train_len, **extra}


def induction_batch(batch: int, length: int, *, seed: Optional[int] = None,
                    generator: Optional[torch.Generator] = None, trigger_pos: Optional[int] = None,
                    n_triggers: int = 1, filler_excludes_memory: bool = False,
                    device="cpu") -> InductionBatch:
    """Draw `batch` sequences of `length` tokens. Give `seed` or a `generator` for reproducibility."""
    if length < 3:
        raise ValueError(f"length must be >= 3 (trigger, memory, query), got {length}")
    if n_triggers < 1 or 2 * n_triggers + 1 > length:
        raise ValueError(f"{n_triggers} trigger/memory pairs do not fit in length {length}")
    if trigger_pos is not None and not (0 <= trigger_pos <= length - 3):
        raise ValueError(f"trigger_pos {trigger_pos} must be in 0..{length - 3}")
    if trigger_pos is not None and n_triggers != 1:
        raise ValueError("a fixed trigger_pos goes with n_triggers=1")
    g = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else seed)
    k = n_triggers
    memory = torch.randint(0, CONTENT_VOCAB, (batch, k), generator=g)          # [B, k]
    if trigger_pos is not None:
        pos = torch.full((batch, 1), trigger_pos, dtype=torch.long)
    elif k == 1:
        pos = torch.randint(0, length - 2, (batch, 1), generator=g)            # p in [0, L-3]
    else:
        # k sorted distinct q in [0, L-2-k], then p_i = q_i + i: pairs never overlap, p_k <= L-3
        q = torch.rand(batch, length - 1 - k, generator=g).argsort(dim=1)[:, :k].sort(dim=1).values
        pos = q + torch.arange(k)
    if filler_excludes_memory:
        r = torch.randint(0, CONTENT_VOCAB - 1, (batch, length), generator=g)
        tokens = r + (r >= memory[:, :1]).long()                               # skips M (first)
    else:
        tokens = torch.randint(0, CONTENT_VOCAB, (batch, length), generator=g)  # [B, L]
    tokens.scatter_(1, pos, TRIGGER)
    tokens.scatter_(1, pos + 1, memory)
    tokens[:, -1] = TRIGGER
    return InductionBatch(tokens=tokens.to(device), target=memory[:, 0].to(device),
                          trigger_pos=pos.to(device), memory=memory.to(device))
