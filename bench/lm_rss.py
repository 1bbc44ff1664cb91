"""Peak memory (RSS) of loading a real-size Mamba checkpoint directory and one forward at L tokens (issue #12).

    python -m bench.lm_rss                                   # 130m fp32 and 2.8b bf16 (Mamba-1), L=512
    python -m bench.lm_rss --models 130m --length 1024
    python -m bench.lm_rss --load DIR --dtype bf16           # one measurement (what the driver runs per model)
    python -m bench.lm_rss --models 130m --length 4096 --trace   # the app's view trace instead of lm(tokens)

Each model is measured in a fresh subprocess (the peak RSS of a process only grows: resource.getrusage's
ru_maxrss), which imports torch and our model code (`imported`), loads the directory with
`model.load_checkpoint` (`after load`), then runs lm(tokens [1, L]) under no_grad (`after forward`);
with --trace, lm.trace(tokens, include=(Δ, state norm)) instead, what the app's charts run (the
trace keeps top-k and p(next), not the logits).
The directories are HF-format (config.json + model.safetensors, the keys of transformers'
MambaForCausalLM, built on the meta device for its names and shapes) with random weights in the
stored dtype, written by another subprocess first: HF's own random init of 2.8b parameters takes
minutes on two cores and is not what is measured. Values: A_log = log(1..N) and D = 1 (as HF's
init), the norms 1, dt_proj's bias softplus^-1 of dt in [1e-3, 1e-1], the rest N(0, 0.02).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
SEED = 0
# state-spaces/mamba-2.8b-hf/config.json (transformers' MambaConfig); 130m: bench/hf_interop_real.py
MAMBA_2_8B_HF = dict(hidden_size=2560, num_hidden_layers=64, vocab_size=50280, state_size=16, conv_kernel=4,
                     expand=2, intermediate_size=5120, time_step_rank=160, layer_norm_epsilon=1e-5,
                     use_bias=False, use_conv_bias=True, residual_in_fp32=True, tie_word_embeddings=True,
                     hidden_act="silu")
FORWARD_TIMEOUT_S = 1200        # one model's load + forward, at most (2.8b in bf16 on an AVX2 CPU is slow)


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024          # Linux: KiB


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def configs() -> dict:
    from bench.hf_interop_real import MAMBA_130M_HF
    return {"130m": (MAMBA_130M_HF, "fp32"), "2.8b": (MAMBA_2_8B_HF, "bf16")}


def write_dir(name: str, out: Path, dtype: str) -> None:
    """An HF MambaForCausalLM directory at config `name`, random weights stored in `dtype`."""
    import torch
    import transformers
    from safetensors.torch import save_file
    values = configs()[name][0]
    cfg = transformers.MambaConfig(**values)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in transformers.MambaForCausalLM(cfg).state_dict().items()}
    if cfg.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    g = torch.Generator().manual_seed(SEED)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    tensors = {}
    for k, shape in shapes.items():
        if k.endswith("A_log"):                                            # [D, N]
            t = torch.log(torch.arange(1, shape[-1] + 1, dtype=torch.float32)).expand(shape)
        elif k.endswith(".D") or "norm" in k:
            t = torch.ones(shape)
        elif k.endswith("dt_proj.bias"):                                   # softplus(bias) = dt
            d = torch.exp(torch.rand(shape, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            t = d + torch.log(-torch.expm1(-d))
        else:
            t = torch.randn(shape, generator=g) * 0.02
        tensors[k] = t.to(dt).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.architectures = ["MambaForCausalLM"]                            # what save_pretrained of the model writes
    cfg.save_pretrained(out)


def measure(path: Path, dtype: str, L: int, trace: bool = False) -> None:
    """In this (fresh) process: print one JSON line per stage, so a stage that runs out of time still
    leaves the ones before it."""
    import numpy as np
    import torch

    from model import load_checkpoint
    torch.set_num_threads(THREADS)
    row = {"imported_mb": maxrss_mb()}
    print(json.dumps({"stage": "imported", **row}), flush=True)
    t = time.perf_counter()
    lm = load_checkpoint(path, dtype=dtype)
    row.update(load_s=time.perf_counter() - t, after_load_mb=maxrss_mb(), rss_loaded_mb=rss_mb(),
               params=sum(p.numel() for p in lm.parameters()),
               weights_mb=sum(p.numel() * p.element_size() for p in lm.parameters()) / 2**20)
    print(json.dumps({"stage": "load", **row}), flush=True)
    tokens = torch.randint(0, 50277, (1, L), generator=torch.Generator().manual_seed(SEED))
    t = time.perf_counter()
    if trace:
        tr = lm.trace(tokens[0], include=("delta", "state_norm"))
        row.update(forward_s=time.perf_counter() - t, after_forward_mb=maxrss_mb(),
                   trace_mb=sum(a.nbytes for a in tr.to_tensors().values()) / 2**20,
                   finite=bool(np.isfinite(tr.p_next[:-1]).all()))
        print(json.dumps({"stage": "forward", **row}), flush=True)
        return
    with torch.no_grad():
        logits = lm(tokens)
    row.update(forward_s=time.perf_counter() - t, after_forward_mb=maxrss_mb(), logits_mb=logits.nbytes / 2**20,
               finite=bool(torch.isfinite(logits).all()))
    print(json.dumps({"stage": "forward", **row}), flush=True)


def run_one(name: str, L: int, tmp: Path, trace: bool = False) -> dict:
    _, dtype = configs()[name]
    d = tmp / name
    t = time.perf_counter()
    if (d / "model.safetensors").exists():       # another length of the same model: written once
        row = {"model": name, "dtype": dtype, "L": L, "write_s": 0.0, "trace": trace,
               "file_mb": (d / "model.safetensors").stat().st_size / 2**20, "load_avg_before": os.getloadavg()[0]}
        return _measure_row(row, d, dtype, L, trace)
    subprocess.run([sys.executable, "-m", "bench.lm_rss", "--write", str(d), "--config", name, "--dtype", dtype],
                   check=True)
    row = {"model": name, "dtype": dtype, "L": L, "write_s": time.perf_counter() - t,
           "file_mb": (d / "model.safetensors").stat().st_size / 2**20, "load_avg_before": os.getloadavg()[0],
           "trace": trace}
    return _measure_row(row, d, dtype, L, trace)


def _measure_row(row: dict, d: Path, dtype: str, L: int, trace: bool) -> dict:
    try:
        done = subprocess.run([sys.executable, "-m", "bench.lm_rss", "--load", str(d), "--dtype", dtype,
                               "--length", str(L), *(["--trace"] if trace else [])], capture_output=True, text=True,
                              timeout=FORWARD_TIMEOUT_S, check=False)
        out = done.stdout
        if done.returncode:
            row["error"] = done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else f"rc {done.returncode}"
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        row["timed_out_s"] = FORWARD_TIMEOUT_S
    for line in out.splitlines():
        if line.startswith("{"):
            stage = json.loads(line)
            row.update({k: v for k, v in stage.items() if k != "stage"}, stage=stage["stage"])
    row["load_avg_after"] = os.getloadavg()[0]
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="130m,2.8b", help="comma-separated: 130m (fp32), 2.8b (bf16)")
    p.add_argument("--length", default="512", help="tokens; comma-separated for several runs of each model")
    p.add_argument("--trace", action="store_true", help="measure lm.trace (Δ, state norm) instead of lm(tokens)")
    p.add_argument("--json", default="", help="also write the rows here")
    p.add_argument("--write", default="", help=argparse.SUPPRESS)        # the subprocesses' modes
    p.add_argument("--config", default="", help=argparse.SUPPRESS)
    p.add_argument("--load", default="", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.write:
        return write_dir(args.config, Path(args.write), args.dtype)
    if args.load:
        return measure(Path(args.load), args.dtype, int(args.length), args.trace)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            for L in [int(x) for x in args.length.split(",")]:
                rows.append(run_one(name, L, Path(tmp), args.trace))
                print(json.dumps(rows[-1]), flush=True)
            (Path(tmp) / name / "model.safetensors").unlink()
    print("| model | weights | L | file MB | imported MB | peak after load MB | peak after forward MB | load s | "
          "forward s | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def f(k, spec=".0f", r=r):
            return format(r[k], spec) if k in r else "—"
        what = f"{r['model']} trace" if r.get("trace") else r["model"]
        print(f"| Mamba-1 {what} | {r['dtype']} | {r['L']} | {f('file_mb')} | {f('imported_mb')} | "
              f"{f('after_load_mb')} | {f('after_forward_mb')} | {f('load_s', '.1f')} | {f('forward_s', '.1f')} | "
              f"{r['load_avg_before']:.1f}–{r['load_avg_after']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
