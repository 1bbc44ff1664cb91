"""The Mamba-2 LM computes what HF transformers' Mamba2ForCausalLM computes, in both directions of a
checkpoint, streams exactly, and records what the trace needs (Δ, decay, B, C, state norms per head)."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model import CheckpointError, MambaConfig, MambaLM, load_checkpoint, save_checkpoint
from model.interventions import ClampDelta
from model.mamba2 import Mamba2Mixer
from model.run import run

transformers = pytest.importorskip("transformers")

SMALL = {"layer": "Mamba2", "d_state": 8, "headdim": 8, "chunk_size": 16}   # H = 128 / 8 = 16 heads


def small_cfg(ngroups=1, **kw):
    return MambaConfig(d_model=64, n_layer=2, vocab_size=37, ssm_cfg={**SMALL, "ngroups": ngroups}, **kw)


@torch.no_grad()
def jitter(model, seed=0, scale=0.1):
    """Move every parameter off its init (D = 1, norm weights = 1, A = -(1..H)) so a mixed-up
    parameter cannot hide behind a constant."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def hf_config(cfg: MambaConfig):
    """Ours -> HF's Mamba2Config (the reverse of what load_checkpoint reads from config.json)."""
    return transformers.Mamba2Config(
        vocab_size=cfg.padded_vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
        state_size=cfg.d_state, conv_kernel=cfg.d_conv, expand=cfg.expand, head_dim=cfg.headdim,
        num_heads=cfg.nheads, n_groups=cfg.ngroups, chunk_size=cfg.chunk_size, layer_norm_epsilon=cfg.norm_epsilon,
        time_step_limit=cfg.dt_limit, use_bias=False, use_conv_bias=True, residual_in_fp32=cfg.residual_in_fp32,
        tie_word_embeddings=True)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


# --- config ---------------------------------------------------------------------------------------

def test_mamba2_defaults_are_mamba_ssm_s():
    c = MambaConfig(d_model=768, ssm_cfg={"layer": "Mamba2"})
    assert (c.layer, c.d_state, c.d_conv, c.expand, c.headdim, c.ngroups, c.chunk_size) == \
        ("Mamba2", 128, 4, 2, 64, 1, 256)
    assert (c.d_inner, c.nheads, c.conv_dim, c.delta_width) == (1536, 24, 1536 + 2 * 128, 24)
    assert c.dt_limit == (0.0, float("inf")) and c.ssm("A_init_range") == [1, 16]
    assert c.ssm("rmsnorm") and not c.ssm("norm_before_gate") and not c.ssm("D_has_hdim")
    m1 = MambaConfig()
    assert (m1.layer, m1.d_state, m1.dt_rank, m1.conv_dim, m1.delta_width) == ("Mamba1", 16, 4, 128, 128)


@pytest.mark.parametrize("ssm,msg", [
    ({"headdim": 48}, r"d_inner = expand \* d_model = 128 is not a multiple of headdim=48"),
    ({"headdim": 32, "ngroups": 3}, r"ngroups=3 must divide nheads = d_inner / headdim = 4"),
    ({"dt_rank": 4}, r"unknown ssm_cfg keys \['dt_rank'\] for Mamba2"),
    ({"headdim": 0}, r"ssm_cfg.headdim must be a positive integer, got 0"),
    ({"A_init_range": [0, 16]}, r"A_init_range must satisfy 0 < low <= high"),
])
def test_mamba2_config_errors_name_the_values(ssm, msg):
    with pytest.raises(ValueError, match=msg):
        MambaConfig(ssm_cfg={"layer": "Mamba2", **ssm})


def test_unknown_layer_and_mamba1_keys():
    with pytest.raises(ValueError, match="only Mamba1 and Mamba2 layers are supported, got ssm_cfg.layer='Mamba3'"):
        MambaConfig(ssm_cfg={"layer": "Mamba3"})
    with pytest.raises(ValueError, match=r"unknown ssm_cfg keys \['headdim'\] for Mamba1"):
        MambaConfig(ssm_cfg={"headdim": 16})
    with pytest.raises(AttributeError, match="dt_rank is a Mamba1 setting"):
        _ = MambaConfig(ssm_cfg={"layer": "Mamba2", "headdim": 16}).dt_rank


