"""Every selective-scan backend equals the sequential reference (the spec): one parametrised test
per behaviour, forward and backward, on awkward shapes (L = 1, odd L, batch > 1, D not a multiple
of a block, N small and large).

The Triton backend runs in Triton's numpy interpreter without CUDA (tests/conftest.py sets
TRITON_INTERPRET=1), which is slow per program and chunk: it gets the small shapes (its
interpreter uses 32-step chunks and 32-channel blocks, so L=129 crosses chunk boundaries and D=80
ends in a part-filled block). On a GPU (bench/gpu_check.sh) the same tests run the compiled kernels.
Backend-specific behaviour (superblocks, the compiled build variants, Triton's scan flavours and
launch sizes) is in test_scan_torch.py, test_scan_cpu.py, test_scan_triton.py.
"""
import pytest
import torch

from kernels import ScanResult, scan_cpu, selective_scan, triton_available
from tests.conftest import make_scan_inputs, rel

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = [(1, 5, 4, 1), (3, 80, 16, 129), (2, 7, 16, 37)]            # (batch, D, N, L)
LARGE = SMALL + [(2, 8, 16, 1000), (1, 128, 16, 1300), (2, 20, 64, 50)]
GRAD_SHAPES = [(1, 3, 4, 1), (2, 5, 16, 37), (3, 4, 8, 129)]


def _skip_unless(backend):
    if backend == "cpu" and not scan_cpu.available():
        pytest.skip("the compiled CPU scan did not build here (no g++/ninja)")
    if backend == "triton" and not triton_available():
        pytest.skip("triton is not installed")


BACKENDS = ["torch", "cpu", "triton"]
FORWARD = [(b, s) for b in BACKENDS for s in (SMALL if b == "triton" else LARGE)]


def inputs(backend, *shape, dtype=torch.float32, requires_grad=False, seed=0):
    x = make_scan_inputs(*shape, dtype=dtype, seed=seed)
    dev = DEVICE if backend == "triton" else "cpu"
    return {k: v.to(dev).requires_grad_(requires_grad) for k, v in x.items()}


@pytest.mark.parametrize("backend, shape", FORWARD, ids=[f"{b}-{'x'.join(map(str, s))}" for b, s in FORWARD])
def test_forward_matches_reference(backend, shape):
    _skip_unless(backend)
    x = inputs(backend, *shape)       # includes initial_state, D, z and delta_bias
    kw = dict(delta_softplus=True, return_last_state=True, return_state_norm=True, return_states=True)
    ref = selective_scan(**x, backend="reference", **kw)
    with torch.no_grad():
        out = selective_scan(**x, backend=backend, **kw)
    assert isinstance(out, ScanResult)
    assert out.states.shape == (*shape[:2], shape[3], shape[2])          # [B, D, L, N]
    for name in ("out", "last_state", "state_norm", "states"):
        assert rel(getattr(out, name), getattr(ref, name)) < 1e-5, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_norm_is_norm_of_reference_states(backend):
    _skip_unless(backend)
    x = inputs(backend, 2, 16, 16, 70)
    ref = selective_scan(**x, delta_softplus=True, return_states=True, backend="reference")
    with torch.no_grad():
        out = selective_scan(**x, delta_softplus=True, return_state_norm=True, backend=backend)
    assert out.states is None
    assert rel(out.state_norm, torch.linalg.vector_norm(ref.states, dim=-1)) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_carried_across_calls_equals_one_call(backend):
    """Splitting time off a chunk boundary and passing last_state on gives the same result."""
    _skip_unless(backend)
    x = inputs(backend, 2, 12, 16, 100)
    x.pop("initial_state")
    with torch.no_grad():
        full, last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend)
        cut = 37
        first = {k: (v[..., :cut] if v.dim() == 3 else v) for k, v in x.items()}
        second = {k: (v[..., cut:] if v.dim() == 3 else v) for k, v in x.items()}
        y1, h1 = selective_scan(**first, delta_softplus=True, return_last_state=True, backend=backend)
        y2, h2 = selective_scan(**second, delta_softplus=True, return_last_state=True, initial_state=h1,
                                backend=backend)
    assert rel(torch.cat([y1, y2], -1), full) < 1e-5
    assert rel(h2, last) < 1e-5


def grads(x, **kw):
    """Gradients of a fixed random functional of (out, last_state) w.r.t. every input in x."""
    softplus = kw.pop("delta_softplus", True)
    res = selective_scan(**x, delta_softplus=softplus, return_last_state=True, **kw)
    g = torch.Generator().manual_seed(1)
    g_out = torch.randn(res[0].shape, generator=g, dtype=torch.float64).to(res[0].device)
    g_last = torch.randn(res[1].shape, generator=g, dtype=torch.float64).to(res[1].device)
    loss = (res[0].double() * g_out).sum() + (res[1].double() * g_last).sum()
    return dict(zip(x, torch.autograd.grad(loss, list(x.values()))))


def as_double(x):
    """Leaf float64 copies: the reference in float64 is the exact answer to compare against."""
    return {k: v.detach().double().requires_grad_(v.requires_grad) for k, v in x.items()}


GRADS = [(b, s) for b in BACKENDS for s in GRAD_SHAPES]


@pytest.mark.parametrize("backend, shape", GRADS, ids=[f"{b}-{'x'.join(map(str, s))}" for b, s in GRADS])
def test_backward_matches_reference_autograd(backend, shape):
    """Every input's gradient (u, Δ, A, B, C, D, z, Δ bias, h0); the cpu backend hands grads to torch."""
    _skip_unless(backend)
    x = inputs(backend, *shape, requires_grad=True)
    g_ref = grads(as_double(x), backend="reference")
    g_ours = grads(x, backend=backend)
    for name in x:
        assert g_ours[name].dtype == x[name].dtype
        assert rel(g_ours[name], g_ref[name]) < 1e-5, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_optional_inputs_absent(backend):
    """No D, z, bias, initial state or softplus: the bare recurrence, and its gradients."""
    _skip_unless(backend)
    x = inputs(backend, 2, 6, 8, 45, requires_grad=True)
    for k in ("D", "z", "delta_bias", "initial_state"):
        x.pop(k)
    with torch.no_grad():
        x["delta"].abs_()
        assert rel(selective_scan(**x, backend=backend), selective_scan(**x, backend="reference")) < 1e-5
    g_ref = grads(as_double(x), backend="reference", delta_softplus=False)
    g_ours = grads(x, backend=backend, delta_softplus=False)
    for name in x:
        assert rel(g_ours[name], g_ref[name]) < 1e-5, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_decays_stay_finite(backend):
    """Δ up to ~10 and A down to -16 underflow exp(ΔA) (and Δ·A far below the -80 clamp);
    results stay finite and equal the spec."""
    _skip_unless(backend)
    x = inputs(backend, 1, 8, 16, 70)
    x["A"] = -torch.arange(1, 17.0, device=x["A"].device).repeat(8, 1)
    x["delta"] = x["delta"] * 20
    ref = selective_scan(**x, delta_softplus=True, backend="reference")
    with torch.no_grad():
        out = selective_scan(**x, delta_softplus=True, backend=backend)
    assert torch.isfinite(out).all() and rel(out, ref) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_shapes_are_named(backend):
    _skip_unless(backend)
    x = inputs(backend, 2, 6, 8, 10)
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(**{**x, "B": x["B"][:, :, :5]}, backend=backend)


def test_unknown_backend_and_triton_on_cpu_say_how_to_fix(monkeypatch):
    x = make_scan_inputs(1, 4, 4, 3)
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan(**x, backend="cuda-magic")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        selective_scan(**x, backend="triton")
