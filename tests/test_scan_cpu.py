"""The compiled CPU kernels' own behaviour: model-layout views, the hand-over of grads to torch, the
portable build, the compiled conv (the shared backend tests are in test_scan.py)."""
import platform

import pytest
import torch
import torch.nn.functional as F

from kernels import scan_cpu, selective_scan
from kernels.causal_conv1d import causal_conv1d
from tests.conftest import make_scan_inputs, rel



def test_model_layout_views_and_extreme_decays():
    """Transposed [B, L, D] memory as the model passes it; Δ·A far below the -80 clamp."""
    x = make_scan_inputs(2, 16, 16, 300)
    for k in ("u", "delta", "z"):
        x[k] = x[k].transpose(1, 2).contiguous().transpose(1, 2)
    x["A"] = -torch.arange(1, 17.0).repeat(16, 1)
    x["delta"] = x["delta"] * 20
    ref = selective_scan(**x, delta_softplus=True, backend="reference")
    out = selective_scan(**x, delta_softplus=True, backend="cpu")
    assert torch.isfinite(out).all() and rel(out, ref) < 1e-5


def test_gradients_and_states_go_through_the_torch_backend():
    x = make_scan_inputs(2, 6, 8, 40, requires_grad=True)
    out = selective_scan(**x, delta_softplus=True, backend="cpu")
    out.sum().backward()
    assert all(v.grad is not None for v in x.values())
    with torch.no_grad():
        res = selective_scan(**x, delta_softplus=True, return_states=True, backend="cpu")
        ref = selective_scan(**x, delta_softplus=True, return_states=True, backend="reference")
    assert rel(res.states, ref.states) < 1e-5


def test_whole_model_on_the_compiled_scan():
    from model import MambaConfig, MambaLM
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig()).eval()
    tokens = torch.randint(0, 17, (2, 333))
    with torch.no_grad():
        assert (lm(tokens, backend="cpu") - lm(tokens, backend="reference")).abs().max() < 1e-4


@pytest.mark.skipif(platform.machine() != "x86_64", reason="-mno-avx512f is an x86 flag")
@pytest.mark.parametrize("variant", ["portable", "generic"])
def test_builds_without_avx512_match_reference(variant):
    """The builds a CPU without AVX-512 gets (AVX2 intrinsics; plain C the compiler vectorises) are as
    exact as the AVX-512 one, with Δ·A below every clamp (-80 in exp_neg, 2^-125 in exp2_256)."""
    x = make_scan_inputs(3, 80, 16, 129)
    x["delta"] = x["delta"] * 8                                       # Δ·A far below -80 too
    kw = dict(delta_softplus=True, return_last_state=True, return_state_norm=True)
    ref = selective_scan(**x, backend="reference", **kw)
    with torch.no_grad():
        out = scan_cpu.selective_scan_cpu(**x, variant=variant, **kw)
    for name in ("out", "last_state", "state_norm"):
        assert rel(getattr(out, name), getattr(ref, name)) < 1e-5, name


@pytest.mark.parametrize("L", [1, 2, 3, 37, 600])
def test_conv_silu_matches_torch_conv1d_and_carries_state(L):
    """The compiled conv = F.conv1d with mamba_ssm's pad-and-truncate, whole or in two pieces,
    on the strided time-major views the model passes (x = the first half of in_proj's output)."""
    g = torch.Generator().manual_seed(L)
    b, d, k = 2, 40, 4
    xz = torch.randn(b, L, 2 * d, generator=g).transpose(1, 2)       # [B, 2D, L] time-major memory
    x = xz[:, :d]
    w, bias = torch.randn(d, 1, k, generator=g), torch.randn(d, generator=g)
    ref = F.silu(F.conv1d(x, w, bias, padding=k - 1, groups=d)[..., :L])
    with torch.no_grad():
        out, state = causal_conv1d(x, w, bias, activation="silu", backend="cpu")
        assert rel(out, ref) < 1e-6 and torch.equal(state, F.pad(x, (k - 1, 0))[..., -(k - 1):])
        cut = L // 2
        first, st = causal_conv1d(x[..., :cut], w, bias, activation="silu", backend="cpu")
        second, st2 = causal_conv1d(x[..., cut:], w, bias, st, activation="silu", backend="cpu")
        assert rel(torch.cat([first, second], -1), ref) < 1e-6 and torch.equal(st2, state)
        torch_out, _ = causal_conv1d(x, w, bias, activation="silu", backend="torch")
        assert rel(torch_out, ref) < 1e-6


def test_keep_freed_memory_sets_glibc_thresholds_in_a_fresh_process():
    import subprocess
    import sys
    code = ("from kernels.cpu_memory import keep_freed_memory as k; import platform; "
            "print(k(), k(), platform.libc_ver()[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == (["True", "True"] if out[2] == "glibc" else ["False", "False"])


def test_keep_freed_memory_every_size_stops_the_page_faults_of_a_repeated_large_step():
    # Training's case: the same 128 + 64 MiB activations freed and allocated again each step. With
    # glibc's defaults each is a fresh mmap() every step (49k page faults); every_size keeps them in the
    # heap: after a few steps (glibc's aligned allocations need the freed blocks to coalesce) mostly none
    # (seen: 0-5 of 11 steps fault in one of the blocks, vs all 11 both blocks).
    import platform
    import subprocess
    import sys
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    code = ("import resource, sys, torch\n"
            "from kernels.cpu_memory import keep_freed_memory\n"
            "print(keep_freed_memory(every_size=True) if sys.argv[1] == 'keep' else 'default')\n"
            "def step():\n"
            "    r = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    a = torch.ones(32 << 20); b = torch.ones(16 << 20); float(a.sum() + b.sum()); del a, b\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r\n"
            "print(sum([step() for _ in range(12)][1:]))\n")
    got = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True)
        got[mode] = out.stdout.split()
    assert got["keep"][0] == "True"
    if int(got["default"][1]) < 11 * 24_000:          # 192 MiB / 4 KiB pages = 49,152 per step
        pytest.skip(f"glibc's defaults faulted only {got['default'][1]} times in 11 steps (huge pages?)")
    assert int(got["keep"][1]) < int(got["default"][1]) / 4