def test_config_round_trips_through_mamba_ssm_json():
    c = small_cfg(ngroups=2, norm_epsilon=1e-6)
    d = json.loads(json.dumps(c.to_mamba_ssm_dict()))
    assert d["ssm_cfg"]["layer"] == "Mamba2"
    assert MambaConfig.from_mamba_ssm_dict(d, norm_epsilon=1e-6) == c
    m1 = MambaConfig(ssm_cfg={"layer": "Mamba1", "d_state": 8})     # the explicit default is the same config
    assert m1 == MambaConfig(ssm_cfg={"d_state": 8}) and m1.to_mamba_ssm_dict()["ssm_cfg"]["layer"] == "Mamba1"


# --- the mixer --------------------------------------------------------------------------------------

def test_parameters_have_mamba_ssm_names_shapes_and_init():
    torch.manual_seed(0)
    cfg = small_cfg(ngroups=2)
    D, N, H, G = 128, 8, 16, 2
    m = Mamba2Mixer(cfg)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"in_proj.weight": (2 * D + 2 * G * N + H, 64), "conv1d.weight": (D + 2 * G * N, 1, 4),
                      "conv1d.bias": (D + 2 * G * N,), "dt_bias": (H,), "A_log": (H,), "D": (H,),
                      "norm.weight": (D,), "out_proj.weight": (64, D)}
    assert m.A.shape == (H,) and torch.equal(m.A, -torch.exp(m.A_log))
    assert (-m.A).min() >= 1 and (-m.A).max() <= 16                     # A_init_range (1, 16)
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001         # dt_min, dt_max
    assert torch.equal(m.D, torch.ones(H))
    assert (m.unit, m.n_units) == ("head", H)
    st = m.init_state(3)
    assert st.conv.shape == (3, D + 2 * G * N, 3) and st.ssm.shape == (3, H, 8, N) and st.ssm.dtype == torch.float32


@pytest.mark.parametrize("ngroups", [1, 2])
def test_mixer_matches_hf_mixer(ngroups):
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMixer
    torch.manual_seed(0)
    cfg = small_cfg(ngroups)
    ours = jitter(Mamba2Mixer(cfg)).eval()
    theirs = HFMixer(hf_config(cfg), layer_idx=0).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    h = torch.randn(2, 37, 64)
    with torch.no_grad():
        out, _, rec = ours(h, backend="reference")
        assert rec is None
        assert rel(out, theirs(h)) < 1e-5


def test_D_per_channel_is_D_per_head_repeated():
    """D_has_hdim (mamba_ssm's option, D [H * P]) with each head's value repeated P times is D [H]."""
    torch.manual_seed(0)
    per_head = jitter(Mamba2Mixer(small_cfg(2))).eval()
    per_channel = Mamba2Mixer(MambaConfig(d_model=64, ssm_cfg={**SMALL, "ngroups": 2, "D_has_hdim": True}))
    sd = per_head.state_dict()
    sd["D"] = sd["D"].repeat_interleave(8)                             # [H] -> [H * P]
    per_channel.load_state_dict(sd)
    h = torch.randn(1, 20, 64)
    with torch.no_grad():
        assert torch.equal(per_channel(h, backend="reference")[0], per_head(h, backend="reference")[0])


