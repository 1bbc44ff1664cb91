"""The Triton scan's own behaviour (the shared backend tests are in test_scan.py): its two scan
flavours, low precision, strided model layouts, masked loads and launch sizes.

Without CUDA, tests/conftest.py sets TRITON_INTERPRET=1 before `kernels` is imported, so these run
the kernels in Triton's numpy interpreter (slow per program and chunk, hence the small shapes; the
interpreter uses 32-step chunks and 32-channel blocks, so L=129 crosses four chunk boundaries and
D=80 ends in a part-filled block). On a GPU (bench/gpu_check.sh) the same tests run the compiled
kernels with their GPU block sizes.
"""
import pytest
import torch

from kernels import selective_scan
from kernels import scan_triton
from tests.conftest import make_scan_inputs, rel

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def inputs(batch, dim, n, L, dtype=torch.float32, requires_grad=False, seed=0):
    """make_scan_inputs on DEVICE; low-precision dtypes only for the activations (u, delta, z, B, C),
    as in a model whose parameters stay fp32."""
    x = make_scan_inputs(batch, dim, n, L, seed=seed)
    low = ("u", "delta", "z", "B", "C")
    x = {k: v.to(DEVICE, dtype if k in low else torch.float32) for k, v in x.items()}
    return {k: v.requires_grad_(requires_grad) for k, v in x.items()}


def as_double(x):
    """Leaf float64 copies: the reference in float64 is the exact answer to compare against."""
    return {k: v.detach().double().requires_grad_(v.requires_grad) for k, v in x.items()}


def grads(x, **kw):
    """Gradients of a fixed random functional of (out, last_state) w.r.t. every input in x."""
    res = selective_scan(**x, delta_softplus=kw.pop("delta_softplus", True), return_last_state=True, **kw)
    g = torch.Generator().manual_seed(1)
    g_out = torch.randn(res[0].shape, generator=g, dtype=torch.float64).to(DEVICE)
    g_last = torch.randn(res[1].shape, generator=g, dtype=torch.float64).to(DEVICE)
    loss = (res[0].double() * g_out).sum() + (res[1].double() * g_last).sum()
    return dict(zip(x, torch.autograd.grad(loss, list(x.values()))))


SHAPES = [  # (batch, D, N, L): L=1; batch 3, D=80 (part-filled block), L=129 (5 chunks); small N
    (1, 5, 4, 1), (3, 80, 16, 129), (2, 7, 16, 37),
]


def test_native_scan_agrees_with_gather_scan():
    """The GPU path (tl.associative_scan) and the interpreter's path (gather doubling) give the same
    forward and backward; 8-step chunks so a tiny input crosses chunk boundaries in both."""
    x = inputs(1, 3, 4, 21)
    args = [x[k] for k in NAMES]
    runs = {}
    for native in (True, False):
        out, last, norm, _, chunks = scan_triton._forward(*args, True, True, False, True, block_l=8,
                                                          native_scan=native)
        g_out = torch.linspace(-1, 1, out.numel(), device=DEVICE).view_as(out)
        g_last = torch.linspace(1, 2, last.numel(), device=DEVICE).view_as(last)
        g = scan_triton._backward(*args[:8], chunks, True, g_out, g_last, 8, native_scan=native)
        runs[native] = (out, last, norm, *g)
    for a, b in zip(runs[True], runs[False]):
        assert rel(a, b) < 1e-6
    ref = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="reference")
    assert rel(runs[True][0], ref[0]) < 1e-5 and rel(runs[True][1], ref[1]) < 1e-5


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_low_precision_inputs(dtype, tol):
    """fp16/bf16 activations: upcast after the load, fp32 state, `out` back in the input dtype. The
    reference sees the same rounded inputs, so they differ by about one output ulp (2^-10, 2^-7)."""
    x = inputs(2, 40, 16, 50, dtype=dtype, requires_grad=True)
    ref = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="reference")
    out = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="triton")
    assert out[0].dtype == dtype and out[1].dtype == torch.float32
    assert rel(out[0], ref[0]) < tol
    assert rel(out[1], ref[1]) < 1e-5
    g_ref = grads(x, backend="reference")
    g_ours = grads(x, backend="triton")
    for name in NAMES:
        assert g_ours[name].dtype == x[name].dtype
        assert rel(g_ours[name], g_ref[name]) < tol, name


