"""The LM head reduced a block at a time (model.run's `head`, model.trace.NextTokens) equals the same
reduction of the whole logits [L, V]; what a trace keeps per step (bytes_per_step) is what it holds;
and the app's length cap derived from it, with its message."""
import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import MambaConfig, MambaLM, run
from model.run import STREAM_CHUNK, default_chunk_len
from model.trace import bytes_per_step, next_token_summary
from tasks import MAX_LEN, IdTask, TokenError

trace_mod = importlib.import_module("model.trace")      # `model.trace` as an attribute is the function
V = 1100                       # > FULL_PROBS_MAX_VOCAB: the trace keeps top-k and p(next) only


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(3)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=V, ssm_cfg={"d_state": 4})).eval()


def tokens_of(L: int) -> torch.Tensor:
    return torch.randint(0, V, (L,), generator=torch.Generator().manual_seed(L))        # [L]


@pytest.mark.parametrize("L, chunk_len, rows", [(37, 16, 5), (1, 16, 5), (40, 8, 3), (300, 128, 256)])
def test_blockwise_trace_equals_the_reduction_of_the_whole_logits(lm, monkeypatch, L, chunk_len, rows):
    """Top-k ids and probs, p and log p of the next token and the loss, from a trace whose head ran
    `rows` steps at a time (chunks and blocks not dividing L; L = 1), against the same reduction of
    lm(tokens)'s whole logits; and the head never saw more than `rows` steps at once."""
    monkeypatch.setattr(trace_mod, "HEAD_ROWS", rows)
    seen = []
    hook = lm.lm_head.register_forward_hook(lambda m, i, out: seen.append(out.shape[1]))
    try:
        tokens = tokens_of(L)
        tr = lm.trace(tokens, top_k=7, chunk_len=chunk_len, include=("delta",))
    finally:
        hook.remove()
    assert tr.logits is None and tr.probs is None
    assert max(seen) <= rows and sum(seen) == L                  # one block at a time, every step once
    with torch.no_grad():
        logits = lm(tokens[None])[0, :, :V]                     # [L, V] held whole
    want = next_token_summary(logits, tokens, 7, False)
    assert np.array_equal(tr.top_k_ids, want["top_k_ids"])
    assert np.allclose(tr.top_k_probs, want["top_k_probs"], rtol=1e-5, atol=1e-8)
    assert np.allclose(tr.logp_next, want["logp_next"], atol=1e-5, equal_nan=True)
    assert np.allclose(tr.p_next, want["p_next"], rtol=1e-5, atol=1e-8, equal_nan=True)
    assert np.isnan(tr.p_next[-1]) and np.isnan(tr.logp_next[-1])
    # and against torch's own softmax and loss, independently of NextTokens
    p = torch.softmax(logits.double(), -1)                      # [L, V]
    assert np.allclose(tr.top_k_probs, np.take_along_axis(p.numpy(), tr.top_k_ids, 1), rtol=1e-4, atol=1e-7)
    if L > 1:
        loss = F.cross_entropy(logits[:-1].double(), tokens[1:]).item()
        assert abs(-np.nanmean(tr.logp_next.astype(np.float64)) - loss) < 1e-5


def test_run_hands_the_kept_logits_over_in_ordered_blocks(lm):
    """run(head=...): blocks of at most head_rows steps, in order, covering the kept steps once; their
    logits are the ones run() returns without a reducer; RunResult.logits is then None."""
    tokens = tokens_of(45)[None]                                # [1, 45]
    full = run(lm, tokens, chunk_len=16).logits                 # [1, 45, V']
    for num_last in (0, 20, 1):
        blocks = []
        res = run(lm, tokens, chunk_len=16, num_last_tokens=num_last, head=lambda lg, t0: blocks.append((t0, lg)),
                  head_rows=6)
        assert res.logits is None
        starts = [t0 for t0, _ in blocks]
        kept = 45 - num_last if num_last else 0
        assert starts == sorted(starts) and starts[0] == kept
        assert all(lg.shape[1] <= 6 for _, lg in blocks)
        got = torch.cat([lg for _, lg in blocks], 1)            # [1, kept steps, V']
        assert got.shape == full[:, kept:].shape
        assert torch.allclose(got, full[:, kept:], atol=1e-6)
    with pytest.raises(ValueError, match="head_rows must be >= 1"):
        run(lm, tokens, head=lambda lg, t0: None, head_rows=0)