@pytest.mark.parametrize("ssm", [{"rmsnorm": False}, {"norm_before_gate": True}])
def test_other_gate_placements_stream_exactly(ssm):
    """mamba_ssm's rmsnorm=False (y * silu(z), no norm, no norm.weight) and norm_before_gate=True
    (norm(y) * silu(z)); HF has neither, so these check that each runs and carries its state."""
    torch.manual_seed(0)
    m = jitter(Mamba2Mixer(MambaConfig(d_model=64, ssm_cfg={**SMALL, **ssm}))).eval()
    assert ("norm.weight" in m.state_dict()) == ssm.get("rmsnorm", True)
    h = torch.randn(2, 30, 64)
    with torch.no_grad():
        whole, _, _ = m(h, backend="reference")
        a, st, _ = m(h[:, :13], backend="reference")
        b, _, _ = m(h[:, 13:], st, backend="reference")
        assert (torch.cat([a, b], dim=1) - whole).abs().max() < 1e-5
        other = jitter(Mamba2Mixer(small_cfg(1))).eval()
        other.load_state_dict(m.state_dict(), strict=False)
        assert not torch.allclose(other(h, backend="reference")[0], whole, atol=1e-3)   # the placement matters


# --- the LM against HF, both directions --------------------------------------------------------------

@pytest.mark.parametrize("ngroups", [1, 2])
def test_hf_saved_directory_loads_with_the_same_logits(tmp_path, ngroups):
    torch.manual_seed(ngroups)
    hf = jitter(transformers.Mamba2ForCausalLM(hf_config(small_cfg(ngroups))), seed=ngroups).eval()
    hf.save_pretrained(tmp_path)
    lm = load_checkpoint(tmp_path)
    assert lm.config.layer == "Mamba2" and lm.config.ngroups == ngroups and lm.config.nheads == 16
    tokens = torch.randint(0, 37, (2, 77))                              # 77: not a multiple of chunk_size 16
    with torch.no_grad():
        want = hf(tokens).logits
        for backend in ("reference", "torch", "cpu"):
            assert (lm(tokens, backend=backend) - want).abs().max().item() < 1e-4, backend


@pytest.mark.parametrize("ngroups", [1, 2])
def test_our_checkpoint_loads_into_hf_with_the_same_logits(tmp_path, ngroups):
    torch.manual_seed(10 + ngroups)
    cfg = small_cfg(ngroups)
    lm = jitter(MambaLM(cfg), seed=10 + ngroups).eval()
    path = tmp_path / "m2.safetensors"
    save_checkpoint(lm, path)
    sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in load_file(str(path)).items()}
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["config"])
    hf = transformers.Mamba2ForCausalLM(hf_config(MambaConfig.from_mamba_ssm_dict(meta)))
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    hf.tie_weights()
    hf.eval()
    tokens = torch.randint(0, 37, (3, 50))
    with torch.no_grad():
        assert (hf(tokens).logits - lm(tokens)).abs().max().item() < 1e-4


# --- our checkpoints, streaming, records ---------------------------------------------------------------

@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(3)
    return jitter(MambaLM(small_cfg(2)), seed=3).eval()


