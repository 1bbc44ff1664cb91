"""training/widen.py: a wider Mamba-1 that computes what the trained one does, and whose new width trains."""
import pytest
import torch

from model import MambaConfig, MambaLM, load_checkpoint, save_checkpoint
from training.train import TrainConfig, train
from training.widen import WidenError, main as widen_main, resize_state, widen


def trained_like(d_model=16, vocab=20, seed=0):
    """A small model with every weight random (not the init's zeros/ones), so that a misplaced block shows."""
    torch.manual_seed(seed)
    lm = MambaLM(MambaConfig(d_model=d_model, n_layer=2, vocab_size=vocab))
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return lm.eval()


@pytest.mark.parametrize("d_model", [16, 32, 48])
def test_widened_model_computes_the_same_logits(d_model):
    lm = trained_like()
    wide = widen(lm, d_model, seed=1).eval()
    c = wide.config
    assert (c.d_model, c.d_inner, c.d_state, c.n_layer) == (d_model, 2 * d_model, 16, 2)
    assert c.dt_rank == -(-d_model // 16) and c.norm_epsilon == pytest.approx(1e-5 * 16 / d_model)
    tokens = torch.randint(0, 20, (3, 37))                                   # [B, L], L odd
    with torch.no_grad():
        a, b = lm(tokens), wide(tokens)                                      # [B, L, V]
        # tiny embeddings are where RMSNorm's eps matters: the eps rescaling must keep those exact too
        lm.backbone.embedding.weight.mul_(1e-3)
        wide.backbone.embedding.weight.mul_(1e-3)
        c_, d_ = lm(tokens), wide(tokens)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    assert (c_ - d_).abs().max() <= 1e-5 * c_.abs().max()
    if d_model > 16:                                                        # the new channels exist and run
        assert wide.backbone.layers[0].mixer.in_proj.weight[16 * 2:2 * d_model].abs().sum() > 0


def test_the_new_width_gets_gradients():
    """Every block that starts at zero must move, or the widening buys nothing: on the first step the
    new channels' outputs (their input is nonzero); on the second, through those, the residual stream's
    new dims; on the third, the old channels' reading of those dims (nonzero only from then on)."""
    torch.manual_seed(0)
    wide = widen(trained_like(), 32)
    opt = torch.optim.Adam(wide.parameters(), lr=1e-2)
    m = wide.backbone.layers[0].mixer
    first_moved = {}
    for step in (1, 2, 3, 4):
        opt.zero_grad()
        wide(torch.randint(0, 20, (2, 19))).logsumexp(-1).sum().backward()
        blocks = {"out_proj new channels": m.out_proj.weight.grad[:16, 32:],
                  "x_proj from new channels": m.x_proj.weight.grad[:, 32:],
                  "dt_proj new rank": m.dt_proj.weight.grad[:32, 1:],
                  "embedding new dims": wide.backbone.embedding.weight.grad[:, 16:],
                  "out_proj new dims": m.out_proj.weight.grad[16:, :],
                  "in_proj new dims": m.in_proj.weight.grad[:32, 16:]}
        for k, g in blocks.items():
            if g.abs().sum() > 0:
                first_moved.setdefault(k, step)
        opt.step()
    assert first_moved == {"out_proj new channels": 1, "x_proj from new channels": 1, "dt_proj new rank": 1,
                           "embedding new dims": 2, "out_proj new dims": 2, "in_proj new dims": 3}


def test_refusals():
    with pytest.raises(WidenError, match="narrower"):
        widen(trained_like(d_model=32), 16)
    m2 = MambaLM(MambaConfig(d_model=64, n_layer=1, vocab_size=20,
                             ssm_cfg={"layer": "Mamba2", "headdim": 16, "d_state": 16}))
    with pytest.raises(WidenError, match="only Mamba-1"):
        widen(m2, 128)


def test_cli_and_training_from_the_widened_file(tmp_path, capsys):
    """The CLI keeps the task metadata and says where the file came from; --init-from it with the new
    --d-model trains, starting from exactly the widened function (its eps, not the default)."""
    src = tmp_path / "narrow.safetensors"
    lm = trained_like(d_model=32, vocab=17)
    save_checkpoint(lm, src, task={"name": "induction_heads", "steps": 7, "lengths_seen": [24]})
    out = tmp_path / "wide.safetensors"
    assert widen_main([str(src), str(out), "--d-model", "64"]) == 0
    wide = load_checkpoint(out)
    assert wide.config.d_model == 64 and wide.task["steps"] == 7
    assert wide.task["widened_from"] == {"file": "narrow.safetensors", "sha256": load_checkpoint(src).checkpoint_sha256,
                                         "d_model": 32, "seed": 0}
    assert widen_main([str(src), str(tmp_path / "x.safetensors"), "--d-model", "16"]) == 2
    assert "narrower" in capsys.readouterr().err
    cfg = TrainConfig(seed=3, steps=8, batch=2, train_len=24, eval_every=100, val="24:4", stop_after=100,
                      out=str(tmp_path / "run"), threads=1, log_every=1, d_model=64, init_from=str(out), lr=1e-9)
    train(cfg, progress=False)
    after = load_checkpoint(tmp_path / "run" / "model.safetensors").eval()
    assert after.config.norm_epsilon == wide.config.norm_epsilon == pytest.approx(5e-6)
    assert after.task["widened_from"] == wide.task["widened_from"]                  # the lineage is kept
    tokens = torch.randint(0, 17, (2, 30))
    with torch.no_grad():
        a, b = lm.eval()(tokens), after(tokens)
    assert (a - b).abs().max() <= 1e-3 * a.abs().max()                       # one step of lr 1e-9


def test_resize_state():
    """More state dims: the same logits (the new ones unread at first, but written, so C trains);
    fewer: the first N kept as they were."""
    lm = trained_like()
    tokens = torch.randint(0, 20, (2, 23))
    bigger = resize_state(lm, 24).eval()
    with torch.no_grad():
        a, b = lm(tokens), bigger(tokens)
    assert bigger.config.d_state == 24 and (a - b).abs().max() <= 1e-6 * a.abs().max()
    xp = bigger.backbone.layers[1].mixer.x_proj.weight                            # [R + 2N, E]
    r = lm.config.dt_rank
    assert xp[r + 16:r + 24].abs().sum() > 0 and xp[r + 24 + 16:].abs().sum() == 0   # new B written, new C unread
    smaller = resize_state(lm, 4)
    old, new = lm.backbone.layers[0].mixer, smaller.backbone.layers[0].mixer
    assert torch.equal(new.A_log, old.A_log[:, :4])
    assert torch.equal(new.x_proj.weight[r + 4:], old.x_proj.weight[r + 16:r + 20])  # C's first 4 rows
    assert torch.equal(new.in_proj.weight, old.in_proj.weight)
    with pytest.raises(WidenError, match=">= 1"):
        resize_state(lm, 0)
