"""CPU benchmark of the Mamba-2 (SSD) scan backends: the compiled sequential forward vs the chunked torch path.

    python -m bench.ssd_scan                 # the table below, forward only, no grad (~2 min)
    python -m bench.ssd_scan --quick         # two small shapes (what bench/gpu_check.sh runs)
    python -m bench.ssd_scan --device cuda   # the same shapes on the GPU: torch vs triton

Shapes are model-like (b, l, h, p, n, g): Mamba-2's head dim p = 64 and d_state n = 128 at 130m
(h = 24 heads, one group), and smaller heads for the small models this repo trains (the first row
is bench/cpu_model.py's model). Each cell is the best of --repeats calls after one warm-up, with
dt_bias + softplus, D and the z gate as the Mamba2 module passes them on the CPU (it gates in the
scan there; its norm follows); "cpu+norm" also returns the per-head state norms (what a trace asks
for). "Gupd/s" is state-element updates per second, b l h p n / time: the sequential scan's unit of
work. The torch path runs at chunk sizes 64 and 256 (mamba_ssm's default) since its cost depends on
it; the compiled scan's does not.

Measured (2-core AMD EPYC Zen 3, AVX2, --threads 1, best of 5, load average ~1 (a training ran
beside it); ms):
     b     l   h   p    n  g    cpu   cpu+norm   torch/T=64  torch/T=256   cpu, before
     1  4096   8  16   16  1    1.4      1.8          34          181         15.2
     1  4096   8  64   64  1   13.4     17.6          98          255         53.9
     1  4096  24  16  128  1   20.4     34.6         265         1177         74.6
     1  4096  24  64  128  1   79.6     98.0         467         1227          220
     1   512  24  64  128  1   11.7     15.2          45          114         23.1
"cpu, before": the previous kernel (one head's whole sequence at a time, one step per pass, Δ
discretised in torch, a scalar exp per gate), timed alternately with this one in one process on the
same inputs (this one there: 2.3, 15.9, 19.8, 85, 11.5 ms: 2.0-6.7x faster).
"""
from __future__ import annotations

import argparse
import time

SHAPES = [  # (b, l, h, p, n, g)
    (1, 4096, 8, 16, 16, 1),
    (1, 4096, 8, 64, 64, 1),
    (1, 4096, 24, 16, 128, 1),
    (1, 4096, 24, 64, 128, 1),
    (1, 512, 24, 64, 128, 1),      # Mamba-2 130m: d_model 768, expand 2, headdim 64, d_state 128
]
QUICK = [(1, 512, 8, 16, 16, 1), (1, 512, 24, 64, 128, 1)]


def inputs(b, l, h, p, n, g, device):
    import torch
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen).to(device)  # noqa: E731
    return dict(x=r(b, l, h, p), dt=r(b, l, h) * 0.5, A=-torch.rand(h, generator=gen).to(device) * 8 - 1,
                B=r(b, l, g, n), C=r(b, l, g, n), D=r(h), dt_bias=r(h) * 0.3, z=r(b, l, h, p))


def best_ms(fn, repeats, sync):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads on the CPU")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="two small shapes only")
    args = ap.parse_args()
    import torch
    from kernels import mamba_chunk_scan
    from kernels.cpu_memory import keep_freed_memory
    keep_freed_memory()             # as bench/cpu_model.py: every backend alike (cpu_memory.py says why)
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    cells = ([("cpu", 256, False), ("cpu", 256, True), ("torch", 64, False), ("torch", 256, False)]
             if args.device == "cpu" else [("triton", 256, False), ("torch", 256, False)])
    head = "  ".join(f"{(f'{be}/T={T}' if be == 'torch' else be) + ('+norm' if norm else ''):>17}"
                     for be, T, norm in cells)
    print(f"device={args.device} threads={args.threads} torch={torch.__version__}; ms (Gupd/s), forward, no grad")
    print(f"{'b':>2} {'l':>5} {'h':>3} {'p':>3} {'n':>4} {'g':>2}  {head}")
    for shape in QUICK if args.quick else SHAPES:
        b, l, h, p, n, g = shape
        x = inputs(*shape, args.device)
        row = []
        with torch.no_grad():
            for backend, T, norm in cells:
                call = lambda x=x, T=T, backend=backend, norm=norm: mamba_chunk_scan(  # noqa: E731
                    **x, chunk_size=T, dt_softplus=True, return_state_norm=norm, backend=backend)
                ms = best_ms(call, args.repeats, sync)
                row.append(f"{ms:8.2f} ({b * l * h * p * n / ms / 1e6:5.2f})")
        print(f"{b:>2} {l:>5} {h:>3} {p:>3} {n:>4} {g:>2}  " + "  ".join(f"{c:>17}" for c in row), flush=True)


if __name__ == "__main__":
    main()
