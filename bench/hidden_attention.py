"""CPU benchmark of hidden attention's channel mean (analysis/hidden_attention.py, issue #14), against
the plain computation it replaced, in one process on the same traces.

    python -m bench.hidden_attention                  # L = 512 on both shipped checkpoints (~2 min)
    python -m bench.hidden_attention --lengths 128,512,2048 --before-max 512

"before" is the previous implementation, kept here verbatim as the reference: for every channel
and every n, exp(A[d, n] (S_i - S_j)) over the whole [L, L] (L²·N exps per channel). "now" is the
module's: direct exps only inside 16-step time blocks, a matmul with the carried state across them.
The two are timed alternately (best of --repeats each) on one torch thread (what the app gives
each request); "max rel diff" is max |now - before| / max |before|.

Measured (2-vCPU VM shared with two trainings; one thread; best of 2; s). Mamba-1, load average
3.5 -> 6.2 over the run:
      model layer     L   before     now speed-up max rel diff
     mamba1     0   512    41.10   0.505      81x      1.6e-16
     mamba1     1   512    69.63   0.699     100x      3.8e-15
Mamba-2 (its mask was already one exp per entry; now the segment sums run along the contiguous
axis and every pass is in place), load average 5.5:
     mamba2     0   512     0.09   0.051       2x      2.8e-16
     mamba2     1   512     0.14   0.042       3x      3.5e-17
     mamba2     0  2048     3.47   1.562       2x      2.0e-16
     mamba2     1  2048     3.81   1.809       2x      5.3e-17
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from analysis.hidden_attention import _check, layer_A, mean_abs_attention
from model import load_checkpoint, trace
from tasks import INDUCTION

CHECKPOINTS = {"mamba1": "checkpoints/induction-2layer.safetensors",
               "mamba2": "checkpoints/induction-2layer-mamba2.safetensors"}


def before_mean_abs(delta, A, B, C, max_bytes=256 << 20):
    """The previous mean |α̃| over all units: [L, L] fp64 (every exponent over the whole [L, L])."""
    delta = torch.as_tensor(np.asarray(delta), dtype=torch.float64)   # [L, U]
    A = torch.as_tensor(np.asarray(A), dtype=torch.float64)           # [D, N] or [H]
    B = torch.as_tensor(np.asarray(B), dtype=torch.float64)           # [L, N] or [L, G, N]
    C = torch.as_tensor(np.asarray(C), dtype=torch.float64)
    L, U, groups = _check(delta, A, B, C)
    S = torch.cumsum(delta, dim=0)                                    # [L, U]
    tril = torch.ones(L, L, dtype=torch.bool).tril()
    G = max(1, int(max_bytes // (3 * L * L * 8)))
    CB = torch.einsum("ign,jgn->gij", C, B) if groups else None
    acc = torch.zeros(L, L, dtype=torch.float64)
    for g0 in range(0, U, G):
        idx = torch.arange(g0, min(U, g0 + G))
        Sg = S[:, idx].T                                              # [G, L]
        gap = (Sg[:, :, None] - Sg[:, None, :]).clamp_(min=0)         # [G, L, L]
        dj = delta[:, idx].T                                          # [G, L]
        if groups:
            out = CB[idx // (U // groups)] * torch.exp(gap * A[idx][:, None, None]) * dj[:, None, :]
        else:
            out = torch.zeros(len(idx), L, L, dtype=torch.float64)
            for n in range(A.shape[1]):
                w = torch.exp(gap * A[idx, n][:, None, None])         # [G, L, L]
                out.addcmul_(w, C[:, n][None, :, None] * (dj * B[:, n][None, :])[:, None, :])
        out.masked_fill_(~tril, 0.0)
        acc += out.abs().sum(0)
    return (acc / U).numpy()


def best_s(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mamba1,mamba2")
    ap.add_argument("--lengths", default="512")
    ap.add_argument("--layers", default="0,1")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--before-max", type=int, default=512, help="skip the old path above this L (it is L²)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} torch={torch.__version__} load average {os.getloadavg()[0]:.1f}; s, best of "
          f"{args.repeats}, alternating")
    print(f"{'model':>7} {'layer':>5} {'L':>5} {'before':>8} {'now':>7} {'speed-up':>8} {'max rel diff':>12}")
    for name in args.models.split(","):
        lm = load_checkpoint(CHECKPOINTS[name])
        for L in (int(v) for v in args.lengths.split(",")):
            tr = trace(lm, INDUCTION.batch(1, L, seed=0).tokens[0], include=("delta", "B", "C"))
            for layer in (int(v) for v in args.layers.split(",")):
                lt = tr.layers[layer]
                a = (lt.delta, layer_A(lm, layer), lt.B, lt.C)
                now, before, t_now, t_before = None, None, [], []
                for _ in range(args.repeats):                         # alternate: the load hits both alike
                    t, now = best_s(lambda a=a: mean_abs_attention(*a), 1)
                    t_now.append(t)
                    if L <= args.before_max:
                        t, before = best_s(lambda a=a: before_mean_abs(*a), 1)
                        t_before.append(t)
                tn = min(t_now)
                if before is None:
                    print(f"{name:>7} {layer:>5} {L:>5} {'-':>8} {tn:7.3f}", flush=True)
                    continue
                tb = min(t_before)
                diff = np.abs(now - before).max() / np.abs(before).max()
                print(f"{name:>7} {layer:>5} {L:>5} {tb:8.2f} {tn:7.3f} {tb / tn:7.0f}x {diff:12.1e}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
