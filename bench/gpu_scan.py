"""GPU benchmark of the selective scan: the Triton kernel vs the torch path vs the HBM roofline.

    python -m bench.gpu_scan                  # the table (a few minutes on an H200)
    python -m bench.gpu_scan --quick          # L = 2^12 and 2^16 only
    python -m bench.gpu_scan --sweep          # time block sizes at B=8, L=2^16, D=1536, N=16, norms on
    python -m bench.gpu_scan --sweep --sweep-shape 1,128,16,1048576   # ... at one 2^20-token sequence
    python -m bench.gpu_scan --static         # no GPU needed: ptxas registers / SASS per config (sm_90)

Problems: the induction model's layer (D=128, N=16) and a 130m-sized layer (D=1536, N=16), at
L = 2^12, 2^16, 2^20, with and without the per-channel state norms; B=8 where inputs and outputs fit
in 80% of free GPU memory, else the largest power of two that does (the B column says which), plus
the induction model's single 2^20-token sequence (B=1). fp32 activations unless --dtype says
otherwise; A, D, delta_bias fp32; z and delta_bias given, delta_softplus on, as in model/mamba.py.

Roofline: the bytes the forward must move at least, over --hbm-tbs (4.3 TB/s, H200 HBM3e):
read u, delta, z (B*D*L each) and B, C (B*N*L each) in the activation dtype, A (D*N), D and
delta_bias (D) in fp32; write out (B*D*L, activation dtype), the state norm (B*D*L fp32) when on,
and the last state (B*D*N fp32). B and C are counted once although every channel block rereads them
(from L2). GB/s = those bytes / measured time; "% roofline" = roofline time / measured time.

Times are triton.testing.do_bench medians (CUDA events, L2 flushed before each run). The torch path
(kernels/scan_torch.py, written for CPUs) launches ~30 small kernels per 16-step superblock on a
GPU and is only timed up to --torch-max-l. Run settings and the table go to --out when given.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import time

import torch

PROBLEMS = [("induction", 128, 16), ("130m", 1536, 16)]   # (name, D, N)
LENGTHS = [1 << 12, 1 << 16, 1 << 20]
BATCH = 8
TRAIN_L = 1 << 12   # --train: one layer's forward + backward at B=8


def make_inputs(batch, dim, n, L, dtype, device="cuda", seed=0):
    """Activations as the model produces them, [B, D, L] / [B, N, L] contiguous; fp32 parameters."""
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=device, dtype=torch.float32)  # noqa: E731
    return dict(u=r(batch, dim, L).to(dtype), delta=(r(batch, dim, L) * 0.5).to(dtype),
                A=-(torch.rand(dim, n, generator=g, device=device) * 4 + 0.1),
                B=r(batch, n, L).to(dtype), C=r(batch, n, L).to(dtype), D=r(dim),
                z=r(batch, dim, L).to(dtype), delta_bias=r(dim) * 0.3)


def roofline_bytes(batch, dim, n, L, itemsize, norms):
    """Bytes the forward has to move at least (see the module docstring)."""
    reads = 3 * batch * dim * L * itemsize + 2 * batch * n * L * itemsize + dim * n * 4 + 2 * dim * 4
    writes = batch * dim * L * itemsize + (batch * dim * L * 4 if norms else 0) + batch * dim * n * 4
    return reads + writes


def pick_batch(dim, n, L, itemsize, free_bytes):
    """B=8 if inputs + outputs (+ norms) fit in 80% of free memory, else the largest power of 2."""
    b = BATCH
    while b > 1 and roofline_bytes(b, dim, n, L, itemsize, True) > 0.8 * free_bytes:
        b //= 2
    return b


def bench_ms(fn, rep_ms, grad_to_none=None):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=max(10, rep_ms // 4), rep=rep_ms, grad_to_none=grad_to_none,
                                   return_mode="median")


def run_table(args) -> list[dict]:
    from kernels.scan_torch import selective_scan_torch
    from kernels.scan_triton import launch_config, selective_scan_triton

    dtype = getattr(torch, args.dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    lengths = LENGTHS[:2] if args.quick else LENGTHS
    cases = [(name, d, n, L, None) for name, d, n in PROBLEMS for L in lengths]
    if not args.quick:
        cases.append(("induction", 128, 16, 1 << 20, 1))   # one 2^20-token sequence
    rows = []
    for name, dim, n, L, batch in cases:
        torch.cuda.empty_cache()
        batch = batch or pick_batch(dim, n, L, itemsize, torch.cuda.mem_get_info()[0])
        x = make_inputs(batch, dim, n, L, dtype)
        for norms in (False, True):
            nbytes = roofline_bytes(batch, dim, n, L, itemsize, norms)
            t_roof = nbytes / (args.hbm_tbs * 1e12) * 1e3
            kw = dict(delta_softplus=True, return_last_state=True, return_state_norm=norms)
            providers = [("triton", selective_scan_triton)]
            if L <= args.torch_max_l:
                providers.append(("torch", selective_scan_torch))
            for prov, fn in providers:
                with torch.no_grad():
                    ms = bench_ms(lambda fn=fn, x=x: fn(**x, **kw), args.rep_ms)   # bound now: x is deleted below
                cfg = launch_config(batch, dim, n, x["u"].device) if prov == "triton" else {}
                rows.append(dict(model=name, D=dim, N=n, B=batch, L=L, norms=norms, provider=prov, ms=ms,
                                 gbs=nbytes / ms / 1e6, roofline=100 * t_roof / ms,
                                 config=" ".join(f"{k}={v}" for k, v in cfg.items())))
                print(f"  {name} B={batch} L={_cell(L)} norms={norms} {prov}: {ms:.3f} ms "
                      f"({100 * t_roof / ms:.0f}% of roofline)", file=sys.stderr, flush=True)
        del x
    return rows


def run_training(args) -> list[dict]:
    """One forward + backward through each autograd path (what a training step of one layer pays)."""
    from kernels.scan_torch import selective_scan_torch
    from kernels.scan_triton import selective_scan_triton
    rows = []
    for name, dim, n in PROBLEMS:
        batch, L = BATCH, TRAIN_L
        x = {k: v.requires_grad_() for k, v in make_inputs(batch, dim, n, L, getattr(torch, args.dtype)).items()}
        for prov, fn in (("triton", selective_scan_triton), ("torch", selective_scan_torch)):
            def step():
                out = fn(**x, delta_softplus=True).out
                out.backward(torch.ones_like(out))
            ms = bench_ms(step, args.rep_ms, grad_to_none=list(x.values()))
            rows.append(dict(model=name, D=dim, N=n, B=batch, L=L, provider=prov, ms=ms))
    return rows


def check_against_torch(args):
    """Refuse to time a wrong kernel: Triton vs the torch path on one small GPU problem."""
    from kernels.scan_torch import selective_scan_torch
    from kernels.scan_triton import selective_scan_triton
    x = make_inputs(2, 1536, 16, 3000, torch.float32)
    kw = dict(delta_softplus=True, return_last_state=True, return_state_norm=True)
    with torch.no_grad():
        a, b = selective_scan_triton(**x, **kw), selective_scan_torch(**x, **kw)
    for name in ("out", "last_state", "state_norm"):
        ta, tb = getattr(a, name), getattr(b, name)
        err = ((ta - tb).abs().max() / tb.abs().max()).item()
        if not err < 1e-4:
            raise SystemExit(f"triton {name} differs from the torch path by {err:.2e} (relative); "
                             "run bash bench/gpu_check.sh")


def sweep(args) -> list[dict]:
    """Forward with norms on at --sweep-shape (default the goal problem) for a grid of block sizes."""
    from kernels.scan_triton import _forward
    dtype = getattr(torch, args.dtype)
    batch, dim, n, L = (int(v) for v in args.sweep_shape.split(","))
    x = make_inputs(batch, dim, n, L, dtype)
    args_ = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")] + [None, True, True, False, False]
    t_roof = roofline_bytes(batch, dim, n, L, x["u"].element_size(), True) / (args.hbm_tbs * 1e12) * 1e3
    rows = []
    for bd in (4, 8, 16, 32, 64):
        for nw in (1, 2, 4, 8):
            for bl in (2, 4, 8, 16, 32):
                per_thread = bd * n * bl / (32 * nw)
                if not 4 <= per_thread <= 64:
                    continue
                try:
                    with torch.no_grad():
                        ms = bench_ms(lambda: _forward(*args_, block_d=bd, block_l=bl, num_warps=nw), args.rep_ms)
                except Exception as e:  # e.g. out of resources: report it, go on
                    print(f"  BLOCK_D={bd} BLOCK_L={bl} num_warps={nw}: {type(e).__name__}", file=sys.stderr)
                    continue
                rows.append(dict(BLOCK_D=bd, BLOCK_L=bl, num_warps=nw, per_thread=per_thread, ms=ms,
                                 roofline=100 * t_roof / ms))
                print(f"  BLOCK_D={bd} BLOCK_L={bl} num_warps={nw}: {ms:.3f} ms ({100 * t_roof / ms:.0f}%)",
                      file=sys.stderr, flush=True)
    return sorted(rows, key=lambda r: r["ms"])


def static_report(configs) -> list[dict]:
    """Compile the forward for sm_90 without a GPU (Triton's bundled ptxas / nvdisasm): registers,
    spills, and SASS instructions in the chunk loop per [BL, BN, BD] element a thread owns."""
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.scan_triton import _selective_scan_fwd_kernel as kernel
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    rows = []
    for bd, bn, bl, nw in configs:
        const = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, HAS_H0=True, DELTA_SOFTPLUS=True, STORE_NORM=True,
                     STORE_STATES=False, STORE_CHUNKS=False, NATIVE_SCAN=True, BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=bl)
        sig = {a: "constexpr" if a in const else ("*fp32" if a.endswith("_ptr") else "i32") for a in kernel.arg_names}
        ck = triton.compile(ASTSource(kernel, sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=nw))
        with tempfile.TemporaryDirectory() as tmp:
            ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
            open(ptx, "w").write(ck.asm["ptx"])
            open(cubin, "wb").write(ck.asm["cubin"])
            run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True)  # noqa: E731
            info = run(os.path.join(bindir, "ptxas"), "-v", "--gpu-name=sm_90a", ptx, "-o", os.devnull).stderr
            sass = run(os.path.join(bindir, "nvdisasm"), "-c", cubin).stdout
        lines = sass.splitlines()
        body = []
        for i, line in enumerate(lines):   # the chunk loop: a backward branch and its target label
            m = re.search(r"BRA `\((\.L_x_\d+)\)", line)
            starts = [j for j, k in enumerate(lines) if m and k.startswith(m.group(1) + ":")]
            if starts and starts[0] < i:
                body = [k for k in lines[starts[0]:i + 1] if re.match(r"\s+/\*[0-9a-f]{4}\*/", k)]
                break
        per_thread = bd * bn * bl / (32 * nw)
        rows.append(dict(BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=bl, num_warps=nw,
                         registers=int(re.search(r"Used (\d+) registers", info).group(1)),
                         spill_bytes=int(re.search(r"(\d+) bytes spill stores", info).group(1)),
                         loop_instructions=len(body), per_element=round(len(body) / per_thread, 1)))
    return rows


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, int) and not isinstance(v, bool) and v >= 4096:   # sequence lengths
        return f"2^{v.bit_length() - 1}"
    return str(v)


def markdown(rows: list[dict], cols: dict[str, str]) -> str:
    """rows -> a markdown table; cols maps row keys to column headers."""
    out = ["| " + " | ".join(cols.values()) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="L = 2^12, 2^16 only")
    p.add_argument("--sweep", action="store_true", help="time block sizes at the goal problem")
    p.add_argument("--sweep-shape", default="8,1536,16,65536", help="B,D,N,L for --sweep (induction 2^20: "
                   "1,128,16,1048576)")
    p.add_argument("--static", action="store_true", help="ptxas / SASS report, no GPU needed")
    p.add_argument("--train", action="store_true", help="also time forward+backward at L=2^12")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--hbm-tbs", type=float, default=4.3, help="HBM bandwidth for the roofline, TB/s")
    p.add_argument("--rep-ms", type=int, default=200, help="do_bench time budget per measurement")
    p.add_argument("--torch-max-l", type=int, default=1 << 16, help="longest L to time the torch path at")
    p.add_argument("--out", help="write the table (.md) and the run settings (.json) here")
    args = p.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)   # before kernels is imported: compiled kernels only

    if args.static:
        rows = static_report([(32, 16, 8, 4), (16, 16, 8, 2), (8, 16, 8, 1), (32, 16, 4, 2), (32, 16, 16, 8)])
        text = markdown(rows, {k: k for k in rows[0]})
        print(text)
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu_scan needs a CUDA GPU (use --static for the compile-only report)")
    check_against_torch(args)
    t0 = time.time()
    if args.sweep:
        rows = sweep(args)
        text = markdown(rows, dict(BLOCK_D="BLOCK_D", BLOCK_L="BLOCK_L", num_warps="num_warps",
                                   per_thread="elements / thread", ms="ms", roofline="% roofline"))
    else:
        rows = run_table(args)
        common = dict(model="model", D="D", N="N", B="B", L="L")
        text = markdown(rows, dict(common, norms="state norms", provider="provider", ms="ms", gbs="GB/s",
                                   roofline="% roofline", config="triton config"))
        if args.train:
            train = run_training(args)
            text += "\n\nforward + backward (autograd):\n\n"
            text += markdown(train, dict(common, provider="provider", ms="ms"))
    print(text)
    if args.out:
        settings = dict(vars(args), device=torch.cuda.get_device_name(), torch=torch.__version__,
                        triton=importlib.metadata.version("triton"), seconds=round(time.time() - t0, 1))
        with open(args.out + ".md", "w") as f:
            f.write(text + "\n")
        with open(args.out + ".json", "w") as f:
            json.dump(dict(settings=settings, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
