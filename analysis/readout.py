"""What the query reads out of a layer's state far from the write: the written token's term vs the filler's.

    python -m analysis.readout checkpoints/induction-2layer-mamba2.safetensors --layer 0 --seqs 4

ρ (analysis/stream.py) says how much of the state is still the write; a model can keep recalling M
while the filler swamps the state (ρ ≪ 0) if the filler lands where the query does not look. This
measures where the query looks. Sequences [S, M, filler × τ, S] (the long stream's, analysis/stream.py). At the query,
each unit reads its carried state through C_q: y = C_q · h_{q-1} (a Mamba-1 channel: one number; a
Mamba-2 head: P numbers; the query's own input and D·x aside). The same sequence run again with Δ = 0
on the layer's units over S, M and the conv window after M (ClampDelta: no input, no decay there)
leaves h_filler, the state built by the filler alone; the layer's inputs come from the layers below,
which the clamp leaves untouched, so h - h_filler is the write window's term exactly. The table gives,
per τ, the readouts' norms over the chosen units: |y_write|, |y_filler|, their ratio and cosine, and
the model's accuracy at the query. In a layer that M reaches only through the layers below at every
step (not written in the window), |y_write| is 0 and the ratio infinite: the split is for the layer
that holds M.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

from model import load_checkpoint, run
from model.interventions import ClampDelta

from .stream import stream_draws, stream_tokens


@dataclass
class ReadoutRow:
    tau: int
    write: float          # |C_q · h_write| over the units, mean over sequences
    filler: float         # |C_q · h_filler|
    ratio: float          # mean of |y_filler| / |y_write| per sequence (inf: nothing written in the window)
    cosine: float         # mean cosine(y_write, y_filler)
    accuracy: float       # the model's answer at the query is M


def readouts(C: torch.Tensor, h: torch.Tensor, n_groups: int) -> torch.Tensor:
    """C [n, G, N] (Mamba-1: G = 1), h [n, U, ..., N] -> y [n, U * P]: each unit's state read by its
    group's C (Mamba-2 heads h use group h // (U / G), as the scan does)."""
    n, U = h.shape[:2]
    g = torch.arange(U) // (U // n_groups)                                     # [U]
    Cu = C[:, g]                                                               # [n, U, N]
    hu = h.reshape(n, U, -1, h.shape[-1])                                      # [n, U, P, N] (Mamba-1: P = 1)
    return torch.einsum("uan,uapn->uap", Cu.double(), hu.double()).reshape(n, -1)


def readout_split(lm, layer: int, distances, n: int = 4, seed: int = 0, units=None) -> list[ReadoutRow]:
    mixer = lm.backbone.layers[layer].mixer
    U = mixer.n_units
    units = list(range(U)) if units is None else list(units)
    G = getattr(mixer, "ngroups", 1)
    window_end = 1 + lm.config.d_conv                                          # S, M and d_conv - 1 steps after M
    M, filler = stream_draws(n, max(distances), seed)                          # [n], [n, τ_max]
    rows = []
    for d in distances:
        if d < lm.config.d_conv:
            raise ValueError(f"τ = {d} is inside the write window (d_conv {lm.config.d_conv})")
        tokens = stream_tokens(M, filler, d)                                   # [n, d + 3]
        q = tokens.shape[1] - 1
        full = run(lm, tokens, include=("C",), num_last_tokens=1, snapshots=(q - 1,))
        clamp = ClampDelta(layer=layer, channels=units, from_t=0, to_t=window_end)
        bare = run(lm, tokens[:, :q], [clamp], num_last_tokens=1, snapshots=(q - 1,))
        C = full.records[layer]["C"][:, -1].reshape(n, G, -1)                  # [n, G, N] at the query
        y = readouts(C, full.snapshots[q - 1][layer].ssm, G)                   # [n, U * P]
        y_f = readouts(C, bare.snapshots[q - 1][layer].ssm, G)
        per = y.shape[1] // U
        keep = torch.tensor([u * per + p for u in units for p in range(per)])
        y, y_f = y[:, keep], y_f[:, keep]
        y_w = y - y_f
        nw, nf = y_w.norm(dim=1), y_f.norm(dim=1)
        acc = (full.logits[:, -1].argmax(-1).cpu() == torch.from_numpy(M)).double().mean()
        ratio = float((nf / nw).mean()) if bool((nw > 0).all()) else math.inf     # no write term: a layer
        rows.append(ReadoutRow(d, float(nw.mean()), float(nf.mean()), ratio,          # that M reaches from below
                               float(torch.nn.functional.cosine_similarity(y_w, y_f, dim=1).mean()), float(acc)))
    return rows


def markdown(rows: list[ReadoutRow]) -> str:
    out = ["| τ | \\|y_write\\| | \\|y_filler\\| | filler / write | cosine | query accuracy |",
           "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| 2^{int(round(math.log2(r.tau)))} | {r.write:.3g} | {r.filler:.3g} | {r.ratio:.3g} | "
                   f"{r.cosine:.2f} | {r.accuracy:.2f} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--layer", type=int, default=0, help="the layer whose state is read (0 = the first)")
    ap.add_argument("--units", default="", help="comma-separated channels / heads (default: all of the layer)")
    ap.add_argument("--log2", default="8,12,16,20", help="distances τ = 2^k filler steps, comma-separated k")
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    lm = load_checkpoint(a.checkpoint)
    units = [int(u) for u in a.units.split(",") if u] or None
    with torch.no_grad():
        rows = readout_split(lm, a.layer, [2 ** int(k) for k in a.log2.split(",")], a.seqs, a.seed, units)
    print(markdown(rows))


if __name__ == "__main__":
    main()
