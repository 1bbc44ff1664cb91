"""The memory channels out to 2^long_max_log2 steps: what is left of the written state, and does a
query still recall M? Plus what the decay formula alone predicts for it.

`long_seqs` sequences [S, M, filler ...] (no filler before S: the write is at step 1; the write
window ends d_conv - 1 filler steps later, where h(0) is taken). At distances τ = 2^4, 2^6, ...
(τ filler steps after M) the memory channels' state h(τ) is compared with h(0) -- retained fraction
ρ = <h(τ), h(0)> / |h(0)|², and the cosine -- and a query S appended after the τ-th filler step
is answered (accuracy at length τ + 3). One model.run per distance on the stream's prefix, with a
snapshot of the state before the query: the same sequences at every τ, ~4/3 of one pass over the
longest stream in all, and the run stops once `long_stop_after` distances in a row are forgotten
(accuracy <= 2/16 and |ρ| < 1/e).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from model import run
from tasks.induction import CONTENT_VOCAB, TRIGGER
from tasks.measures import Windows

from .results import DecayPrediction, LongStream
from .runs import batch, states_at, unit_A

if TYPE_CHECKING:
    from .mechanism import Settings

CHANCE = 1.0 / CONTENT_VOCAB


def distances(max_log2: int) -> list:
    """2^4, 2^6, ... up to 2^max_log2 (always included)."""
    ks = list(range(4, max_log2 + 1, 2))
    if not ks or ks[-1] != max_log2:
        ks.append(max_log2)
    return [2 ** k for k in ks]


def stream_draws(n: int, tau_max: int, seed: int) -> tuple:
    """The long stream's sequences: (M [n], filler [n, tau_max]) from numpy's generator at `seed`."""
    g = np.random.default_rng(seed)
    M = g.integers(0, CONTENT_VOCAB, n)
    return M, g.integers(0, CONTENT_VOCAB, (n, tau_max))


def stream_tokens(M: np.ndarray, filler: np.ndarray, tau: int) -> torch.Tensor:
    """[S, M, τ filler steps, S] per sequence: a LongTensor [n, τ + 3], the query last."""
    n = M.shape[0]
    return torch.from_numpy(np.concatenate([np.full((n, 1), TRIGGER), M[:, None], filler[:, :tau],
                                            np.full((n, 1), TRIGGER)], 1))


def long_stream(lm, cfg: Settings, layer: int, mem: list) -> LongStream:
    n, w = cfg.long_seqs, lm.config.d_conv - 1          # w: filler steps inside the write window after M
    dists = distances(cfg.long_max_log2)
    M, filler = stream_draws(n, dists[-1], cfg.seed + 7)                            # [n], [n, τ_max]
    target = torch.from_numpy(M)
    out = LongStream(n=n, distances=[], rho=[], cosine=[], accuracy=[], min_margin=[], stopped_early=False)
    h0, forgotten = None, 0
    for d in dists:
        if forgotten >= cfg.long_stop_after:      # budget: nothing left to lose
            out.stopped_early = True
            break
        tokens = stream_tokens(M, filler, d)                                          # [n, d + 3]
        res = run(lm, tokens, num_last_tokens=1, snapshots=(1 + w, 1 + d))            # after the window; before S
        if h0 is None:
            h0 = res.snapshots[1 + w][layer].ssm[:, mem].double().reshape(n, -1)      # [n, k*N]
        h = res.snapshots[1 + d][layer].ssm[:, mem].double().reshape(n, -1)           # [n, k*N]
        rho = (h * h0).sum(-1) / h0.square().sum(-1).clamp_min(1e-300)
        cos = torch.nn.functional.cosine_similarity(h, h0, dim=-1)
        lg = res.logits[:, -1, :lm.config.vocab_size].double().cpu()                  # [n, V]
        best_other = lg.scatter(1, target[:, None], -math.inf).max(1).values
        out.distances.append(d)
        out.rho.append(float(rho.mean()))
        out.cosine.append(float(cos.mean()))
        out.accuracy.append(float((lg.argmax(-1) == target).double().mean()))
        out.min_margin.append(float((lg.gather(1, target[:, None])[:, 0] - best_other).min()))
        gone = out.accuracy[-1] <= 2 * CHANCE and abs(out.rho[-1]) < 1 / math.e
        forgotten = forgotten + 1 if gone else 0
    return out


def decay_prediction(lm, cfg: Settings, layer: int, mem: list, win: Windows, filler_mean: np.ndarray,
                     at: list) -> DecayPrediction:
    """ρ(τ) predicted from the decay formula alone: each state component of the written memory keeps
    exp(-τ Δ_filler[d] |A[d, n]|), so ρ_pred(τ) = Σ h0[d,n]² exp(-τ Δ̄_d |A_dn|) / Σ h0[d,n]² (energy
    over `delta_seqs` sequences, Δ̄_d = mean filler Δ). Ignores what the filler adds. at: the τ to report."""
    end = win.write[1] - 1
    _, tokens = batch(cfg, cfg.delta_seqs, 9, length=end + 3)
    h0 = states_at(lm, tokens, [end])[end][layer][:, mem]                           # [B, k, F]
    e = h0.square().mean(0).numpy()                                                 # [k, F]
    rate = filler_mean[mem][:, None] * unit_A(lm, layer, e.shape[-1])[mem]          # [k, F]

    def rho(tau):
        return float((e * np.exp(-tau * rate)).sum() / e.sum())
    grid = 2.0 ** np.linspace(0, 60, 1201)
    below = [t for t in grid if rho(t) < 1 / math.e]
    return DecayPrediction(rho_at=[rho(t) for t in at], horizon=float(below[0]) if below else None)
