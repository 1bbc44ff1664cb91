"""Widen a trained Mamba-1 checkpoint (d_model -> a larger d_model) without changing what it computes.

    python -m training.widen checkpoints/mqar-2layer-d64.safetensors runs/mqar-wide.safetensors --d-model 128
    python -m training.train --task mqar --d-model 128 --init-from runs/mqar-wide.safetensors ...

Why: MQAR's misses at (L, D) = (256, 16) are binding capacity, not decay (checkpoints/README.md), and
Zoology finds a recurrent model's recall grows with its width. Training a wider model from scratch on
two CPU cores takes most of a day (the d_model-64 one took 250 min to leave MQAR's plateaus); a wider
model that starts as the trained one keeps its circuit and gets fresh channels to learn with.

How (Net2Net-style padding; d_inner, dt_rank and the conv follow d_model, d_state stays):
- the old weights fill the leading block of every new weight; the residual stream's new dimensions
  start at zero (embedding columns and every out_proj row into them are 0), so the LM head, tied to
  the embedding, reads the old dimensions only;
- new channels compute from the start (mamba_ssm's init for their in_proj rows, conv, Δ, A, D) but
  reach nothing: their out_proj columns and their x_proj columns (their share of Δ, B, C for every
  channel) are 0, and the old channels' dt_proj ignores the new low-rank Δ inputs;
- RMSNorm averages over d_model: with the new dimensions at 0 the mean square m falls r-fold
  (r = new / old d_model), so the old norm weights are scaled by 1/sqrt(r) and eps is divided by r:
  sqrt(m/r + eps/r) = sqrt(m + eps)/sqrt(r) exactly (eps matters: rarely seen tokens' embeddings
  have m ~ 4e-4; keeping eps moved logits by 8e-4 of their range).
No zero block stays zero: the new channels' outputs get a gradient on the first step, the residual's
new dimensions on the second (through those outputs), the old channels' reading of them on the third
(tests/test_widen.py), so the new width trains. Mamba-2 files are refused (heads would need the same surgery per head).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

import torch

from model import MambaLM, load_checkpoint, save_checkpoint


class WidenError(ValueError):
    pass


def widen(lm: MambaLM, d_model: int, seed: int = 0) -> MambaLM:
    """A MambaLM of width d_model computing what `lm` computes (Mamba-1 only; d_model >= lm's)."""
    old = lm.config
    if old.layer != "Mamba1":
        raise WidenError(f"only Mamba-1 models can be widened (this one is {old.layer})")
    if d_model < old.d_model:
        raise WidenError(f"--d-model {d_model} is narrower than the model's {old.d_model}")
    if not old.tie_embeddings:
        raise WidenError("only models with tied embeddings can be widened")
    torch.manual_seed(seed)
    cfg = replace(old, d_model=d_model, ssm_cfg=dict(old.ssm_cfg), norm_epsilon=old.norm_epsilon * old.d_model / d_model)
    if cfg.dt_rank < old.dt_rank:
        raise WidenError(f"the new dt_rank {cfg.dt_rank} is below the model's {old.dt_rank}")
    new = MambaLM(cfg)
    src, dst = lm.state_dict(), new.state_dict()
    d0, e0, r0, n = old.d_model, old.d_inner, old.dt_rank, old.d_state
    e1, r1 = cfg.d_inner, cfg.dt_rank

    def norm_scale(key):                 # see the module docstring: the mean square over more dims
        w = src[key].double()
        return (w * math.sqrt(d0 / d_model)).to(dst[key].dtype)

    with torch.no_grad():
        emb = dst["backbone.embedding.weight"]                                        # [V, d_model]
        emb.zero_()
        emb[:, :d0] = src["backbone.embedding.weight"]
        dst["backbone.norm_f.weight"][:d0] = norm_scale("backbone.norm_f.weight")
        for i in range(old.n_layer):
            p = f"backbone.layers.{i}."
            m = p + "mixer."
            dst[p + "norm.weight"][:d0] = norm_scale(p + "norm.weight")
            w_in, s_in = dst[m + "in_proj.weight"], src[m + "in_proj.weight"]        # [2E, d_model]: x, z
            w_in[:e0, :d0] = s_in[:e0]
            w_in[e1:e1 + e0, :d0] = s_in[e0:]
            w_in[:e0, d0:] = 0                       # the old channels ignore the new (zero) dims...
            w_in[e1:e1 + e0, d0:] = 0                # ...so that training moves them away from 0 by itself
            for k in ("conv1d.weight", "conv1d.bias", "dt_proj.bias", "A_log", "D"):
                dst[m + k][:e0] = src[m + k]
            xp, sxp = dst[m + "x_proj.weight"], src[m + "x_proj.weight"]             # [R + 2N, E]: dt, B, C
            xp[:, e0:] = 0                           # new channels feed no Δ, B or C
            xp[:r0, :e0] = sxp[:r0]
            xp[r1:r1 + 2 * n, :e0] = sxp[r0:]
            dp = dst[m + "dt_proj.weight"]                                            # [E, R]
            dp[:e0, :r0] = src[m + "dt_proj.weight"]
            dp[:e0, r0:] = 0                         # old channels' Δ ignores the new low-rank inputs
            op = dst[m + "out_proj.weight"]                                           # [d_model, E]
            op.zero_()
            op[:d0, :e0] = src[m + "out_proj.weight"]
    new.load_state_dict(dst)
    return new


def resize_state(lm: MambaLM, d_state: int, seed: int = 0) -> MambaLM:
    """A Mamba-1 like `lm` with N = d_state state dimensions per channel (training/capacity.py's warm
    start). N >= lm's: the same function -- the new dimensions are written (B rows from mamba_ssm's
    init) but never read (C rows 0), so C gets a gradient at once. N < lm's: the first N dimensions
    are kept (the slowest-decaying at mamba_ssm's init, A_n = -n) and the rest dropped: a warm start
    that must re-learn its recall with less state, not the same function."""
    old = lm.config
    if old.layer != "Mamba1":
        raise WidenError(f"only Mamba-1 models can be resized (this one is {old.layer})")
    if d_state < 1:
        raise WidenError(f"d_state must be >= 1, got {d_state}")
    torch.manual_seed(seed)
    new = MambaLM(replace(old, ssm_cfg={**old.ssm_cfg, "d_state": d_state}))
    src, dst = lm.state_dict(), new.state_dict()
    n0, r, k = old.d_state, old.dt_rank, min(old.d_state, d_state)
    with torch.no_grad():
        for key, t in dst.items():
            if key.endswith("mixer.A_log"):                                           # [E, N]
                t[:, :k] = src[key][:, :k]
            elif key.endswith("mixer.x_proj.weight"):                                 # [R + 2N, E]: dt, B, C
                s = src[key]
                t[:r] = s[:r]
                t[r:r + k] = s[r:r + k]                                               # B
                t[r + d_state:] = 0                                                   # C: new dims unread...
                t[r + d_state:r + d_state + k] = s[r + n0:r + n0 + k]                 # ...old ones as they were
            else:
                t.copy_(src[key])
    new.load_state_dict(dst)
    return new


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("src", help="a Mamba-1 checkpoint file")
    ap.add_argument("out", help="the widened checkpoint to write (safetensors)")
    ap.add_argument("--d-model", type=int, required=True, help="the new width")
    ap.add_argument("--seed", type=int, default=0, help="initialises the new channels")
    a = ap.parse_args(argv)
    try:
        lm = load_checkpoint(a.src)
        wide = widen(lm, a.d_model, a.seed)
    except (WidenError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    task = dict(lm.task or {})
    task["widened_from"] = {"file": Path(a.src).name, "sha256": lm.checkpoint_sha256,
                            "d_model": lm.config.d_model, "seed": a.seed}
    save_checkpoint(wide, a.out, task=task)
    print(f"{a.src} (d_model {lm.config.d_model}) -> {a.out} (d_model {a.d_model}, "
          f"{sum(p.numel() for p in wide.parameters()):,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
