"""Evaluate an induction-heads checkpoint at many lengths: the Mamba paper's Table 11 (E.1).

    python -m model.eval --checkpoint checkpoints/induction-2layer.safetensors \
        --lengths 64,128,256,512,1024,2048,4096,8192,16384,32768,65536,131072,262144,524288,1048576 \
        --samples 256 --long-samples 16
    python -m model.eval --checkpoint ... --json             # JSON instead of a markdown table
    python -m model.eval --checkpoint ... --memory-channels  # which channels hold the memory, and their Δ

Accuracy = argmax of the logits at the last position equals the memory token, on fresh sequences
drawn with a fixed seed per length (seed + L). Every length runs on the CPU fast path: no grad and
`num_last_tokens=1`, so sequences longer than 8192 tokens stream through the model in chunks and
memory stays O(batch x chunk). Batches hold at most `--tokens-per-batch` tokens per time chunk
(2^17 by default: ~0.5-1 GB).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import load_checkpoint
from .data import induction_batch
from .mamba import STREAM_CHUNK, MambaLM

PAPER_LENGTHS = [2 ** i for i in range(6, 21)]    # Table 11: 2^6 ... 2^20
DEFAULT_TOKENS_PER_BATCH = 1 << 17


@dataclass
class LengthResult:
    length: int
    samples: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples


def batch_size_for(length: int, samples: int, tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH) -> int:
    """Sequences per batch: `tokens_per_batch` tokens per time chunk (long inputs stream in chunks)."""
    return max(1, min(samples, tokens_per_batch // min(length, STREAM_CHUNK)))


@torch.no_grad()
def count_correct(lm: MambaLM, length: int, samples: int, seed: int,
                  tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH, bar: Optional[tqdm] = None) -> int:
    """How many of `samples` fresh sequences (torch.Generator seeded with `seed`) are answered right."""
    batch = batch_size_for(length, samples, tokens_per_batch)
    g = torch.Generator().manual_seed(seed)
    correct = 0
    for s in range(0, samples, batch):
        b = induction_batch(min(batch, samples - s), length, generator=g, device=lm.device)
        logits = lm(b.tokens, num_last_tokens=1)[:, -1, :]                 # [b, V]
        correct += int((logits.argmax(-1) == b.target).sum())
        if bar is not None:
            bar.update(b.tokens.numel())
    return correct


def evaluate(lm: MambaLM, lengths: Sequence[int], samples: int, long_samples: Optional[int] = None,
             long_from: int = 1 << 17, seed: int = 0, tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
             progress: bool = True) -> list[LengthResult]:
    """Accuracy at each length; `long_samples` sequences (default `samples`) from `long_from` on."""
    plan = [(L, samples if long_samples is None or L < long_from else long_samples) for L in lengths]
    for L, n in plan:
        if L < 3 or n < 1:
            raise ValueError(f"length {L} must be >= 3 and samples {n} >= 1")
    was = lm.training
    lm.eval()
    bar = tqdm(total=sum(L * n for L, n in plan), unit="tok", unit_scale=True, disable=not progress,
               dynamic_ncols=True, mininterval=1.0)
    results = []
    for L, n in plan:
        bar.set_postfix(L=L, refresh=False)
        results.append(LengthResult(L, n, count_correct(lm, L, n, seed + L, tokens_per_batch, bar)))
    bar.close()
    lm.train(was)
    return results


def markdown_table(results: Sequence[LengthResult]) -> str:
    rows = ["| L | log2 L | samples | correct | accuracy |", "|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(f"| {r.length} | {math.log2(r.length):g} | {r.samples} | {r.correct} | "
                    f"{100 * r.accuracy:.1f}% |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# diagnosis: which channels hold the memory token, and how fast they forget over filler

@torch.no_grad()
def memory_channels(lm: MambaLM, length: int = 1024, samples: int = 8, seed: int = 7,
                    min_ratio: float = 100.0) -> list[dict]:
    """Channels whose largest Δ in the write window (the memory token and the d_conv - 1 steps
    after it, whose conv still sees the trigger) exceeds `min_ratio` x their mean Δ over the filler
    after that window, per layer. For each: that Δ, the mean filler Δ (the mean, not the median:
    a stored value decays like exp(-|A|·ΣΔ_t) = exp(-L·mean(Δ)·|A|)), min_n |A[d, n]| and the
    forgetting rate mean(Δ_filler)·min|A| per token."""
    b = induction_batch(samples, length, seed=seed, trigger_pos=0)   # memory at 1, filler after
    w = lm.config.d_conv                                             # write window: 1 .. w
    rows = {}
    for i in range(samples):
        tr = lm.trace(b.tokens[i])
        for li, layer in enumerate(tr.layers):
            d_mem = layer.delta[1:w + 1].max(axis=0)                 # [D]
            d_fill = layer.delta[w + 1:-1].mean(axis=0)              # [D]
            rows.setdefault(li, []).append((d_mem, d_fill))
    out = []
    for li, pairs in rows.items():
        d_mem = np.mean([p[0] for p in pairs], axis=0)
        d_fill = np.mean([p[1] for p in pairs], axis=0)
        a_min = (-torch.exp(lm.backbone.layers[li].mixer.A_log.float())).abs().min(-1).values.numpy()
        ratio = d_mem / d_fill
        for d in np.argsort(-ratio):
            if ratio[d] < min_ratio:
                break
            out.append({"layer": li, "channel": int(d), "delta_memory": float(d_mem[d]),
                        "delta_filler": float(d_fill[d]), "ratio": float(ratio[d]),
                        "a_min": float(a_min[d]), "forget_per_token": float(d_fill[d] * a_min[d])})
    return out


def main(argv=None):
    from kernels.cpu_memory import keep_freed_memory
    keep_freed_memory()
    p = argparse.ArgumentParser(description="Induction-heads accuracy per length (Mamba paper Table 11).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--lengths", default=",".join(map(str, PAPER_LENGTHS)),
                   help="comma-separated sequence lengths")
    p.add_argument("--samples", type=int, default=256, help="sequences per length")
    p.add_argument("--long-samples", type=int, default=None,
                   help="sequences per length from --long-from on (default: --samples)")
    p.add_argument("--long-from", type=int, default=1 << 17)
    p.add_argument("--seed", type=int, default=0, help="length L uses generator seed seed + L")
    p.add_argument("--tokens-per-batch", type=int, default=DEFAULT_TOKENS_PER_BATCH)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    p.add_argument("--memory-channels", action="store_true",
                   help="also list the channels that hold the memory token and their filler Δ")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        lengths = [int(v) for v in args.lengths.split(",") if v]
    except ValueError:
        p.error(f"--lengths must be comma-separated integers, got {args.lengths!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_checkpoint(args.checkpoint)
    results = evaluate(lm, lengths, args.samples, args.long_samples, args.long_from, args.seed,
                       args.tokens_per_batch, progress=not args.no_progress)
    chans = memory_channels(lm) if args.memory_channels else None
    if args.json:
        doc = {"checkpoint": args.checkpoint, "sha256": lm.checkpoint_sha256, "seed": args.seed,
               "results": [{"length": r.length, "samples": r.samples, "correct": r.correct,
                            "accuracy": r.accuracy} for r in results]}
        if chans is not None:
            doc["memory_channels"] = chans
        print(json.dumps(doc, indent=2))
        return
    print(markdown_table(results))
    if chans is not None:
        print("\n| layer | channel | Δ write (max) | Δ filler (mean) | ratio | min abs(A) | Δ_filler·min abs(A) |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for c in chans:
            print(f"| {c['layer']} | {c['channel']} | {c['delta_memory']:.3g} | {c['delta_filler']:.3g} | "
                  f"{c['ratio']:.2g} | {c['a_min']:.3g} | {c['forget_per_token']:.2g} |")


if __name__ == "__main__":
    main()
