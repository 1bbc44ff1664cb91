"""analysis.readout: the query's readout of a layer's state, split into the write's and the filler's terms."""
from pathlib import Path

import pytest
import torch

from analysis.readout import markdown, readout_split, readouts
from model import MambaConfig, MambaLM, load_checkpoint, run
from tasks import INDUCTION

ANALYTIC = Path(__file__).resolve().parent.parent / "checkpoints" / "analytic-2layer.safetensors"


@pytest.mark.parametrize("ssm_cfg", [{}, {"layer": "Mamba2", "headdim": 8, "ngroups": 2, "chunk_size": 8}])
def test_readouts_reproduce_the_scan_output(ssm_cfg):
    """C_t · h_t + D·x_t is the layer's ssm_output at t: readouts() reads each unit's state with its
    group's C, in the layout the scan uses (Mamba-1 channels; Mamba-2 heads, 2 groups)."""
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(d_model=32, ssm_cfg=ssm_cfg)).eval()
    with torch.no_grad():
        for p in lm.parameters():               # D off its init of ones, so a dropped skip shows
            if p.ndim == 1 and p.shape[0] in (8, 64):
                p.add_(0.1 * torch.randn_like(p))
    tokens = torch.from_numpy(INDUCTION.batch(3, 21, seed=1).tokens)
    t = 13
    with torch.no_grad():
        res = run(lm, tokens, include=("C", "ssm_input", "ssm_output"), snapshots=(t,))
    for layer in range(2):
        mixer, rec = lm.backbone.layers[layer].mixer, res.records[layer]
        G = getattr(mixer, "ngroups", 1)
        C = rec["C"][:, t].reshape(3, G, -1)
        y = readouts(C, res.snapshots[t][layer].ssm, G)                        # [B, D]
        x = rec["ssm_input"][:, t].double()
        Dskip = mixer.D.double().repeat_interleave(x.shape[1] // mixer.D.shape[0])
        torch.testing.assert_close(y + Dskip * x, rec["ssm_output"][:, t].double(), rtol=1e-4, atol=1e-5)


def test_the_closed_form_model_reads_only_the_write():
    """analytic-2layer: filler Δ ~1e-14 on its memory channels, so their readout at the query is the
    write's term alone at every distance. An untrained model's state is mostly filler by 2^8 steps:
    the split sees the difference."""
    lm = load_checkpoint(ANALYTIC)
    mem = list(range(16))
    with torch.no_grad():
        rows = readout_split(lm, 1, [16, 256], n=3, seed=0, units=mem)
        torch.manual_seed(0)
        untrained = readout_split(MambaLM(MambaConfig()).eval(), 1, [256], n=3, seed=0)
    for r in rows:
        assert r.accuracy == 1.0 and r.write > 0.1 and r.ratio < 1e-6
    assert untrained[0].ratio > 1.0
    assert markdown(rows).splitlines()[2].startswith("| 2^4 |")
    with pytest.raises(ValueError, match="inside the write window"):
        readout_split(lm, 1, [2], n=1)
