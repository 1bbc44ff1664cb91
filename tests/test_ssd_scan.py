"""Every Mamba-2 (SSD) scan backend equals the sequential reference (the spec), forward and backward.

The reference runs in float64 on float64 copies of the inputs: the exact answer each backend's fp32
result is bounded against with `rel` (max abs error / max abs value). Shapes are the awkward ones:
L = 1, L not a multiple of the chunk (37 with chunk 16), exactly two chunks, batch > 1, two groups.
Without CUDA the triton backend runs under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), slow per program, hence the small head sizes; bench/gpu_check.sh runs the same
tests on the GPU with the compiled kernels.
"""
import os

import pytest
import torch

from kernels import SSDResult, mamba_chunk_scan
from kernels import ssd_cpu
from kernels.ssd import SSD_BACKENDS, ssd_triton_available
from tests.conftest import rel

CUDA = torch.cuda.is_available()


def device_for(backend):
    """The compiled CPU scan takes CPU tensors; everything else runs on the GPU when there is one."""
    return "cpu" if backend == "cpu" or not CUDA else "cuda"


def skip_reason(backend):
    if backend == "cpu" and not ssd_cpu.available():
        return f"the compiled SSD scan does not build here ({ssd_cpu.build_error()})"
    if backend == "triton" and not ssd_triton_available():
        return "triton does not import"
    if backend == "triton" and not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        return "no CUDA and TRITON_INTERPRET is not set"
    return None


def backend_param(backend, slow=False):
    marks = [pytest.mark.skipif(skip_reason(backend) is not None, reason=str(skip_reason(backend)))]
    if slow:
        marks.append(pytest.mark.slow)
    return pytest.param(backend, marks=marks, id=backend)


# the interpreted triton kernels take 1-10 s per test on 2 cores, ~40 s in all: marked slow
BACKENDS = [backend_param(b, slow=b == "triton" and not CUDA) for b in SSD_BACKENDS]
GRAD_BACKENDS = [backend_param("torch"), backend_param("triton", slow=not CUDA)]


