"""Real model sizes on the CPU: our forward and trace of the 130m configs against HF transformers'
torch path on the same weights, next to the model's own matmul floor (issue #12).

    python -m bench.lm_scale                         # both 130m models, L=512, B=1, 2 threads
    python -m bench.lm_scale --models mamba2 --length 1024 --repeats 5

Weights: HF's own random init at the real configs (bench/hf_interop_real.py types them out),
saved with save_pretrained and loaded by `model.load_checkpoint` from that directory: the same
weights for both. Each time is the best of --repeats after one warm-up, in this one process, side
by side, so ratios hold on a shared machine better than absolute times.
    floor     the model's nn.Linear layers alone (in_proj, x_proj, dt_proj, out_proj and the
              lm_head) applied to inputs of their real shapes: what no scan kernel can go below
    trace     lm.trace(include=(delta, state_norm)): every layer's Δ and state norms, the top-10 and
              p(next) per step (model/trace.py's default at a 50k vocabulary)
    trace_full  the same with full_probs=True: logits and probs [L, V] kept too
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.hf_interop_real import MODELS, SEED, TOKENIZER_VOCAB

THREADS = 2


def best_of(fn, repeats: int) -> float:
    fn()                                                           # warm-up: compiled kernels, caches
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def linear_floor(lm, L: int, repeats: int) -> float:
    """Time of every nn.Linear of lm on a [1, L, in] input (the lm_head once, though tied)."""
    layers = [m for m in lm.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(1, L, m.in_features) for m in layers]

    def go():
        for m, x in zip(layers, xs):
            torch.nn.functional.linear(x, m.weight, m.bias)
    return best_of(go, repeats)


@torch.no_grad()
def bench(name: str, L: int, repeats: int) -> dict:
    import transformers
    from kernels.cpu_memory import keep_freed_memory
    from model import load_checkpoint
    keep_freed_memory()
    transformers.logging.set_verbosity_error()
    cfg_cls, model_cls, values = MODELS[name]
    torch.manual_seed(SEED)
    hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**values)).eval()
    tokens = torch.randint(0, TOKENIZER_VOCAB, (1, L), generator=torch.Generator().manual_seed(SEED))
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(Path(tmp))
        lm = load_checkpoint(tmp)
    row = {"model": name, "L": L, "threads": torch.get_num_threads(), "load_avg": os.getloadavg()[0]}
    row["ours_s"] = best_of(lambda: lm(tokens), repeats)
    row["trace_s"] = best_of(lambda: lm.trace(tokens[0], include=("delta", "state_norm")), repeats)
    row["trace_full_s"] = best_of(lambda: lm.trace(tokens[0], include=("delta", "state_norm"), full_probs=True),
                                  repeats)
    for key, full in (("trace_mb", False), ("trace_full_mb", True)):
        tr = lm.trace(tokens[0], include=("delta", "state_norm"), full_probs=full)
        row[key] = sum(a.nbytes for a in tr.to_tensors().values()) / 2**20
    row["floor_s"] = linear_floor(lm, L, repeats)
    row["hf_s"] = best_of(lambda: hf(tokens, use_cache=False), max(1, repeats // 2))
    row["ours_vs_hf"] = row["hf_s"] / row["ours_s"]
    row["ours_vs_floor"] = row["ours_s"] / row["floor_s"]
    row["trace_vs_forward"] = row["trace_s"] / row["ours_s"]
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="mamba1,mamba2", help="comma-separated: mamba1, mamba2 (the 130m configs)")
    p.add_argument("--length", type=int, default=512, help="tokens L (B = 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell after one warm-up (HF: half)")
    p.add_argument("--threads", type=int, default=THREADS, help="torch threads (a loaded machine measures best at 1)")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [bench(m, args.length, args.repeats) for m in args.models.split(",") if m]
    print("| model | L | ours forward | trace (Δ, norms, top-k) | trace, full probs | trace MB top-k / full | "
          "matmul floor | HF | ours vs HF | ours / floor | trace / forward | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} 130m | {r['L']} | {r['ours_s'] * 1e3:.0f} ms | {r['trace_s'] * 1e3:.0f} ms | "
              f"{r['trace_full_s'] * 1e3:.0f} ms | {r['trace_mb']:.1f} / {r['trace_full_mb']:.1f} | "
              f"{r['floor_s'] * 1e3:.0f} ms | {r['hf_s'] * 1e3:.0f} ms | {r['ours_vs_hf']:.1f}x | "
              f"{r['ours_vs_floor']:.2f}x | {r['trace_vs_forward']:.2f}x | {r['load_avg']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
