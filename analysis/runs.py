"""The study's sequences and model runs, shared by measure.py, causal.py and stream.py.

Short sequences are the task's own (tasks.INDUCTION.batch) with the trigger S at a fixed position
P (settings.trigger_pos), so one time index means "the memory token" in every sequence and a batch
shares one layout: the write w = P+1 (M), the write window W = [w, w + d_conv) and the filler after
it up to the query, from tasks.measures.windows. Each measurement draws its own batch from
settings.seed + a fixed offset (1: Δ, 2: probes, 3: attention example, 4/5: interventions and
their patch sources, 6/8: freeze tests, 7: long stream, 9: decay prediction).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from model import run
from tasks import INDUCTION
from tasks.measures import Windows, windows

if TYPE_CHECKING:
    from .mechanism import Settings


def batch(cfg: Settings, n: int, seed_offset: int, length: int = 0):
    """n sequences of `length` (default cfg.length) with S at P, drawn from cfg.seed + seed_offset:
    (InductionBatch of numpy arrays, its tokens as a LongTensor [n, L])."""
    b = INDUCTION.batch(n, length or cfg.length, seed=cfg.seed + seed_offset, trigger_pos=cfg.trigger_pos)
    return b, torch.from_numpy(b.tokens)


def write_windows(cfg: Settings, d_conv: int) -> Windows:
    """The write window and filler shared by every short sequence (S at P, the query at L-1)."""
    b, _ = batch(cfg, 1, 0)
    win = windows(INDUCTION.positions(b.tokens[0]), cfg.length, d_conv)
    if win is None:
        raise ValueError(f"trigger_pos {cfg.trigger_pos} leaves no filler after the write window in "
                         f"length {cfg.length}")
    return win


def accuracy(logits: torch.Tensor, target: np.ndarray) -> float:
    """Share of sequences whose argmax at the last position is the target: logits [B, *, V]."""
    return float((logits[:, -1].argmax(-1).cpu() == torch.from_numpy(target)).double().mean())


def predict(lm, tokens: torch.Tensor, interventions=()) -> np.ndarray:
    """argmax at the last position under `interventions`: tokens [B, L] -> [B]."""
    return run(lm, tokens, interventions, num_last_tokens=1).logits[:, -1].argmax(-1).cpu().numpy()


def states_at(lm, tokens: torch.Tensor, times) -> dict:
    """{t: [n_layer, B, U, F] fp64}: every layer's h just after step t (model.run's snapshots; the
    run stops after the last t), one row of F state values per unit: a Mamba-1 channel's N, a
    Mamba-2 head's P x N."""
    times = sorted({int(t) for t in times})
    res = run(lm, tokens[:, :times[-1] + 1], num_last_tokens=1, snapshots=times)
    return {t: torch.stack([s.ssm.double().flatten(2) for s in res.snapshots[t]]) for t in times}


def n_units(lm) -> int:
    """U: the units of a per-layer record (Mamba-1 channels D, Mamba-2 heads H)."""
    return lm.backbone.layers[0].mixer.n_units


def unit_A(lm, layer: int, n_state: int) -> np.ndarray:
    """|A| of every state value of a unit, [U, F] (Mamba-1: A[d, n]; Mamba-2: the head's scalar A
    repeated over its P x N values), matching states_at's rows."""
    A = np.abs(lm.backbone.layers[layer].mixer.A.detach().double().cpu().numpy())
    A = A.reshape(A.shape[0], -1)                                                # [U, N] or [H, 1]
    return np.broadcast_to(A, (A.shape[0], n_state)) if A.shape[1] == 1 else A