def test_a_kept_distribution_is_the_forwards_own(lm):
    """full_probs: the logits come a whole chunk at a time, bit for bit lm(tokens)'s (no records: the
    recording path discretises Δ apart and may round differently)."""
    tokens = tokens_of(30)
    tr = lm.trace(tokens, full_probs=True, chunk_len=16, include=())
    with torch.no_grad():
        assert np.array_equal(tr.logits, lm(tokens[None], chunk_len=16)[0, :, :V].numpy())
    assert np.allclose(tr.probs.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("include, full", [(("delta", "state_norm"), None), (None, None), (None, True), ((), False)])
def test_bytes_per_step_is_what_a_trace_holds(lm, include, full):
    L = 13
    tr = lm.trace(tokens_of(L), include=include, full_probs=full, top_k=5)
    held = sum(a.nbytes for a in tr.to_tensors().values())
    assert held == L * bytes_per_step(lm, include, top_k=5, full_probs=full)


def test_the_app_cap_follows_the_trace_and_says_why(lm, monkeypatch):
    from ui import common
    monkeypatch.setattr(common, "MODEL", common.Loaded(lm, "tiny", "", None, IdTask(V)))
    assert common.length_cap() == MAX_LEN                       # a tiny model: the logits no longer cap it
    per_token = bytes_per_step(lm, common.CHART_QUANTITIES)
    monkeypatch.setattr(common, "TRACE_MAX_BYTES", 20 * per_token)
    assert common.length_cap() == 20
    assert common.length_cap(include=None) < 20                 # an export keeps every quantity
    assert common.tokens(" ".join(["5"] * 20)).size == 20
    with pytest.raises(TokenError, match=r"21 tokens, over the cap of 20 \(the cap for a model this size: a trace "
                                         r"of Δ and the state norm of its 2 layers keeps [\d.]+ KB per token"):
        common.tokens(" ".join(["5"] * 21))
    with pytest.raises(TokenError, match="a trace of every quantity of its 2 layers"):
        common.tokens(" ".join(["5"] * 20), include=None)


def test_the_cap_and_the_chunk_of_a_130m_model():
    """The derivation in ui/common.py: 24 layers x 1536 channels, Δ and the state norm -> 7,278
    tokens in 2 GiB (was 2^28 / 50,280 = 5,338 for the logits alone); its chunks are 682 tokens
    (model.run.CHUNK_ELEMS), a 2-layer model's STREAM_CHUNK."""
    from ui import common
    big = MambaLM(MambaConfig(d_model=768, n_layer=24, vocab_size=50280), device="meta")     # no memory
    assert bytes_per_step(big, common.CHART_QUANTITIES) == 4 * (24 * 2 * 1536 + 10 + 2) + 8 * 11
    assert common.length_cap(big) == 7278 > (1 << 28) // 50280
    assert default_chunk_len(big) == 682 and default_chunk_len(MambaLM(MambaConfig(), device="meta")) == STREAM_CHUNK


def test_watched_ids_keep_their_p_at_every_step_and_survive_a_save(lm, monkeypatch, tmp_path):
    """trace(watch=ids): p(next token = id) at every step from the blocks (a task's targets where the
    full distribution is not kept); refused outside the vocabulary; saved and loaded with the trace."""
    monkeypatch.setattr(trace_mod, "HEAD_ROWS", 16)
    tokens = tokens_of(40)
    tr = lm.trace(tokens, watch=[1099, 5, 5, 700], include=("delta",))
    assert tr.probs is None and tr.watch_ids.tolist() == [5, 700, 1099] and tr.watch_probs.shape == (40, 3)
    with torch.no_grad():
        p = torch.softmax(lm(tokens[None])[0, :, :V].double(), -1).numpy()       # [L, V]
    assert np.allclose(tr.watch_probs, p[:, [5, 700, 1099]], rtol=1e-4, atol=1e-8)
    tr.save(tmp_path / "t.safetensors")
    back = trace_mod.Trace.load(tmp_path / "t.safetensors")
    assert np.array_equal(back.watch_ids, tr.watch_ids) and np.array_equal(back.watch_probs, tr.watch_probs)
    assert lm.trace(tokens, include=("delta",)).watch_ids is None
    for bad in ([V], [-1], list(range(trace_mod.WATCH_MAX + 1))):
        with pytest.raises(ValueError, match="watch takes at most"):
            lm.trace(tokens, watch=bad)