def make_ssd_inputs(b, l, h, p, n, g, dtype=torch.float32, D="head", z=True, dt_bias=True, init=True,
                    seed=0, device="cpu"):
    """Random but realistic inputs: Δ around softplus(-1..1), A = -(1..8)-like per head."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    ins = dict(x=r(b, l, h, p), dt=r(b, l, h) * 0.5, A=-(torch.rand(h, generator=gen) * 7 + 0.5),
               B=r(b, l, g, n), C=r(b, l, g, n),
               D={"head": r(h), "channel": r(h, p), None: None}[D], z=r(b, l, h, p) if z else None,
               dt_bias=r(h) * 0.3 if dt_bias else None, initial_states=r(b, h, p, n) if init else None)
    low = ("x", "dt", "B", "C", "z")   # activations in the low precision, parameters fp32 (a model's)
    return {k: None if v is None else v.to(device, dtype if k in low else torch.float32) for k, v in ins.items()}


def as_double(ins):
    return {k: None if v is None else v.detach().double().requires_grad_(v.requires_grad) for k, v in ins.items()}


# (b, l, h, p, n, g, chunk_size), input options, call options
CASES = {
    "L1": ((1, 1, 4, 5, 8, 1, 16), {}, dict(dt_softplus=True)),
    "ragged-2groups": ((2, 37, 4, 5, 8, 2, 16), {}, dict(dt_softplus=True)),
    "two-chunks-Dhp": ((1, 32, 2, 3, 16, 1, 16), dict(D="channel"), dict(dt_softplus=True)),
    "batch3-plain": ((3, 20, 2, 4, 4, 2, 8), dict(D=None, z=False, dt_bias=False, init=False), {}),
    "dt-limit": ((2, 19, 4, 4, 8, 4, 8), {}, dict(dt_softplus=True, dt_limit=(0.2, 0.9))),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, case):
    shape, opts, call = CASES[case]
    ins = make_ssd_inputs(*shape[:6], device=device_for(backend), **opts)
    kw = dict(chunk_size=shape[6], return_final_states=True, return_state_norm=True, return_states=True, **call)
    ref = mamba_chunk_scan(**as_double(ins), backend="reference", **kw)
    res = mamba_chunk_scan(**ins, backend=backend, **kw)
    assert isinstance(res, SSDResult) and res.out.dtype == torch.float32
    b, l, h, p, n = shape[:5]
    assert res.states.shape == (b, l, h, p, n) and res.state_norm.shape == (b, l, h)
    for name in SSDResult._fields:
        assert rel(getattr(res, name), getattr(ref, name)) < 1e-5, name
    # mamba_ssm's plain return, and the state norm alone (its own code path in the kernels)
    out, final = mamba_chunk_scan(**ins, backend=backend, **{**kw, "return_states": False, "return_state_norm": False})
    assert rel(out, ref.out) < 1e-5 and rel(final, ref.final_states) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_sequence_equals_one_pass(backend):
    """final_states of the first part as initial_states of the second: the same as one call."""
    ins = make_ssd_inputs(2, 45, 4, 4, 8, 2, init=False, device=device_for(backend))
    kw = dict(chunk_size=16, dt_softplus=True, return_final_states=True, backend=backend)
    full, last = mamba_chunk_scan(**ins, **kw)
    cut = 21   # off every chunk boundary
    part = lambda s: {k: (v[:, s] if k in ("x", "dt", "B", "C", "z") else v) for k, v in ins.items()}  # noqa: E731
    y1, h1 = mamba_chunk_scan(**part(slice(None, cut)), **kw)
    y2, h2 = mamba_chunk_scan(**{**part(slice(cut, None)), "initial_states": h1}, **kw)
    assert rel(torch.cat([y1, y2], 1), full) < 1e-5 and rel(h2, last) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_of_one_projection_as_the_model_passes_them(backend):
    """z, x, B, C, dt as slices of one [b, l, d_in_proj] tensor (Mamba2's in_proj output): strided
    views with unit stride only along the last dim."""
    b, l, h, p, n, g = 2, 21, 4, 4, 8, 2
    ins = make_ssd_inputs(b, l, h, p, n, g, device=device_for(backend))
    zxbcdt = torch.cat([ins["z"].flatten(2), ins["x"].flatten(2), ins["B"].flatten(2), ins["C"].flatten(2),
                        ins["dt"]], dim=-1)                                           # [b, l, 2hp + 2gn + h]
    z, x, B, C, dt = torch.split(zxbcdt, [h * p, h * p, g * n, g * n, h], dim=-1)
    views = dict(z=z.view(b, l, h, p), x=x.view(b, l, h, p), B=B.view(b, l, g, n), C=C.view(b, l, g, n), dt=dt)
    assert not views["x"].is_contiguous()
    kw = dict(chunk_size=8, dt_softplus=True, return_final_states=True)
    ref = mamba_chunk_scan(**as_double(ins), backend="reference", **kw)
    out, final = mamba_chunk_scan(**{**ins, **views}, backend=backend, **kw)
    assert rel(out, ref[0]) < 1e-5 and rel(final, ref[1]) < 1e-5


def grads(ins, backend, chunk_size, **kw):
    """Gradients of a fixed random functional of (out, final_states) w.r.t. every tensor input."""
    ins = {k: v for k, v in ins.items() if v is not None}
    out, final = mamba_chunk_scan(**ins, chunk_size=chunk_size, return_final_states=True, backend=backend, **kw)
    gen = torch.Generator().manual_seed(1)
    g_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)
    g_fin = torch.randn(final.shape, generator=gen, dtype=torch.float64).to(out.device)
    loss = (out.double() * g_out).sum() + (final.double() * g_fin).sum()
    return dict(zip(ins, torch.autograd.grad(loss, list(ins.values())), strict=True))


@pytest.mark.parametrize("case", ["ragged-2groups", "two-chunks-Dhp", "dt-limit"])
@pytest.mark.parametrize("backend", GRAD_BACKENDS)
def test_gradients_match_float64_reference(backend, case):
    shape, opts, call = CASES[case]
    ins = make_ssd_inputs(*shape[:6], device=device_for(backend), **opts)
    for v in ins.values():
        if v is not None:
            v.requires_grad_()
    g_ref = grads(as_double(ins), "reference", shape[6], **call)
    g = grads(ins, backend, shape[6], **call)
    assert set(g) == set(g_ref) == {k for k, v in ins.items() if v is not None}
    for name in g_ref:
        assert g[name].dtype == ins[name].dtype, name
        assert rel(g[name], g_ref[name]) < 1e-5, name


def as_projection_views(ins):
    """z, x, B, C, dt as slices of one [b, l, 2hp + 2gn + h] tensor, as Mamba2's in_proj output."""
    b, l, h, p = ins["x"].shape
    g, n = ins["B"].shape[2:]
    zxbcdt = torch.cat([ins["z"].flatten(2), ins["x"].flatten(2), ins["B"].flatten(2), ins["C"].flatten(2),
                        ins["dt"][..., None].flatten(2)], dim=-1)                   # [b, l, 2hp + 2gn + h]
    z, x, B, C, dt = torch.split(zxbcdt, [h * p, h * p, g * n, g * n, h], dim=-1)
    return {**ins, "z": z.view(b, l, h, p), "x": x.view(b, l, h, p), "B": B.view(b, l, g, n),
            "C": C.view(b, l, g, n), "dt": dt}


# The compiled CPU scan's own edges (ssd_cpu.cpp): the state in blocks of 16 head channels (p = 5,
# 20, 40: partial blocks), n odd or not a multiple of the vector width, two steps per pass over the
# state (odd l: a single step at the end), time blocks of 128 steps (l = 133, 300), groups, and L = 1.
CPU_CASES = {   # (b, l, h, p, n, g), D per head or per channel
    "L1-n12": ((1, 1, 2, 16, 12, 1), "head"),
    "p20-n20-groups2": ((2, 37, 4, 20, 20, 2), "channel"),
    "p5-n64-L300": ((1, 300, 2, 5, 64, 1), "head"),
    "p40-n128-groups2": ((1, 133, 2, 40, 128, 2), "channel"),
    "p16-n16-the-model's": ((1, 258, 8, 16, 16, 1), "head"),
    "p24-n7": ((3, 20, 3, 24, 7, 3), "channel"),
}


@pytest.mark.skipif(skip_reason("cpu") is not None, reason=str(skip_reason("cpu")))
@pytest.mark.parametrize("variant", ssd_cpu.VARIANTS)
@pytest.mark.parametrize("gate", [True, False], ids=["gate", "no-gate"])
@pytest.mark.parametrize("case", CPU_CASES)
def test_compiled_scan_edges_match_reference(case, gate, variant):
    """Every output (out, final state, state norms) on the model's strided views, with an initial
    state; "portable" is the build a CPU without AVX-512 gets (tested on AVX-512 machines too)."""
    shape, D = CPU_CASES[case]
    ins = make_ssd_inputs(*shape, D=D, seed=len(case))
    views = as_projection_views(ins)
    if not gate:
        views["z"] = ins["z"] = None
    kw = dict(chunk_size=16, dt_softplus=True, return_final_states=True, return_state_norm=True)
    ref = mamba_chunk_scan(**as_double(ins), backend="reference", **kw)
    with torch.no_grad():
        res = ssd_cpu.mamba_chunk_scan_cpu(**views, variant=variant, **kw)
    for name in ("out", "final_states", "state_norm"):
        assert rel(getattr(res, name), getattr(ref, name)) < 1e-5, name


@pytest.mark.skipif(skip_reason("cpu") is not None, reason=str(skip_reason("cpu")))
@pytest.mark.parametrize("variant", ssd_cpu.VARIANTS)
def test_compiled_scan_extreme_steps(variant):
    """Δ A far below -87 (the decay underflows to 0 exactly), Δ > 20 (softplus is the identity
    there), a clamped Δ, and a raw negative Δ (decay > 1, no softplus and no limit: the spec's)."""
    ins = make_ssd_inputs(2, 41, 4, 16, 16, 2, seed=3)
    ins["dt"] = ins["dt"] * 60                                      # softplus(dt) up to ~100: Δ A < -87
    kw = dict(chunk_size=16, return_final_states=True, return_state_norm=True)
    for call in (dict(dt_softplus=True), dict(dt_softplus=True, dt_limit=(0.05, 3.0))):
        ref = mamba_chunk_scan(**as_double(ins), backend="reference", **kw, **call)
        with torch.no_grad():
            res = ssd_cpu.mamba_chunk_scan_cpu(**ins, variant=variant, **kw, **call)
        for name in ("out", "final_states", "state_norm"):
            assert rel(getattr(res, name), getattr(ref, name)) < 1e-5, (call, name)
    small = {**ins, "dt": ins["dt"] / 6000, "dt_bias": None}       # raw Δ in ±0.02: decays around 1
    ref = mamba_chunk_scan(**as_double(small), backend="reference", **kw)
    with torch.no_grad():
        res = ssd_cpu.mamba_chunk_scan_cpu(**small, variant=variant, **kw)
    assert (small["dt"] < 0).any()
    for name in ("out", "final_states", "state_norm"):
        assert rel(getattr(res, name), getattr(ref, name)) < 1e-5, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_inputs(backend, dtype):
    """fp16/bf16 activations are upcast after loading; the math is fp32, `out` comes back in x's dtype."""
    ins = make_ssd_inputs(2, 37, 4, 5, 8, 2, dtype=dtype, device=device_for(backend))
    kw = dict(chunk_size=16, dt_softplus=True, return_final_states=True)
    ref = mamba_chunk_scan(**as_double(ins), backend="reference", **kw)
    out, final = mamba_chunk_scan(**ins, backend=backend, **kw)
    assert out.dtype == dtype and final.dtype == torch.float32
    assert rel(out, ref[0]) < (1e-2 if dtype == torch.bfloat16 else 2e-3)
    assert rel(final, ref[1]) < 1e-5


def test_bad_inputs_name_the_tensor_and_shape():
    ins = make_ssd_inputs(2, 10, 4, 3, 8, 2)
    bad = {
        r"x must be \[batch, seqlen, nheads, headdim\], got shape \(10, 4, 3\)": dict(x=ins["x"][0]),
        "nheads=4 must be a multiple of ngroups=3": dict(B=torch.zeros(2, 10, 3, 8), C=torch.zeros(2, 10, 3, 8)),
        r"dt must have shape \(2, 10, 4\), got \(2, 10, 3\)": dict(dt=ins["dt"][..., :3]),
        r"A must have shape \(4,\), got \(4, 1\)": dict(A=ins["A"][:, None]),
        r"C must have shape \(2, 10, 2, 8\), got \(2, 10, 2, 7\)": dict(C=ins["C"][..., :7]),
        r"D must have shape \(4,\) or \(4, 3\), got \(3,\)": dict(D=torch.zeros(3)),
        r"initial_states must have shape \(2, 4, 3, 8\)": dict(initial_states=torch.zeros(2, 4, 8, 3)),
        r"z must have shape": dict(z=ins["z"][:, :5]),
        "seqlen 0": dict(x=ins["x"][:, :0], dt=ins["dt"][:, :0], B=ins["B"][:, :0], C=ins["C"][:, :0], z=None),
    }
    for msg, change in bad.items():
        with pytest.raises(ValueError, match=msg):
            mamba_chunk_scan(**{**ins, **change}, chunk_size=4, backend="torch")
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        mamba_chunk_scan(**ins, chunk_size=0)
    with pytest.raises(ValueError, match="unknown SSD backend 'fast'"):
        mamba_chunk_scan(**ins, chunk_size=4, backend="fast")


def test_default_backend_returns_and_grad_handover():
    """CPU tensors default to the compiled scan where it builds; with grad it hands over to torch.
    Without return flags the result is `out` alone, as mamba_ssm's."""
    from kernels.ssd import default_backend
    assert default_backend(torch.device("cpu")) == ("cpu" if ssd_cpu.available() else "torch")
    ins = make_ssd_inputs(1, 9, 2, 3, 4, 1)
    ref = mamba_chunk_scan(**ins, chunk_size=4, dt_softplus=True, backend="reference")
    assert torch.is_tensor(ref)
    ins["x"].requires_grad_()
    out = mamba_chunk_scan(**ins, chunk_size=4, dt_softplus=True)
    assert torch.is_tensor(out) and rel(out, ref) < 1e-5
    out.sum().backward()
    assert ins["x"].grad is not None
