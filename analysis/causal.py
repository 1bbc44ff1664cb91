"""Causal tests of the memory channels (model.interventions through model.run): clamp their Δ at the
write, zero or patch their state, ablate each layer's mixer, freeze their Δ over the filler, and
ask whether layer 2's small filler Δ depends on layer 1.

Every function takes the memory layer and channels found by measure.py and the shared write
window W = [W0, W1) of the short sequences (S at P, M at W0 = P+1).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import numpy as np

from model import run
from model.interventions import AblateSSM, ClampDelta, PatchState, ZeroState
from tasks.measures import Windows, delta_ratio

from .results import Freeze, Interventions, Layer1Dependence, LongStream
from .runs import accuracy, batch, n_units, predict

if TYPE_CHECKING:
    from .mechanism import Settings

N_RANDOM_DRAWS = 3       # random-channel clamps: draws of as many channels as the memory set
EDIT_AFTER_WRITE = 10    # zero / patch the state at P + this (well after the write window)


def interventions(lm, cfg: Settings, layer: int, mem: list, win: Windows) -> Interventions:
    data, tokens = batch(cfg, cfg.interv_seqs, 4)
    other, other_tokens = batch(cfg, cfg.interv_seqs, 5)
    W0, W1 = win.write
    P, L, D = cfg.trigger_pos, cfg.length, n_units(lm)

    def acc(ivs, target=data.target) -> float:
        return float((predict(lm, tokens, ivs) == target).mean())

    rng = np.random.default_rng(cfg.seed)
    others = [c for c in range(D) if c not in mem]
    # as many random units as memory units, or all the others when the memory holds most of the layer
    # (a Mamba-2 layer has only H = 8 heads)
    k = min(len(mem), len(others))
    draws = [rng.choice(others, size=k, replace=False).tolist() for _ in range(N_RANDOM_DRAWS)] if k else []
    patched = predict(lm, tokens, [PatchState(layer, mem, t=P + EDIT_AFTER_WRITE, source_tokens=other.tokens)])
    return Interventions(
        none=acc([]),
        clamp_memory=acc([ClampDelta(layer, mem, from_t=W0, to_t=W1, value=0.0)]),
        clamp_random=[acc([ClampDelta(layer, ch, from_t=W0, to_t=W1, value=0.0)]) for ch in draws],
        zero_state=acc([ZeroState(layer, mem, t=P + EDIT_AFTER_WRITE)]),
        patch_own=float((patched == data.target).mean()),
        patch_source=float((patched == other.target).mean()),
        ablate=[acc([AblateSSM(li)]) for li in range(lm.config.n_layer)],
        # what does layer 1 contribute: a signal around the trigger/write only, or a lasting "S seen"?
        ablate_first_at_write=acc([AblateSSM(0, P, W1)]),
        ablate_first_after_write=acc([AblateSSM(0, W1, L - 1)]))


def freeze(lm, cfg: Settings, layer: int, mem: list, win: Windows, length: int, seed_offset: int) -> Freeze:
    """Δ = 0 on the memory channels from the end of the write window to the query, at `length`."""
    data, tokens = batch(cfg, cfg.freeze_seqs, seed_offset, length)
    acc = lambda ivs: float((predict(lm, tokens, ivs) == data.target).mean())   # noqa: E731
    return Freeze(length=length, n=cfg.freeze_seqs, baseline=acc([]),
                  frozen=acc([ClampDelta(layer, mem, from_t=win.write[1], to_t=length - 1, value=0.0)]))


def freeze_at_horizon(lm, cfg: Settings, layer: int, mem: list, win: Windows, long: LongStream) -> Optional[Freeze]:
    """The freeze test again at the first streamed length where recall failed (if it did, beyond
    2^freeze_log2): does Δ = 0 on the memory channels after the write window restore it?"""
    bad = [d for d, a in zip(long.distances, long.accuracy) if a < 1.0]
    if not bad or bad[0] <= 2 ** cfg.freeze_log2:
        return None
    return freeze(lm, cfg, layer, mem, win, 2 ** math.ceil(math.log2(bad[0])), seed_offset=8)


def layer1_dependence(lm, cfg: Settings, layer: int, mem: list, win: Windows, deltas: list,
                      filler_mean: np.ndarray) -> Layer1Dependence:
    """Does layer 2 keep Δ small over the filler by itself, or because of a lasting signal from layer 1?

    The Δ batch (deltas: [B, L, D] per layer, measure.delta_selectivity's) is rerun with layer 1's
    mixer output ablated after the write window (query kept): the memory channels' mean filler Δ,
    intact and ablated (medians over channels), and the query accuracy. Also the intact mean Δ on
    those channels *before* the trigger (t < P): if it is as small as after the write, Δ is not
    switched off by "M was written", it is off everywhere except at the write."""
    pre = deltas[layer][:, :cfg.trigger_pos][:, :, mem].mean((0, 1))               # [k]
    out = Layer1Dependence(applicable=layer == 1, pre_trigger_delta=float(np.median(pre)),
                           filler_delta_intact=float(np.median(filler_mean[mem])))
    if layer == 1:
        data, tokens = batch(cfg, cfg.delta_seqs, 1)
        res = run(lm, tokens, [AblateSSM(0, win.write[1], cfg.length - 1)], include=("delta",), num_last_tokens=1)
        ablated = delta_ratio(res.records[layer]["delta"].double().numpy(), win).filler_mean   # [D]
        out.accuracy = accuracy(res.logits, data.target)
        out.filler_delta_ablated = float(np.median(ablated[mem]))
    return out