def test_safetensors_round_trip_is_exact(lm, tmp_path):
    path = tmp_path / "m2.safetensors"
    sha = save_checkpoint(lm, path, task={"kind": "test"})
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert {"backbone.layers.1.mixer.dt_bias", "backbone.layers.1.mixer.norm.weight",
            "backbone.embedding.weight"} <= keys and "lm_head.weight" not in keys
    back = load_checkpoint(path)
    assert back.config == lm.config and back.task == {"kind": "test"} and back.checkpoint_sha256 == sha
    for (k, a), (k2, b) in zip(lm.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    tokens = torch.randint(0, 37, (2, 40))
    with torch.no_grad():
        assert torch.equal(lm(tokens), back(tokens))


def test_mamba1_weights_under_a_mamba2_config_are_named(tmp_path):
    path = tmp_path / "m1.safetensors"
    save_checkpoint(MambaLM(MambaConfig()), path)
    sd = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    c = json.loads(meta["config"])
    c["ssm_cfg"] = {"layer": "Mamba2", "headdim": 16}
    meta["config"] = json.dumps(c)
    from safetensors.torch import save_file
    save_file(sd, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="the weights are Mamba1 layers but the config says ssm_cfg.layer='Mamba2'"):
        load_checkpoint(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("backend", ["reference", "torch", "cpu"])
def test_streaming_in_chunks_equals_one_pass(lm, backend):
    tokens = torch.randint(0, 37, (2, 61))
    with torch.no_grad():
        whole, _ = lm.forward_stream(tokens, backend=backend)
        states, parts = None, []
        for s, e in [(0, 1), (1, 3), (3, 20), (20, 61)]:               # pieces shorter than d_conv - 1 too
            out, states = lm.forward_stream(tokens[:, s:e], states, backend=backend)
            parts.append(out)
        assert (torch.cat(parts, dim=1) - whole).abs().max().item() < 1e-5
        one, final = lm.forward_stream(tokens, lm.init_states(2), backend=backend)
        assert torch.equal(one, whole)
        for a, b in zip(final, states):                                 # in_proj over other lengths: rounding
            assert (a.ssm - b.ssm).abs().max() < 1e-5 and (a.conv - b.conv).abs().max() < 1e-5


def test_records_have_the_documented_shapes(lm):
    tokens = torch.randint(0, 37, (2, 23))
    res = run(lm, tokens, include=("ssm_input", "delta", "decay", "B", "C", "state_norm", "ssm_output",
                                   "resid_post"), states=True, backend="torch")
    B, L, D, H, P, G, N = 2, 23, 128, 16, 8, 2, 8
    for rec in res.records:
        assert {k: tuple(v.shape) for k, v in rec.items()} == {
            "ssm_input": (B, L, D), "delta": (B, L, H), "decay": (B, L, H), "B": (B, L, G, N), "C": (B, L, G, N),
            "state_norm": (B, L, H), "ssm_output": (B, L, D), "resid_post": (B, L, 64), "states": (B, L, H, P, N)}
    with torch.no_grad():
        assert torch.equal(res.logits, lm(tokens, backend="torch"))    # recording changes nothing


def test_decay_is_exp_delta_A_and_state_norm_is_the_norm_of_states(lm):
    tokens = torch.randint(0, 37, (1, 40))
    res = run(lm, tokens, include=("delta", "decay", "state_norm"), states=True, backend="reference")
    for layer, rec in zip(lm.backbone.layers, res.records):
        A = layer.mixer.A                                               # [H]
        assert torch.allclose(rec["decay"], torch.exp(rec["delta"] * A), rtol=1e-6, atol=0)
        assert ((rec["decay"] > 0) & (rec["decay"] < 1)).all()
        norms = torch.linalg.vector_norm(rec["states"], dim=(-2, -1))   # [B, L, H]
        assert torch.allclose(rec["state_norm"], norms, rtol=1e-5, atol=1e-6)
    assert torch.equal(res.final_states[0].ssm, res.records[0]["states"][:, -1])


def test_clamping_a_heads_delta_freezes_that_head_only(lm):
    """ClampDelta on Mamba-2 names heads: Δ = 0 there means decay 1 and no input, so the head's
    state is frozen from from_t on; the other heads keep moving."""
    tokens = torch.randint(0, 37, (1, 30))
    res = run(lm, tokens, [ClampDelta(layer=1, channels=[3], from_t=10)], include=("delta", "state_norm"),
              states=True, backend="reference")
    rec = res.records[1]
    clamped = rec["delta"][0, :, 3] == 0                                # [L]
    assert clamped[11:].all() and not clamped[:10].any() and (rec["delta"][0, :, 4] > 0).all()
    h = rec["states"][0]                                                # [L, H, P, N]
    for t in clamped.nonzero().flatten().tolist():
        assert torch.equal(h[t, 3], h[t - 1, 3]), t                     # decay 1, no input: frozen
    assert not torch.equal(h[15, 4], h[29, 4])
    clean = run(lm, tokens, include=("state_norm",), backend="reference").records[1]["state_norm"]
    assert torch.equal(clean[0, :10], rec["state_norm"][0, :10])
