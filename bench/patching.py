"""CPU benchmark of activation patching (analysis/patching.py), against the way it ran before, in one
process on the same pair of sequences.

    python -m bench.patching                          # L = 256, the three kinds (~3 min on 2 busy cores)
    python -m bench.patching --lengths 64,256 --kinds state

"before": every batch slice ran the corrupted sequence from step 0 (kept here as the reference
loop, on the module's own helpers). "now": `patch_sweep`, each position's rows continuing the corrupted
run's snapshot at that step. The two are timed alternately, best of --repeats, on one torch
thread (what the app gives a request); "max |dp|" is the largest difference of the p(target) grids.

Measured (2-vCPU VM shared with two trainings; s, best of 2):
      kind     L  before     now speed-up  max |dp|     (load 4.4)   (load 6.3: before / now)
     state   256    5.69    2.69     2.1x   5.1e-07                    9.26 / 2.78  3.3x
     delta   256    2.64    1.54     1.7x   2.2e-11                    4.39 / 2.17  2.0x
    output   256    0.89    0.43     2.1x   0.0e+00                    1.47 / 0.69  2.1x
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from analysis import patching
from analysis.compare import task_or_next_token
from model import load_checkpoint, run
from model.interventions import SetDelta, SetOutput, SetState
from tasks import INDUCTION
from tasks.induction import Generator, set_memory_token

MAX_ROWS = 96                 # the previous module's batch rows per run (16 positions x 2 layers x 3 groups)


def _set(kind: str, layer: int, units: list, t: int, values, row: int):
    """The previous module's per-row Set* intervention: the clean value at (layer, t)."""
    if kind == "state":      # h_t (after step t) is the state entering step t + 1
        return SetState(layer, tuple(units), t + 1, value=values[t][units][None], rows=(row,))
    if kind == "delta":
        return SetDelta(layer, tuple(units), t, value=values[t][units][None], rows=(row,))
    return SetOutput(layer, t, value=values[t][None], rows=(row,))


def before_sweep(lm, clean, corrupted, kind, max_rows=MAX_ROWS) -> np.ndarray:
    """The previous loop: p [n_layer, n_groups, T], every slice from step 0."""
    task = task_or_next_token(lm)
    target = patching.target_of(task, clean)
    values, deltas = patching._clean_values(lm, clean, kind)
    names, channels = patching.channel_groups(lm, clean, deltas, ("all",) if kind == "output" else patching.GROUPS)
    pos = patching.positions_for(clean.size, kind, task.positions(clean).first_write, lm.config.d_conv)
    n_layer, G, L = len(values), len(names), clean.size
    cells = [(li, g, k) for k in range(pos.size) for li in range(n_layer) for g in range(G)]
    p = np.full((n_layer, G, pos.size), np.nan)
    src = torch.from_numpy(corrupted)
    for start in range(0, len(cells), max_rows):
        part = cells[start:start + max_rows]
        ivs = [_set(kind, li, channels[li][g], int(pos[k]), values[li], row)
               for row, (li, g, k) in enumerate(part) if kind == "output" or channels[li][g]]
        logits = run(lm, src[None].expand(len(part), L), ivs, num_last_tokens=1).logits[:, -1]
        probs = torch.softmax(logits[:, :lm.config.vocab_size].float(), -1)[:, target].numpy()
        for (li, g, k), pr in zip(part, probs):
            p[li, g, k] = pr
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/induction-2layer.safetensors")
    ap.add_argument("--lengths", default="256")
    ap.add_argument("--kinds", default="state,delta,output")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_checkpoint(args.checkpoint)
    print(f"threads={args.threads} torch={torch.__version__} load average {os.getloadavg()[0]:.1f}; s, best of "
          f"{args.repeats}, alternating")
    print(f"{'kind':>6} {'L':>5} {'before':>7} {'now':>7} {'speed-up':>8} {'max |dp|':>9}")
    for L in (int(v) for v in args.lengths.split(",")):
        clean = INDUCTION.realize(Generator(length=L, seed=3))
        corrupted = set_memory_token(clean, (INDUCTION.positions(clean).targets[0] + 5) % 16)
        for kind in args.kinds.split(","):
            tb, tn = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                old = before_sweep(lm, clean, corrupted, kind)
                tb.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                new = patching.patch_sweep(lm, clean, corrupted, kind=kind).p
                tn.append(time.perf_counter() - t0)
            # patch_sweep also fills empty groups and runs the two unpatched sequences; compare the cells both ran
            both = ~np.isnan(old)
            print(f"{kind:>6} {L:>5} {min(tb):7.2f} {min(tn):7.2f} {min(tb) / min(tn):7.1f}x "
                  f"{np.abs(old[both] - new[both]).max():9.1e}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