def test_inputs_laid_out_like_the_model():
    """model/mamba.py passes transposed views: delta and z with the channel axis contiguous, B and C
    split from a [B, L, R+2N] projection. Strides go to the kernel as they are, no copies."""
    b, d, n, L, r = 2, 10, 8, 40, 3
    g = torch.Generator().manual_seed(0)
    xz = torch.randn(b, L, 2 * d, generator=g).to(DEVICE).transpose(1, 2)         # [B, 2D, L]
    u, z = xz.chunk(2, dim=1)
    x_dbl = torch.randn(b, L, r + 2 * n, generator=g).to(DEVICE)
    _, Bm, Cm = torch.split(x_dbl, [r, n, n], dim=-1)
    delta = torch.randn(b, L, d, generator=g).to(DEVICE).transpose(1, 2)          # [B, D, L]
    x = dict(u=u, delta=delta, A=-torch.rand(d, n, generator=g).to(DEVICE) - 0.5, B=Bm.transpose(1, 2),
             C=Cm.transpose(1, 2), D=torch.randn(d, generator=g).to(DEVICE), z=z,
             delta_bias=torch.randn(d, generator=g).to(DEVICE))
    assert x["delta"].stride(1) == 1 and x["B"].stride(2) == r + 2 * n
    x = {k: v.detach().requires_grad_() for k, v in x.items()}
    kw = dict(delta_softplus=True, return_last_state=True)
    ref, out = selective_scan(**x, backend="reference", **kw), selective_scan(**x, backend="triton", **kw)
    assert rel(out[0], ref[0]) < 1e-5 and rel(out[1], ref[1]) < 1e-5
    g_ref, g_ours = grads(x, backend="reference"), grads(x, backend="triton")
    for name in x:
        assert rel(g_ours[name], g_ref[name]) < 1e-5, name


def _nan_guarded(t: torch.Tensor) -> torch.Tensor:
    """t as a view into a NaN-filled buffer one element larger on every axis (and shifted by one), so
    a load outside the tensor -- past a row, past the end, into padding -- reads NaN."""
    big = torch.full([s + 2 for s in t.shape], float("nan"), device=t.device, dtype=t.dtype)
    view = big[tuple(slice(1, 1 + s) for s in t.shape)]
    view.copy_(t)
    return view


def _nan_tailed(t: torch.Tensor) -> torch.Tensor:
    """t contiguous, followed in memory by NaNs (for the tensors the launcher makes contiguous)."""
    flat = torch.full((t.numel() + 64,), float("nan"), device=t.device, dtype=t.dtype)
    flat[: t.numel()] = t.reshape(-1)
    return flat[: t.numel()].view(t.shape)


def test_no_load_outside_the_inputs():
    """Every input sits between NaNs: a load that is not masked (a padded channel, state or step)
    turns the result into NaN, where it would otherwise pass silently in the interpreter."""
    x = inputs(2, 40, 12, 45)   # D=40 and N=12 pad to 64 / 16 on GPU, to 64 / 16 in the interpreter
    guarded = {k: (_nan_guarded(v) if v.dim() == 3 else _nan_tailed(v)) for k, v in x.items()}
    assert not guarded["u"].is_contiguous()
    kw = dict(delta_softplus=True, return_last_state=True)
    ref = selective_scan(**x, backend="reference", **kw)
    with torch.no_grad():
        out = selective_scan(**guarded, backend="triton", return_state_norm=True, return_states=True, **kw)
    assert rel(out.out, ref[0]) < 1e-5 and rel(out.last_state, ref[1]) < 1e-5
    assert torch.isfinite(out.state_norm).all() and torch.isfinite(out.states).all()
    guarded = {k: v.requires_grad_() for k, v in guarded.items()}
    g_ref = grads({k: v.detach().clone().requires_grad_() for k, v in x.items()}, backend="reference")
    g_ours = grads(guarded, backend="triton")
    for name in NAMES:
        assert rel(g_ours[name], g_ref[name]) < 1e-5, name


def test_trace_outputs_carry_no_gradient():
    x = inputs(1, 4, 4, 10, requires_grad=True)
    with pytest.raises(ValueError, match="trace outputs"):
        selective_scan(**x, return_state_norm=True, backend="triton")
    with torch.no_grad():
        res = selective_scan(**x, return_state_norm=True, backend="triton")
    assert res.state_norm.shape == (1, 4, 10) and not res.state_norm.requires_grad


def test_bad_inputs_are_named():
    x = inputs(2, 6, 8, 10)
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(**{**x, "B": x["B"][:, :, :5]}, backend="triton")
    big_n = inputs(1, 2, 300, 3)
    with pytest.raises(ValueError, match="N=300 is above"):
        selective_scan(**big_n, backend="triton")


def test_gpu_block_sizes_fit_the_register_budget(monkeypatch):
    """The GPU heuristic (not used by the interpreter): powers of two, warps = lanes x states / 128,
    and one live [BL, BN, BD] tile is at most FWD/BWD_ELEMS_PER_THREAD elements per thread."""
    monkeypatch.setattr(scan_triton, "INTERPRETING", False)
    cpu = torch.device("cpu")   # 1 "SM": no shrinking for occupancy
    cfg = scan_triton.launch_config(8, 1536, 16, cpu)
    assert cfg == dict(BLOCK_D=32, BLOCK_N=16, BLOCK_L=8, num_warps=4)
    for n in (1, 4, 16, 64, 256):
        for backward, budget in ((False, scan_triton.FWD_ELEMS_PER_THREAD), (True, scan_triton.BWD_ELEMS_PER_THREAD)):
            c = scan_triton.launch_config(2, 80, n, cpu, backward=backward)
            for v in (c["BLOCK_D"], c["BLOCK_N"], c["BLOCK_L"], c["num_warps"]):
                assert v & (v - 1) == 0, c
            per_thread = c["BLOCK_D"] * c["BLOCK_N"] * c["BLOCK_L"] / (32 * c["num_warps"])
            assert per_thread <= budget or c["BLOCK_L"] == 2, (n, c)   # 2 steps: the shortest chunk
