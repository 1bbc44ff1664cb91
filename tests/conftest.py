import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when kernels/scan_triton.py is
# imported, so it is set here, before any test module imports kernels: without CUDA the Triton
# backend then runs in Triton's numpy interpreter (tests/test_scan_triton.py). On a GPU it stays
# unset and the same tests run the compiled kernels (bench/gpu_check.sh).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402  (after the environment variable on purpose)


def make_scan_inputs(batch, dim, n, L, dtype=torch.float32, seed=0, requires_grad=False):
    """Random but realistic scan inputs: Δ around softplus(-1..1), A = -(1..N)-like, D and z set."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    ins = dict(u=r(batch, dim, L), delta=r(batch, dim, L) * 0.5,
               A=-(torch.rand(dim, n, generator=g, dtype=dtype) * 4 + 0.1),
               B=r(batch, n, L), C=r(batch, n, L), D=r(dim), z=r(batch, dim, L),
               delta_bias=r(dim) * 0.3, initial_state=r(batch, dim, n))
    if requires_grad:
        for v in ins.values():
            v.requires_grad_()
    return ins


@pytest.fixture
def scan_inputs():
    return make_scan_inputs


def rel(a, b):
    """max |a - b| / max |b|, in float64: the relative error every scan test bounds."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def one_thread():
    """1 torch thread: several times faster on a shared 2-core machine (no spin-waiting)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def analytic(one_thread):
    """The closed-form induction model (analysis/analytic.py), built once per module."""
    from analysis.analytic import build_analytic_lm
    return build_analytic_lm()


CALL_TIMEOUT_S = 120


def call(client, *args, api_name):
    """One app endpoint call through gradio_client, bounded in time."""
    return client.submit(*args, api_name=api_name).result(timeout=CALL_TIMEOUT_S)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py` on the default checkpoint, on a free port, once per test module that asks:
    (url, log path). A module that serves another checkpoint defines its own (tests/test_app_e2e.py)."""
    from bench.app_load import start_app, stop      # on use: most test modules start no server
    log = tmp_path_factory.mktemp("app") / "app.log"
    proc, url = start_app(log)
    yield url, log
    stop(proc)


@pytest.fixture(scope="module")
def client(server):
    """A gradio_client for the module's own `server` fixture (url, log)."""
    from gradio_client import Client
    return Client(server[0], verbose=False)
