"""The torch scan's own machinery: superblocks (the shared backend tests are in test_scan.py)."""
import torch

from kernels import selective_scan
from kernels import scan_torch
from tests.conftest import make_scan_inputs, rel



def test_superblock_boundaries_crossed(monkeypatch):
    """Force tiny superblocks so a short test crosses many block and chunk boundaries."""
    monkeypatch.setattr(scan_torch, "BLOCK_ELEMS", 16 * 4 * 8 * 16)   # K = 16 steps at B=4, D=8, N=16
    x = make_scan_inputs(4, 8, 16, 203)
    ref = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="reference")
    out = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="torch")
    assert scan_torch._superblock_len(4, 8, 16) < 203
    assert rel(out[0], ref[0]) < 1e-5 and rel(out[1], ref[1]) < 1e-5


def test_default_backend_on_cpu_is_the_compiled_scan():
    """CI and the README's machines have g++ and ninja: the compiled scan must build there."""
    from kernels import default_backend, scan_cpu
    assert default_backend(torch.device("cpu")) == "cpu", scan_cpu._MODULES.get("native")
