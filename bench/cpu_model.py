"""CPU benchmark of the whole 2-layer model, Mamba-1 and Mamba-2: our paths vs the reference loop vs HF transformers.

    python -m bench.cpu_model                                  # the full table, both models (many minutes)
    python -m bench.cpu_model --models mamba2 --lengths 4096   # a subset
    python -m bench.cpu_model --models mamba2 --lengths 4096,1048576 --threads 1   # issue #11's two targets
    python -m bench.cpu_model --models mamba2 --lengths 4096 --tasks pair --chunk-size 256

Each (model, implementation, task, L) cell runs in a fresh subprocess, so peak RSS (ru_maxrss) is that
cell's alone; the wall time is the best of --repeats runs after one warm-up, with the process's CPU
time of that run beside it (wall >> CPU: the process waited for a core) and the 1-minute load
average when the cell started. Same weights for all (one seeded MambaLM per model, saved once and
loaded by every subprocess; HF gets the same state dict with the one embedding rename).
Models (same size: 2 layers, d_model 64, d_state 16, d_inner 128):
    mamba1   MambaConfig(): 128 channels                         vs transformers.MambaForCausalLM
    mamba2   ssm_cfg Mamba2, headdim 16: 8 heads of 16 channels  vs transformers.Mamba2ForCausalLM
             (chunk_size --chunk-size, 32 by default: the trained checkpoint's; it changes HF's cost,
             not ours, and not the function)
Tasks:
    forward     logits for all positions                          (every implementation; "ours" is
                the default CPU backend, the compiled scan; "ours-torch" the eager torch scan)
    norms       forward + per-unit state norms [L, U] per layer (ours: trace(include=state_norm))
    trace       the full trace: Δ, norms, B, C, u, y, residuals, probabilities (ours)
    pair        ours and HF's forward timed alternately in one process (ours, HF, ours, HF, ...): the
                ratio measured side by side, under the same load (the separate cells may meet another);
                also the time inside each model's nn.Linear layers (the same matmuls in both), and HF's
                time over ours in them: the ratio no faster scan, conv or norm could exceed
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
MODELS = ("mamba1", "mamba2")
SKIP = {  # (model, impl, L) -> reason
    ("mamba1", "reference", 1 << 20): "skipped: the loop materialises exp(ΔA) [L, D, N] = 8.6 GB and takes minutes",
    ("mamba1", "ours-torch", 1 << 20): "skipped: ~13 s, measured before the compiled scan (see README)",
    ("mamba1", "hf", 1 << 20): "skipped: HF stores exp(ΔA) and ΔBu as [B, D, L, N] = 8.6 GB each (OOM on 24 GB)",
    ("mamba2", "reference", 1 << 16): "skipped: a Python loop over 2^16 steps per layer (minutes)",
    ("mamba2", "reference", 1 << 20): "skipped: a Python loop over 2^20 steps per layer (hours)",
    ("mamba2", "ours-torch", 1 << 20): "skipped: the chunked torch scan, ~3x the compiled one (see --lengths 65536)",
    ("mamba2", "hf", 1 << 20): "skipped: HF's chunked path holds [B, L/chunk, chunk, chunk, H, P] products "
                               "(17 GB at chunk 32)",
}


def model_config(name: str, chunk_size: int):
    from model import MambaConfig
    if name == "mamba1":
        return MambaConfig()
    return MambaConfig(ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16, "chunk_size": chunk_size})


def hf_model(lm, ckpt: str):
    """HF transformers' LM with our checkpoint's weights (its torch path on CPU)."""
    import transformers
    from safetensors.torch import load_file
    transformers.logging.set_verbosity_error()
    c = lm.config
    if c.layer == "Mamba1":
        cfg = transformers.MambaConfig(
            vocab_size=c.vocab_size, hidden_size=c.d_model, state_size=c.d_state, num_hidden_layers=c.n_layer,
            layer_norm_epsilon=c.norm_epsilon, expand=c.expand, conv_kernel=c.d_conv, time_step_rank=c.dt_rank,
            residual_in_fp32=True, tie_word_embeddings=True)
        hf = transformers.MambaForCausalLM(cfg)
    else:
        cfg = transformers.Mamba2Config(
            vocab_size=c.padded_vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layer, state_size=c.d_state,
            conv_kernel=c.d_conv, expand=c.expand, head_dim=c.headdim, num_heads=c.nheads, n_groups=c.ngroups,
            chunk_size=c.chunk_size, layer_norm_epsilon=c.norm_epsilon, time_step_limit=c.dt_limit, use_bias=False,
            use_conv_bias=True, residual_in_fp32=c.residual_in_fp32, tie_word_embeddings=True)
        hf = transformers.Mamba2ForCausalLM(cfg)
    sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in load_file(ckpt).items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"HF model does not take our weights: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def timed(fn, repeats: int) -> tuple:
    """(best wall seconds, that run's process CPU seconds) over `repeats` runs after one warm-up."""
    best = (float("inf"), 0.0)
    for i in range(repeats + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        w, c = time.perf_counter() - w0, time.process_time() - c0
        if i and w < best[0]:                       # the first run is the warm-up
            best = (w, c)
    return best


def linear_seconds(model, fn, repeats: int = 2) -> float:
    """Seconds spent inside the model's nn.Linear modules during fn(), the least over `repeats`
    runs (forward hooks; the hooks' own cost is outside the timed spans)."""
    import torch
    spans, t0 = [], {}

    def pre(m, i):
        t0[id(m)] = time.perf_counter()

    def post(m, i, o):
        spans.append(time.perf_counter() - t0[id(m)])

    hooks = [h for m in model.modules() if isinstance(m, torch.nn.Linear)
             for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    best = float("inf")
    try:
        for _ in range(repeats):
            spans.clear()
            fn()
            best = min(best, sum(spans))
    finally:
        for h in hooks:
            h.remove()
    return best


def run_cell(model: str, impl: str, task: str, L: int, ckpt: str, repeats: int, threads: int) -> dict:
    load = os.getloadavg()[0]
    import torch
    torch.set_num_threads(threads)
    from kernels.cpu_memory import keep_freed_memory
    keep_freed_memory()             # every implementation alike (kernels/cpu_memory.py says why)
    from model import load_checkpoint
    lm = load_checkpoint(ckpt)
    tokens = torch.randint(0, 17, (1, L), generator=torch.Generator().manual_seed(0))
    row = {"model": model, "impl": impl, "task": task, "L": L, "threads": threads, "load": load}
    with torch.no_grad():
        if task == "pair":          # ours and HF alternately, the best of each
            hf = hf_model(lm, ckpt)
            ours_fn, hf_fn = (lambda: lm(tokens)), (lambda: hf(tokens, use_cache=False).logits)
            ours_fn(), hf_fn()                                    # warm-up
            ours, theirs = [], []
            for _ in range(max(repeats, 2)):
                for fn, out in ((ours_fn, ours), (hf_fn, theirs)):
                    t0 = time.perf_counter()
                    fn()
                    out.append(time.perf_counter() - t0)
            row.update(seconds=min(ours), hf_seconds=min(theirs), ratio=min(theirs) / min(ours))
            # the linear layers (in_proj, out_proj, lm_head: the same matmuls in both) bound the ratio:
            # HF's time over our linear layers' alone is the most any scan, conv or norm work could give
            lin, hf_lin = linear_seconds(lm, ours_fn), linear_seconds(hf, hf_fn)
            row.update(linear_seconds=lin, hf_linear_seconds=hf_lin, ceiling=min(theirs) / lin)
        else:
            if impl == "hf":
                hf = hf_model(lm, ckpt)
                fn = lambda: hf(tokens, use_cache=False).logits  # noqa: E731
            elif task == "forward":
                backend = {"reference": "reference", "ours-torch": "torch"}.get(impl, "cpu")
                fn = lambda: lm(tokens, backend=backend)  # noqa: E731
            elif task == "norms":
                fn = lambda: lm.trace(tokens[0], include=("state_norm",))  # noqa: E731
            else:
                fn = lambda: lm.trace(tokens[0])  # noqa: E731
            row["seconds"], row["cpu_seconds"] = timed(fn, repeats)
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def cells_for(model: str, lengths: list) -> list:
    return ([(model, "ours", "trace", L) for L in lengths if L <= 1 << 16]
            + [(model, "ours", "norms", L) for L in lengths]
            + [(model, impl, "forward", L) for L in lengths for impl in ("ours", "ours-torch", "reference", "hf")]
            + [(model, "ours+hf", "pair", L) for L in lengths if (model, "hf", L) not in SKIP])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: mamba1, mamba2")
    ap.add_argument("--lengths", default="256,4096,65536,1048576")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per cell (best is reported)")
    ap.add_argument("--threads", type=int, default=TORCH_THREADS,
                    help="torch threads per cell (on a machine other jobs load, 1 is the honest choice)")
    ap.add_argument("--chunk-size", type=int, default=32, help="Mamba-2 SSD chunk size (HF's cost depends on it)")
    ap.add_argument("--tasks", default="trace,norms,forward,pair", help="comma-separated subset of the tasks")
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    ap.add_argument("--cell", nargs=4, metavar=("MODEL", "IMPL", "TASK", "L"), help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        model, impl, task, L = args.cell
        print(json.dumps(run_cell(model, impl, task, int(L), args.checkpoint, args.repeats, args.threads)))
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        ap.error(f"unknown model {bad[0]!r}; choose from {', '.join(MODELS)}")

    import torch
    from model import MambaLM, save_checkpoint
    tmp = tempfile.mkdtemp()
    ckpts = {}
    for m in models:
        torch.manual_seed(0)
        ckpts[m] = os.path.join(tmp, f"bench-{m}.safetensors")
        save_checkpoint(MambaLM(model_config(m, args.chunk_size)), ckpts[m])
    lengths = [int(x) for x in args.lengths.split(",")]
    load0 = os.getloadavg()
    rows = []
    tasks = {t.strip() for t in args.tasks.split(",")}
    for model, impl, task, L in [c for m in models for c in cells_for(m, lengths) if c[2] in tasks]:
        if (model, impl, L) in SKIP:
            rows.append({"model": model, "impl": impl, "task": task, "L": L, "note": SKIP[(model, impl, L)]})
        else:
            reps = 1 if L >= 1 << 16 else args.repeats
            cmd = [sys.executable, "-m", "bench.cpu_model", "--cell", model, impl, task, str(L),
                   "--checkpoint", ckpts[model], "--repeats", str(reps), "--threads", str(args.threads)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                rows.append({"model": model, "impl": impl, "task": task, "L": L,
                             "note": "failed: " + p.stderr.strip()[-200:]})
            else:
                rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"  {model} {impl:9s} {task:8s} L={L:<8d} " + (f"{r['seconds'] * 1e3:10.1f} ms  "
                  f"{r.get('peak_rss_mb', 0):7.0f} MB  load {r['load']:.2f}" if "seconds" in r else r["note"]),
                  file=sys.stderr, flush=True)
    if args.json:
        return
    load1 = os.getloadavg()
    print(f"\n{args.threads} torch thread(s), {os.cpu_count()} CPUs; load average (1/5/15 min) "
          f"{'/'.join(f'{x:.2f}' for x in load0)} at the start, {'/'.join(f'{x:.2f}' for x in load1)} at the end; "
          f"Mamba-2 chunk_size {args.chunk_size}")
    print("\n| model | impl | task | L | wall time | CPU time | µs / token | peak RSS | load (1 min) |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "ratio" in r:
            print(f"| {r['model']} | ours vs HF, alternating | forward | {r['L']} | {r['seconds'] * 1e3:.1f} vs "
                  f"{r['hf_seconds'] * 1e3:.1f} ms: **{r['ratio']:.1f}×** (linear layers "
                  f"{r['linear_seconds'] * 1e3:.1f} vs {r['hf_linear_seconds'] * 1e3:.1f} ms: at most "
                  f"{r['ceiling']:.1f}×) | | | "
                  f"{r['peak_rss_mb']:.0f} MB | {r['load']:.2f} |")
        elif "seconds" in r:
            print(f"| {r['model']} | {r['impl']} | {r['task']} | {r['L']} | {r['seconds'] * 1e3:.1f} ms | "
                  f"{r['cpu_seconds'] * 1e3:.1f} ms | {r['seconds'] / r['L'] * 1e6:.2f} | {r['peak_rss_mb']:.0f} MB | "
                  f"{r['load']:.2f} |")
        else:
            print(f"| {r['model']} | {r['impl']} | {r['task']} | {r['L']} | {r['note']} | | | | |")
    by = {(r["model"], r["impl"], r["task"], r["L"]): r.get("seconds") for r in rows}
    for m in models:
        for L in lengths:
            ours, hf = by.get((m, "ours", "forward", L)), by.get((m, "hf", "forward", L))
            if ours and hf:
                print(f"\n{m} L={L}: ours is {hf / ours:.1f}x faster than HF transformers' torch path (separate cells)")


if __name__ == "__main__":
    main()
