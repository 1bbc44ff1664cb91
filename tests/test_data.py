"""Generator invariants for the induction-heads task."""
import pytest
import torch

from model.data import TRIGGER, induction_batch


@pytest.mark.parametrize("L", [3, 4, 64, 257])
def test_canonical_invariants(L):
    b = induction_batch(512, L, seed=1)
    t = b.tokens
    assert t.shape == (512, L) and t.dtype == torch.long
    assert ((t == TRIGGER).sum(1) == 2).all()                       # exactly two triggers
    assert (t[:, -1] == TRIGGER).all()                              # the query at the end
    p = b.trigger_pos[:, 0]
    assert ((p >= 0) & (p <= L - 3)).all()
    assert (t.gather(1, p[:, None])[:, 0] == TRIGGER).all()
    assert torch.equal(t.gather(1, (p + 1)[:, None])[:, 0], b.target)   # M right after the trigger
    assert ((t >= 0) & (t <= TRIGGER)).all() and (b.target < 16).all()


def test_seeded_and_varied():
    a, b = induction_batch(64, 100, seed=3), induction_batch(64, 100, seed=3)
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, induction_batch(64, 100, seed=4).tokens)
    pos = induction_batch(4096, 100, seed=0).trigger_pos[:, 0]
    assert pos.min() == 0 and pos.max() == 97                       # the whole range [0, L-3] occurs
    assert len(induction_batch(4096, 100, seed=0).target.unique()) == 16


def test_variants():
    b = induction_batch(256, 50, seed=0, trigger_pos=10)
    assert (b.tokens[:, 10] == TRIGGER).all()
    b = induction_batch(256, 50, seed=0, filler_excludes_memory=True)
    filler = b.tokens.clone()
    filler.scatter_(1, b.trigger_pos + 1, -1)
    assert not (filler == b.target[:, None]).any()
    b = induction_batch(256, 40, seed=0, n_triggers=3)
    assert ((b.tokens == TRIGGER).sum(1) == 4).all()
    assert (b.trigger_pos.diff(dim=1) >= 2).all()
    assert torch.equal(b.tokens.gather(1, b.trigger_pos + 1), b.memory)
    assert torch.equal(b.target, b.memory[:, 0])


@pytest.mark.parametrize("kw,msg", [(dict(length=2), "length must be"),
                                    (dict(length=10, trigger_pos=8), "trigger_pos"),
                                    (dict(length=5, n_triggers=3), "do not fit")])
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        induction_batch(2, **kw)
