"""CPU benchmark of the whole 2-layer model: our torch path vs the reference loop vs HF transformers.

    python -m bench.cpu_model                       # the full table (several minutes)
    python -m bench.cpu_model --lengths 256,4096    # a subset

Each (implementation, task, L) cell runs in a fresh subprocess, so peak RSS (ru_maxrss) is that
cell's alone; the wall time is the best of --repeats runs after one warm-up. Same weights for all
(one seeded MambaLM, saved once and loaded by every subprocess; HF gets the same state dict with the
one embedding rename). Tasks:
    forward     logits for all positions                          (every implementation; "ours" is
                the default CPU backend, the compiled scan; "ours-torch" the eager torch scan)
    norms       forward + per-channel state norms [L, D] per layer (ours: trace(include=state_norm))
    trace       the full trace: Δ, norms, B, C, u, y, residuals, probabilities (ours)
Cells that would take minutes or not fit in memory are skipped and say why.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

TORCH_THREADS = 2
SKIP = {  # (impl, L) -> reason
    ("reference", 1 << 20): "skipped: the loop materialises exp(ΔA) [L, D, N] = 8.6 GB and takes minutes",
    ("ours-torch", 1 << 20): "skipped: ~13 s, measured before the compiled scan (see README)",
    ("hf", 1 << 20): "skipped: HF stores exp(ΔA) and ΔBu as [B, D, L, N] = 8.6 GB each (OOM on 24 GB)",
}


def run_cell(impl: str, task: str, L: int, ckpt: str, repeats: int) -> dict:
    import torch
    torch.set_num_threads(TORCH_THREADS)
    from kernels.cpu_memory import keep_freed_memory
    keep_freed_memory()             # every implementation alike (kernels/cpu_memory.py says why)
    from model import load_checkpoint
    lm = load_checkpoint(ckpt)
    tokens = torch.randint(0, 17, (1, L), generator=torch.Generator().manual_seed(0))
    if impl == "hf":
        import transformers
        from safetensors.torch import load_file
        transformers.logging.set_verbosity_error()
        c = lm.config
        hf = transformers.MambaForCausalLM(transformers.MambaConfig(
            vocab_size=c.vocab_size, hidden_size=c.d_model, state_size=c.d_state, num_hidden_layers=c.n_layer,
            layer_norm_epsilon=c.norm_epsilon, expand=c.expand, conv_kernel=c.d_conv, time_step_rank=c.dt_rank,
            residual_in_fp32=True, tie_word_embeddings=True)).eval()
        sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in load_file(ckpt).items()}
        hf.load_state_dict(sd, strict=False)
        hf.tie_weights()
        fn = lambda: hf(tokens, use_cache=False).logits  # noqa: E731
    elif task == "forward":
        backend = {"reference": "reference", "ours-torch": "torch"}.get(impl, "cpu")
        fn = lambda: lm(tokens, backend=backend)  # noqa: E731
    elif task == "norms":
        fn = lambda: lm.trace(tokens[0], include=("state_norm",))  # noqa: E731
    else:
        fn = lambda: lm.trace(tokens[0])  # noqa: E731
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            fn()
            if i:                     # the first run is the warm-up
                times.append(time.perf_counter() - t0)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "task": task, "L": L, "seconds": min(times), "peak_rss_mb": rss_mb}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="256,4096,65536,1048576")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per cell (best is reported)")
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    ap.add_argument("--cell", nargs=3, metavar=("IMPL", "TASK", "L"), help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        impl, task, L = args.cell
        print(json.dumps(run_cell(impl, task, int(L), args.checkpoint, args.repeats)))
        return

    import torch
    from model import MambaConfig, MambaLM, save_checkpoint
    torch.manual_seed(0)
    tmp = tempfile.mkdtemp()
    ckpt = os.path.join(tmp, "bench.safetensors")
    save_checkpoint(MambaLM(MambaConfig()), ckpt)
    lengths = [int(x) for x in args.lengths.split(",")]
    cells = [("ours", "trace", L) for L in lengths if L <= 1 << 16] + \
            [("ours", "norms", L) for L in lengths] + \
            [(impl, "forward", L) for L in lengths for impl in ("ours", "ours-torch", "reference", "hf")]
    rows = []
    for impl, task, L in cells:
        if (impl, L) in SKIP:
            rows.append({"impl": impl, "task": task, "L": L, "note": SKIP[(impl, L)]})
        else:
            reps = 1 if L >= 1 << 16 else args.repeats
            cmd = [sys.executable, "-m", "bench.cpu_model", "--cell", impl, task, str(L),
                   "--checkpoint", ckpt, "--repeats", str(reps)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                rows.append({"impl": impl, "task": task, "L": L, "note": "failed: " + p.stderr.strip()[-200:]})
            else:
                rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"  {impl:9s} {task:8s} L={L:<8d} " + (f"{r['seconds'] * 1e3:10.1f} ms  "
                  f"{r['peak_rss_mb']:7.0f} MB" if "seconds" in r else r["note"]), file=sys.stderr, flush=True)
    if args.json:
        return
    print("\n| impl | task | L | wall time | µs / token | peak RSS |\n|---|---|---|---|---|---|")
    for r in rows:
        if "seconds" in r:
            print(f"| {r['impl']} | {r['task']} | {r['L']} | {r['seconds'] * 1e3:.1f} ms | "
                  f"{r['seconds'] / r['L'] * 1e6:.2f} | {r['peak_rss_mb']:.0f} MB |")
        else:
            print(f"| {r['impl']} | {r['task']} | {r['L']} | {r['note']} | | |")
    by = {(r["impl"], r["task"], r["L"]): r.get("seconds") for r in rows}
    for L in lengths:
        ours, hf = by.get(("ours", "forward", L)), by.get(("hf", "forward", L))
        if ours and hf:
            print(f"\nL={L}: ours is {hf / ours:.1f}x faster than HF transformers' torch path")


if __name__ == "__main__":
    main()
