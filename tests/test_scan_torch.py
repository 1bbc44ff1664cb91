"""The fast torch scan equals the sequential reference (the spec), forward and backward."""
import pytest
import torch

from kernels import ScanResult, selective_scan
from kernels import scan_torch
from tests.conftest import make_scan_inputs, rel

SHAPES = [  # (batch, D, N, L): L=1, odd L, L across several superblocks, batch > 1
    (1, 5, 4, 1), (3, 7, 16, 37), (2, 8, 16, 1000), (1, 128, 16, 1300), (3, 80, 16, 129),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(shape):
    b, d, n, L = shape
    x = make_scan_inputs(b, d, n, L)
    kw = dict(delta_softplus=True, return_last_state=True, return_state_norm=True, return_states=True)
    ref = selective_scan(**x, backend="reference", **kw)
    out = selective_scan(**x, backend="torch", **kw)
    assert isinstance(out, ScanResult)
    for name in ("out", "last_state", "state_norm", "states"):
        assert rel(getattr(out, name), getattr(ref, name)) < 1e-5, name


def test_state_norm_is_norm_of_reference_states():
    x = make_scan_inputs(2, 16, 16, 300)
    ref = selective_scan(**x, delta_softplus=True, return_states=True, backend="reference")
    out = selective_scan(**x, delta_softplus=True, return_state_norm=True, backend="torch")
    assert rel(out.state_norm, torch.linalg.vector_norm(ref.states, dim=-1)) < 1e-5


def test_state_carried_across_calls_equals_one_call():
    """Splitting time at an arbitrary point and passing last_state on gives the same result."""
    x = make_scan_inputs(2, 12, 16, 700)
    x.pop("initial_state")
    full, last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="torch")
    cut = 333
    first = {k: (v[..., :cut] if v.dim() == 3 else v) for k, v in x.items()}
    second = {k: (v[..., cut:] if v.dim() == 3 else v) for k, v in x.items()}
    y1, h1 = selective_scan(**first, delta_softplus=True, return_last_state=True, backend="torch")
    y2, h2 = selective_scan(**second, delta_softplus=True, return_last_state=True, initial_state=h1,
                            backend="torch")
    assert rel(torch.cat([y1, y2], -1), full) < 1e-5
    assert rel(h2, last) < 1e-5


def test_superblock_boundaries_crossed(monkeypatch):
    """Force tiny superblocks so a short test crosses many block and chunk boundaries."""
    monkeypatch.setattr(scan_torch, "BLOCK_ELEMS", 16 * 4 * 8 * 16)   # K = 16 steps at B=4, D=8, N=16
    x = make_scan_inputs(4, 8, 16, 203)
    ref = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="reference")
    out = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="torch")
    assert scan_torch._superblock_len(4, 8, 16) < 203
    assert rel(out[0], ref[0]) < 1e-5 and rel(out[1], ref[1]) < 1e-5


@pytest.mark.parametrize("shape", [(1, 3, 4, 1), (2, 5, 16, 37), (3, 4, 8, 700)])
def test_backward_matches_reference_autograd(shape, monkeypatch):
    monkeypatch.setattr(scan_torch, "BLOCK_ELEMS", 64 * 3 * 4 * 8)     # several superblocks at L=700
    b, d, n, L = shape
    x = make_scan_inputs(b, d, n, L, dtype=torch.float64, requires_grad=True)
    names = list(x)
    g = torch.Generator().manual_seed(1)
    ref = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="reference")
    g_out = torch.randn(ref[0].shape, generator=g, dtype=torch.float64)
    g_last = torch.randn(ref[1].shape, generator=g, dtype=torch.float64)
    loss = lambda r: (r[0] * g_out).sum() + (r[1] * g_last).sum()  # noqa: E731
    g_ref = torch.autograd.grad(loss(ref), list(x.values()))
    out = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="torch")
    g_ours = torch.autograd.grad(loss(out), list(x.values()))
    for name, a, c in zip(names, g_ours, g_ref):
        assert rel(a, c) < 1e-5, name


def test_optional_inputs_absent():
    """No D, no z, no bias, no softplus: the bare recurrence."""
    x = make_scan_inputs(2, 6, 8, 50)
    for k in ("D", "z", "delta_bias", "initial_state"):
        x.pop(k)
    x["delta"] = x["delta"].abs()
    assert rel(selective_scan(**x, backend="torch"), selective_scan(**x, backend="reference")) < 1e-5


def test_extreme_decays_stay_finite():
    """Δ up to 10 and A down to -16 underflow exp(ΔA); results stay finite and equal the spec."""
    x = make_scan_inputs(1, 8, 16, 200)
    x["A"] = -torch.arange(1, 17.0).repeat(8, 1)
    x["delta"] = x["delta"] * 20
    ref = selective_scan(**x, delta_softplus=True, backend="reference")
    out = selective_scan(**x, delta_softplus=True, backend="torch")
    assert torch.isfinite(out).all()
    assert rel(out, ref) < 1e-5


def test_bad_shapes_and_backend_names():
    x = make_scan_inputs(2, 6, 8, 10)
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(**{**x, "B": x["B"][:, :, :5]}, backend="torch")
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan(**x, backend="cuda-magic")


def test_triton_on_cpu_without_interpreter_says_how_to_fix(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = make_scan_inputs(1, 4, 4, 3)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        selective_scan(**x, backend="triton")


def test_default_backend_on_cpu_is_the_compiled_scan():
    """CI and the README's machines have g++ and ninja: the compiled scan must build there."""
    from kernels import default_backend, scan_cpu
    assert default_backend(torch.device("cpu")) == "cpu", scan_cpu._MODULES.get("native")
