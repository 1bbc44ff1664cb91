"""Traces hold what the model computed, and survive a safetensors round trip exactly."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from kernels import default_backend, selective_scan
from model import RECORDABLE, MambaConfig, MambaLM, Trace, load_checkpoint, run, save_checkpoint, trace
from model.interventions import ClampDelta


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return MambaLM(MambaConfig()).eval()


def test_shapes_and_consistency_with_forward(lm):
    tokens = torch.randint(0, 17, (77,))
    tr = lm.trace(tokens)
    L, D, N = 77, 128, 16
    assert tr.tokens.tolist() == tokens.tolist()
    assert len(tr.layers) == 2
    for lt in tr.layers:
        assert lt.delta.shape == lt.state_norm.shape == lt.ssm_input.shape == lt.ssm_output.shape == (L, D)
        assert lt.B.shape == lt.C.shape == (L, N)
        assert lt.resid_post.shape == (L, 64)
        assert lt.states is None
        assert (lt.delta > 0).all()                   # after softplus
    with torch.no_grad():
        logits = lm(tokens[None])[0].numpy()
    assert np.abs(tr.logits - logits).max() < 1e-5
    assert np.allclose(tr.probs.sum(-1), 1, atol=1e-5)


def test_trace_quantities_match_an_independent_recomputation(lm):
    """delta and state norms recomputed from the layer-0 weights and the reference scan."""
    tokens = torch.randint(0, 17, (40,))
    tr = lm.trace(tokens, full_states=True)
    m = lm.backbone.layers[0].mixer
    with torch.no_grad():
        h = lm.backbone.layers[0].norm(lm.backbone.embedding(tokens[None]))
        x, z = m.in_proj(h).transpose(1, 2).chunk(2, 1)
        u = F.silu(m.conv1d(x)[..., :40])
        dt, B, C = torch.split(m.x_proj(u.transpose(1, 2)), [4, 16, 16], -1)
        delta = F.softplus(m.dt_proj(dt)).transpose(1, 2)
        ref = selective_scan(u, delta, -torch.exp(m.A_log), B.transpose(1, 2), C.transpose(1, 2), m.D,
                             return_states=True, backend="reference")
    lt = tr.layers[0]
    assert np.abs(lt.delta - delta[0].T.numpy()).max() < 1e-6
    assert np.abs(lt.states - ref.states[0].transpose(0, 1).numpy()).max() < 1e-5
    assert np.abs(lt.state_norm - np.linalg.norm(lt.states, axis=-1)).max() < 1e-5
    assert np.abs(lt.ssm_output - ref.out[0].T.numpy()).max() < 1e-5


def test_long_trace_streams_in_chunks(lm):
    tokens = torch.randint(0, 17, (300,))
    a, b = lm.trace(tokens), lm.trace(tokens, chunk_len=64)
    for la, lb in zip(a.layers, b.layers):
        assert np.abs(la.state_norm - lb.state_norm).max() < 1e-5


def test_full_states_are_capped(lm):
    with pytest.raises(ValueError, match="max_state_elems"):
        lm.trace(torch.zeros(5000, dtype=torch.long), full_states=True)
    tr = lm.trace(torch.zeros(100, dtype=torch.long), full_states=True, max_state_elems=10**9)
    assert tr.layers[1].states.shape == (100, 128, 16)


def test_safetensors_round_trip_is_lossless(lm, tmp_path):
    tr = lm.trace(torch.randint(0, 17, (50,)), full_states=True)
    path = tmp_path / "t.safetensors"
    tr.save(path)
    back = Trace.load(path)
    for a, b in zip(tr.layers, back.layers):
        for name in ("delta", "state_norm", "B", "C", "ssm_input", "ssm_output", "resid_post", "states"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(tr.tokens, back.tokens) and np.array_equal(tr.probs, back.probs)
    assert back.meta["config"] == tr.meta["config"]
    assert back.meta["backend"] == default_backend(lm.device) and back.meta["version"]
    with safe_open(str(path), framework="numpy") as f:
        keys = set(f.keys())
    assert {"blocks.0.hook_delta", "blocks.1.hook_B", "blocks.1.hook_C", "blocks.0.hook_h",
            "hook_logits"} <= keys
    assert not any("decay" in k for k in keys) and back.layers[0].decay is None   # Mamba-2's record only


def test_bad_trace_inputs(lm, tmp_path):
    with pytest.raises(ValueError, match="one sequence"):
        lm.trace(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        lm.trace([1.5, 2.0])
    with pytest.raises(ValueError, match="out of range"):
        lm.trace([1, 2, 40])
    junk = tmp_path / "x.safetensors"
    junk.write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable"):
        Trace.load(junk)


def test_include_keeps_only_what_was_asked(lm, tmp_path):
    tokens = torch.randint(0, 17, (90,))
    full = lm.trace(tokens)
    part = lm.trace(tokens, include=("state_norm",), chunk_len=32)
    for a, b in zip(full.layers, part.layers):
        assert np.abs(a.state_norm - b.state_norm).max() < 1e-5
        assert b.delta is None and b.B is None
    part.save(tmp_path / "p.safetensors")
    back = Trace.load(tmp_path / "p.safetensors")
    assert back.layers[0].delta is None and np.array_equal(back.layers[1].state_norm, part.layers[1].state_norm)
    with pytest.raises(ValueError, match="unknown trace quantities"):
        lm.trace(tokens, include=("attention",))


@pytest.mark.parametrize("include", [("delta",), ("ssm_output",), ("B", "C"), ("delta", "state_norm"),
                                     ("ssm_input", "ssm_output", "resid_post")])
def test_every_subset_records_the_same_values_and_logits(lm, include):
    """Δ, the norm and the pre-gate output are computed only when asked for (softplus and gate
    move into the scan otherwise): the values and the logits must not depend on that."""
    tokens = torch.randint(0, 17, (70,), generator=torch.Generator().manual_seed(1))
    full = lm.trace(tokens)
    part = lm.trace(tokens, include=include, chunk_len=32)
    assert np.abs(part.logits - full.logits).max() < 1e-5
    for a, b in zip(full.layers, part.layers):
        for q in include:
            assert np.abs(getattr(a, q) - getattr(b, q)).max() <= 1e-5 * np.abs(getattr(a, q)).max(), q


def test_meta_names_the_checkpoint_file_not_its_path(lm, tmp_path):
    path = tmp_path / "secret-dir" / "m.safetensors"
    path.parent.mkdir()
    save_checkpoint(lm, path)
    tr = load_checkpoint(path).trace([1, 2, 3])
    assert tr.meta["checkpoint"] == "m.safetensors" and "checkpoint_path" not in tr.meta
    assert "secret-dir" not in repr(tr.meta)
    assert tr.meta["units"] == "channel" and tr.units == "channel"
    assert lm.trace([1, 2]).meta["checkpoint"] == ""              # an unsaved model
    two = MambaLM(MambaConfig(ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16})).eval()
    tr2 = two.trace([1, 2, 3], include=("delta",))
    assert tr2.units == "head" and tr2.layers[0].delta.shape == (3, 8)   # H = 128 / 16 heads


def test_old_traces_with_a_checkpoint_path_still_load(lm, tmp_path):
    tr = lm.trace([1, 2, 3])
    del tr.meta["checkpoint"], tr.meta["units"]
    tr.meta["checkpoint_path"] = "/srv/private/runs/best.safetensors"
    tr.save(tmp_path / "old.safetensors")
    back = Trace.load(tmp_path / "old.safetensors")
    assert back.meta["checkpoint"] == "best.safetensors" and "checkpoint_path" not in back.meta
    assert back.units == "channel"                                  # every trace before "units" was Mamba-1
    assert np.array_equal(back.layers[0].delta, tr.layers[0].delta)


def test_trace_with_interventions_is_run_with_them(lm):
    tokens = torch.randint(0, 17, (60,), generator=torch.Generator().manual_seed(3))
    ivs = [ClampDelta(0, [3, 7], from_t=20, to_t=30, value=0.5)]
    tr = trace(lm, tokens, interventions=ivs, chunk_len=16)
    res = run(lm, tokens[None], ivs, include=RECORDABLE, chunk_len=16)
    assert np.array_equal(tr.logits, res.logits[0].numpy())
    assert np.array_equal(tr.layers[0].delta, res.records[0]["delta"][0].numpy())
    assert np.all(tr.layers[0].delta[20:30, [3, 7]] == 0.5)
    assert tr.meta["interventions"] == [{"kind": "ClampDelta", "layer": 0, "channels": [3, 7], "from_t": 20,
                                         "value": 0.5, "to_t": 30}]
    assert "interventions" not in lm.trace(tokens).meta
