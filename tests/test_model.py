"""The model computes what mamba_ssm / HF transformers compute, causally, in chunks or at once."""
import pytest
import torch

from model import LayerState, MambaConfig, MambaLM
from model.mamba import MambaMixer, mixer_class


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return MambaLM(MambaConfig()).eval()


def test_default_config_is_the_induction_model(lm):
    c = lm.config
    assert (c.d_model, c.n_layer, c.vocab_size, c.d_state, c.d_conv, c.expand, c.dt_rank) == \
        (64, 2, 17, 16, 4, 2, 4)
    assert lm.num_parameters() == 66_560     # 2 x 32,704 per layer + 1,088 embedding + 64 norm_f


def test_logits_shape_and_tied_head(lm):
    tokens = torch.randint(0, 17, (3, 37))
    assert lm(tokens).shape == (3, 37, 17)
    assert lm.lm_head.weight is lm.backbone.embedding.weight


def test_mamba_ssm_initialisation():
    torch.manual_seed(1)
    m = MambaLM(MambaConfig()).backbone.layers[0].mixer
    assert torch.equal(m.A_log, torch.log(torch.arange(1, 17.0)).repeat(128, 1))
    assert torch.equal(m.D, torch.ones(128))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert m.dt_proj.weight.abs().max() <= 4 ** -0.5


def test_A_is_minus_exp_A_log_in_fp32(lm):
    m = lm.backbone.layers[1].mixer
    assert m.A.dtype == torch.float32 and m.A.shape == (128, 16)
    assert torch.equal(m.A, -torch.exp(m.A_log.float()))
    assert torch.allclose(m.A, -torch.arange(1, 17.0).repeat(128, 1))   # the S4D-real init: A = -(1..N)


def test_the_block_picks_the_mixer_by_layer(lm):
    assert mixer_class("Mamba1") is MambaMixer
    assert all(type(b.mixer) is MambaMixer for b in lm.backbone.layers)
    two = MambaLM(MambaConfig(ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16}))
    assert all(type(b.mixer) is mixer_class("Mamba2") and b.mixer.unit == "head" for b in two.backbone.layers)
    with pytest.raises(ValueError, match="unknown mixer layer 'S4'"):
        mixer_class("S4")


def test_init_states_are_zeros_and_start_a_sequence(lm):
    states = lm.init_states(3)
    assert len(states) == 2 and all(isinstance(s, LayerState) for s in states)
    assert states[0].conv.shape == (3, 128, 3) and states[0].ssm.shape == (3, 128, 16)
    assert states[0].ssm.dtype == torch.float32
    assert all(not s.conv.any() and not s.ssm.any() for s in states)
    tokens = torch.randint(0, 17, (3, 20))
    with torch.no_grad():
        a, sa = lm.forward_stream(tokens)
        b, sb = lm.forward_stream(tokens, lm.init_states(3))
    assert (a - b).abs().max() < 1e-6
    assert all((x.ssm - y.ssm).abs().max() < 1e-6 for x, y in zip(sa, sb))


@pytest.mark.parametrize("t", [0, 5, 100, 255])
def test_causality(lm, t):
    tokens = torch.randint(0, 16, (1, 256))
    changed = tokens.clone()
    changed[0, t] = (tokens[0, t] + 1) % 17
    with torch.no_grad():
        a, b = lm(tokens), lm(changed)
    assert torch.equal(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t:], b[:, t:])


def test_streaming_equals_one_pass(lm):
    tokens = torch.randint(0, 17, (2, 300))
    with torch.no_grad():
        full = lm(tokens)
        chunked = lm(tokens, chunk_len=64)
        tail = lm(tokens, chunk_len=64, num_last_tokens=70)
        logits, states = lm.forward_stream(tokens[:, :1])
        for t in range(1, 10):                              # the step API, one token at a time
            step, states = lm.forward_stream(tokens[:, t:t + 1], states)
            logits = torch.cat([logits, step], 1)
    assert (chunked - full).abs().max() < 1e-5
    assert (tail - full[:, -70:]).abs().max() < 1e-5
    assert (logits - full[:, :10]).abs().max() < 1e-5


def test_reference_and_torch_backends_agree(lm):
    tokens = torch.randint(0, 17, (2, 129))
    with torch.no_grad():
        assert (lm(tokens, backend="reference") - lm(tokens, backend="torch")).abs().max() < 1e-5


@pytest.mark.parametrize("grad", [True, False])
def test_logits_at_positions_are_the_full_logits_there(lm, grad):
    tokens = torch.randint(0, 16, (3, 21))
    pos = torch.tensor([[4, 20], [0, 7], [13, 13]])                       # [B, K], repeats allowed
    with torch.set_grad_enabled(grad):
        full, picked = lm(tokens), lm(tokens, positions=pos)              # [B, L, V], [B, K, V]
    want = full.gather(1, pos[..., None].expand(-1, -1, full.shape[-1]))
    assert picked.shape == (3, 2, full.shape[-1]) and torch.allclose(picked, want, atol=1e-5)


def test_training_gradients_flow(lm):
    m = MambaLM(MambaConfig())
    tokens = torch.randint(0, 17, (2, 64))
    loss = torch.nn.functional.cross_entropy(m(tokens)[:, -1], tokens[:, 0])
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.backbone.layers[0].mixer.A_log.grad.abs().sum() > 0


@pytest.mark.parametrize("bad,msg", [
    (torch.tensor([[1, 2, 17]]), "token id 17 is out of range 0..16"),
    (torch.tensor([[-1, 2]]), "token id -1 is out of range"),
    (torch.zeros(1, 0, dtype=torch.long), "empty"),
    (torch.tensor([1, 2, 3]), r"must be \[B, L\]"),
    (torch.tensor([[1.0, 2.0]]), "integer"),
])
def test_bad_tokens_are_named(lm, bad, msg):
    with pytest.raises(ValueError, match=msg):
        lm(bad)
