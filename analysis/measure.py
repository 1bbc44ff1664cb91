"""Measure one checkpoint: Δ selectivity, probes, memory channels, |A|_eff, hidden attention, then the
causal tests (causal.py) and the long stream (stream.py) -> a CheckpointResult.

The Δ ratio of a channel is tasks.measures.delta_ratio over the Δ batch (runs.py: S at P, one
shared layout): max over the write window W = [P+1, P+1+d_conv) of the batch-mean Δ / median Δ
over the filler after W up to the query. The memory channels are tasks.measures.memory_channels
of the memory layer's ratio (at most max_memory_channels, each above min_ratio).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from model import load_checkpoint, run, trace
from tasks import INDUCTION
from tasks.induction import CONTENT_VOCAB
from tasks.measures import Windows, delta_ratio
from tasks.measures import memory_channels as select_memory_channels

from . import causal, stream
from .compare import task_of
from .hidden_attention import hidden_attention, layer_A
from .probes import channel_accuracy, joint_probe
from .results import Attention, CheckpointResult, DeltaSelectivity, LayerProbe, PredictedHorizon, Probes
from .runs import accuracy, batch, n_units, states_at, unit_A, write_windows

if TYPE_CHECKING:
    from .mechanism import Settings

JOINT_KS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)   # top-k channel sets tried by the joint probes
EXAMPLE_LEN, EXAMPLE_TRIGGER = 64, 20          # the hidden-attention figure's sequence


def delta_selectivity(lm, cfg: Settings, win: Windows) -> tuple:
    """(DeltaSelectivity, the batch's records per layer): Δ ratio of every layer and channel over
    `delta_seqs` sequences. The records (Δ, B, C, u) are reused by the hidden attention."""
    data, tokens = batch(cfg, cfg.delta_seqs, 1)
    res = run(lm, tokens, include=("ssm_input", "delta", "B", "C"), num_last_tokens=1)
    deltas = [r["delta"].double().numpy() for r in res.records]                 # [B, L, D] per layer
    w = win.write[0]
    at_m = Windows(write=(w, w + 1), filler=win.filler, markers=win.markers)    # Δ at M itself
    full = [delta_ratio(d, win) for d in deltas]
    tok = [delta_ratio(d, at_m) for d in deltas]
    sel = DeltaSelectivity(
        accuracy=accuracy(res.logits, data.target),
        write=np.stack([r.write for r in full]), write_offset=np.stack([r.write_step for r in full]) - cfg.trigger_pos,
        at_token=np.stack([r.write for r in tok]), filler_median=np.stack([r.filler_median for r in full]),
        filler_mean=np.stack([r.filler_mean for r in full]), ratio=np.stack([r.ratio for r in full]),
        ratio_at_token=np.stack([r.ratio for r in tok]))
    return sel, res.records, deltas


def probes(lm, cfg: Settings, win: Windows) -> tuple:
    """(Probes, states just after the write window [n_layer, B, U, F]): per-unit and joint ridge
    probes for M at `distances` steps after M; the memory layer is the one whose joint probe is best."""
    n_tr, n_te = cfg.probe_train, cfg.probe_test
    data, tokens = batch(cfg, n_tr + n_te, 2)
    times = [cfg.trigger_pos + 1 + t for t in cfg.distances]
    end = win.write[1] - 1                                                       # last step of the window
    st = states_at(lm, tokens, times + [end])                                    # t -> [nl, B, U, F]
    y = torch.from_numpy(data.target)
    ytr, yte = y[:n_tr], y[n_tr:]
    n_layer, D = lm.config.n_layer, n_units(lm)
    acc = np.zeros((n_layer, len(times), D))
    for k, t in enumerate(times):
        for li in range(n_layer):
            acc[li, k] = channel_accuracy(st[t][li, :n_tr], ytr, st[t][li, n_tr:], yte, cfg.ridge,
                                          CONTENT_VOCAB).numpy()
    ref = times[-1]
    ks = [k for k in JOINT_KS if k <= D]
    layers = []
    for li in range(n_layer):
        order = np.lexsort((-acc[li].mean(0), -acc[li, -1]))                    # by accuracy at τ_max
        layers.append(LayerProbe(order=[int(c) for c in order[:max(ks)]], acc={
            k: joint_probe(st[ref][li, :n_tr], ytr, st[ref][li, n_tr:], yte, order[:k], cfg.ridge, CONTENT_VOCAB)[0]
            for k in ks}))
    best_layer = max(range(n_layer), key=lambda li: (round(max(layers[li].acc.values()), 3), -li))
    best = max(layers[best_layer].acc.values())
    k_star = next(k for k in ks if layers[best_layer].acc[k] >= best - 0.02)
    probe_set = layers[best_layer].order[:k_star]
    by_dist = [joint_probe(st[t][best_layer, :n_tr], ytr, st[t][best_layer, n_tr:], yte, probe_set, cfg.ridge,
                           CONTENT_VOCAB)[0] for t in times]
    return Probes(channel_acc=acc, layers=layers, memory_layer=best_layer, probe_channels=probe_set, best=best,
                  by_distance=by_dist), st[end]


def predicted_horizon(lm, layer: int, mem: list, h0: torch.Tensor, filler_mean: np.ndarray) -> PredictedHorizon:
    """1/(mean filler Δ · |A|_eff) per memory unit; h0 [B, U, F] the state after the write window.
    |A|_eff is |A| weighted by where the written state's energy is (a Mamba-2 head has one A)."""
    A = torch.from_numpy(unit_A(lm, layer, h0.shape[-1]).copy())                # [U, F]
    w = h0.square() / h0.square().sum(-1, keepdim=True).clamp_min(1e-300)       # [B, U, F] energy share
    a_eff = (w * A[None]).sum(-1).mean(0).numpy()                               # [U]
    pred = 1.0 / np.maximum(filler_mean * a_eff, 1e-300)
    on = [float(pred[c]) for c in mem]
    return PredictedHorizon(a_eff=a_eff, per_channel={int(c): v for c, v in zip(mem, on)},
                            median=float(np.median(on)), low=float(np.min(on)), high=float(np.max(on)))


def unit_input(u: np.ndarray, mem: list, U: int) -> np.ndarray:
    """The scan input of each memory unit: u [L, D] -> [L, k]. A Mamba-1 channel is one column; a
    Mamba-2 head's input is its P channels (heads are contiguous in D), taken by their norm, since
    its α̃ is one scalar per head and step."""
    L, D = u.shape
    if U == D:
        return u[:, mem]
    return np.linalg.norm(u.reshape(L, U, D // U)[:, mem], axis=-1)


def attention(lm, cfg: Settings, layer: int, mem: list, records: list, win: Windows) -> Attention:
    """The share of the query's α̃-weighted input that comes from the write window, on the memory
    units (mean over `attn_seqs` sequences of the Δ batch), and one short example for the figure."""
    A = layer_A(lm, layer)                                                       # [D, N] or [H]
    rec = records[layer]
    W0, W1 = win.write
    shares, weights = [], []
    for b in range(min(cfg.attn_seqs, rec["delta"].shape[0])):
        al = hidden_attention(rec["delta"][b].numpy(), A, rec["B"][b].numpy(), rec["C"][b].numpy(),
                              channels=mem)                                      # [k, L, L]
        u = unit_input(rec["ssm_input"][b].double().numpy(), mem, n_units(lm))                  # [L, k]
        row = al[:, -1, :]                                                       # [k, L] at the query
        contrib = np.abs(row * u.T)
        shares.append(contrib[:, W0:W1].sum() / max(contrib.sum(), 1e-300))
        weights.append(np.abs(row[:, W0:W1]).sum() / max(np.abs(row).sum(), 1e-300))
    ex = INDUCTION.batch(1, EXAMPLE_LEN, seed=cfg.seed + 3, trigger_pos=EXAMPLE_TRIGGER).tokens[0]   # [64]
    lt = trace(lm, ex, include=("delta", "B", "C")).layers[layer]
    alpha = np.abs(hidden_attention(lt.delta, A, lt.B, lt.C, channels=mem)).mean(0)                 # [64, 64]
    return Attention(contribution_share=float(np.mean(shares)), weight_share=float(np.mean(weights)),
                     example_tokens=ex, example_alpha=alpha)


def measure_checkpoint(path: Path, cfg: Settings, log=print) -> CheckpointResult:
    """Every measurement of the mechanism study on one checkpoint file."""
    t_start = tick = time.time()
    timings = {}

    def lap(stage):
        nonlocal tick
        timings[stage] = time.time() - tick
        tick = time.time()

    lm = load_checkpoint(path).eval()
    task = task_of(lm)
    if task is not INDUCTION:
        raise ValueError(f"{path}: the mechanism study is for induction heads; this checkpoint is "
                         + ("a plain language model (no task)" if task is None else f"a {task.name} model"))
    win = write_windows(cfg, lm.config.d_conv)
    sel, records, deltas = delta_selectivity(lm, cfg, win)
    lap("delta")
    pr, h0 = probes(lm, cfg, win)
    layer = pr.memory_layer
    # the memory channels: the Δ-selective ones of the memory layer. The probe set is a minimal
    # *decodable* subset, but M is stored redundantly, so causal tests need all of them (clamping
    # only the probe set of a trained model changes nothing)
    mem = select_memory_channels(sel.ratio[layer], k=cfg.max_memory_channels, min_ratio=cfg.min_ratio) \
        or list(pr.probe_channels)
    horizon = predicted_horizon(lm, layer, mem, h0[layer], sel.filler_mean[layer])
    lap("probes")
    att = attention(lm, cfg, layer, mem, records, win)
    del records
    lap("attention")
    ivs = causal.interventions(lm, cfg, layer, mem, win)
    freeze = causal.freeze(lm, cfg, layer, mem, win, 2 ** cfg.freeze_log2, seed_offset=6)
    layer1 = causal.layer1_dependence(lm, cfg, layer, mem, win, deltas, sel.filler_mean[layer])
    del deltas
    lap("interventions")
    long = stream.long_stream(lm, cfg, layer, mem)
    decay = stream.decay_prediction(lm, cfg, layer, mem, win, sel.filler_mean[layer], long.distances)
    freeze_h = causal.freeze_at_horizon(lm, cfg, layer, mem, win, long)
    lap("long")
    timings["total"] = time.time() - t_start
    log(f"{path.stem}: done in {timings['total']:.0f} s ({', '.join(f'{k} {v:.0f}' for k, v in timings.items())})")
    return CheckpointResult(name=Path(path).stem, path=str(path), sha256=lm.checkpoint_sha256, task=dict(lm.task),
                            d_conv=lm.config.d_conv, delta=sel, probes=pr, memory_channels=mem, horizon=horizon,
                            attention=att, interventions=ivs, freeze=freeze, freeze_horizon=freeze_h, long=long,
                            layer1=layer1, decay=decay, timings=timings,
                            unit=lm.backbone.layers[layer].mixer.unit)
