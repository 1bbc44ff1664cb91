"""The memory map's closed form against the explicit recurrence, and the one-write clamp's bookkeeping."""
import numpy as np
import pytest
import torch

from analysis.memory_lab import clamp_matrix, memory_map, shared_layout_batch
from model import MambaConfig, MambaLM, run
from tasks import MQAR_TASK, SELECTIVE_COPYING
from tasks import mqar as mq


def small_lm(task, layer="Mamba1", seed=0):
    torch.manual_seed(seed)
    ssm = {"layer": layer, "d_state": 8} if layer == "Mamba1" else \
        {"layer": "Mamba2", "d_state": 8, "headdim": 8, "ngroups": 2, "chunk_size": 8}
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=task.vocab_size, ssm_cfg=ssm)).eval()


def recurrence_terms(lm, tokens, layer, window):
    """h_T per unit from the explicit recurrence with and without the input of the steps in
    `window`: their difference is that write's term at the last step (Δ untouched: the scan is
    linear in x given Δ)."""
    res = run(lm, torch.from_numpy(tokens)[None], include=("delta", "ssm_input", "B"))
    rec, mixer = res.records[layer], lm.backbone.layers[layer].mixer
    delta = rec["delta"][0].double().numpy()
    x = rec["ssm_input"][0].double().numpy()
    Bm = rec["B"][0].double().numpy()
    A = mixer.A.detach().double().numpy()
    L = tokens.shape[0]

    def final(drop):
        if A.ndim == 1:                                                    # Mamba-2: [H, P, N]
            H, G = delta.shape[1], Bm.shape[1]
            g = np.arange(H) // (H // G)
            xs = x.reshape(L, H, -1)
            h = np.zeros((H, xs.shape[2], Bm.shape[2]))
            for t in range(L):
                u = 0 * xs[t] if t in drop else xs[t]
                h = np.exp(delta[t] * A)[:, None, None] * h + (delta[t][:, None] * u)[..., None] * Bm[t][g][:, None]
            return h.reshape(H, -1)
        h = np.zeros((x.shape[1], Bm.shape[1]))                           # Mamba-1: [D, N]
        for t in range(L):
            u = 0 * x[t] if t in drop else x[t]
            h = np.exp(delta[t][:, None] * A) * h + (delta[t] * u)[:, None] * Bm[t][None]
        return h

    return np.linalg.norm(final(()) - final(range(*window)), axis=-1)     # [U]


@pytest.mark.parametrize("layer_kind", ["Mamba1", "Mamba2"])
def test_holders_are_the_write_terms_of_the_recurrence(layer_kind):
    lm = small_lm(SELECTIVE_COPYING, layer_kind)
    tokens = SELECTIVE_COPYING.batch(1, 21, seed=3, k=3).tokens[0]          # odd length, 3 writes
    tokens[-3:] = 16                                                       # no queries: recall = last step
    m = memory_map(lm, SELECTIVE_COPYING, tokens)
    assert (m.recall == len(tokens) - 1).all() and m.unit == ("head" if layer_kind == "Mamba2" else "channel")
    nxt = list(m.writes[1:]) + [len(tokens) - 1]           # windows: d_conv steps, cut at the next write or the recall
    assert m.windows == [(int(w), int(min(w + 4, n))) for w, n in zip(m.writes, nxt)]
    for layer in range(2):
        for k, w in enumerate(m.writes):
            want = recurrence_terms(lm, tokens, layer, m.windows[k])
            np.testing.assert_allclose(m.holders[layer][k], want, rtol=1e-6, atol=1e-9)
            last = np.searchsorted(m.times, len(tokens) - 1)
            np.testing.assert_allclose(m.retained[layer][k, last], np.linalg.norm(want), rtol=1e-6)
            assert (m.retained[layer][k, m.times < w] == 0).all() and m.retained[layer][k, m.times == w][0] > 0
        assert (m.share[layer] >= 0).all()


def test_recall_steps_follow_the_queries():
    t = MQAR_TASK.parse("5 4100 7 4200 _ _ 7 _ 5 _")
    m = memory_map(small_lm(MQAR_TASK), MQAR_TASK, t)
    assert m.writes.tolist() == [1, 3] and m.recall.tolist() == [8, 6]     # key 5's value is asked last
    assert m.top_holders(0, 0, n=3) == sorted(range(32), key=lambda u: -m.holders[0][0][u])[:3]
    with pytest.raises(ValueError, match="writes nothing"):
        memory_map(small_lm(MQAR_TASK), MQAR_TASK, MQAR_TASK.parse("_ _ 5 _"))


def test_shared_layout_and_clamp_matrix():
    tokens = shared_layout_batch(SELECTIVE_COPYING, 6, 24, seed=1, k=3)
    rows = [SELECTIVE_COPYING.positions(t) for t in tokens]
    assert len({p.writes for p in rows}) == 1 and len({tuple(p.targets) for p in rows}) > 1
    lm = small_lm(SELECTIVE_COPYING)
    cm = clamp_matrix(lm, SELECTIVE_COPYING, tokens, layers=[0, 1])
    assert cm.acc.shape == (4, 3) and cm.n_seqs == 6 and np.isfinite(cm.acc).all()
    # the bookkeeping against a direct count: no clamp = the plain argmax at each marker
    logits = lm(torch.from_numpy(tokens))
    right = (logits[:, 24:].argmax(-1).numpy() == tokens[:, rows[0].writes]).mean(0)
    np.testing.assert_allclose(cm.acc[0], right)
    assert cm.baseline == pytest.approx(right.mean())
    mixed = tokens.copy()
    mixed[1] = SELECTIVE_COPYING.batch(1, 24, seed=9, k=3).tokens[0]
    with pytest.raises(ValueError, match="same write steps"):
        clamp_matrix(lm, SELECTIVE_COPYING, mixed, layers=[1])
    mq_tokens = shared_layout_batch(MQAR_TASK, 4, 24, seed=2, n_pairs=3)
    assert (mq_tokens[:, 1:6:2] >= mq.V_DEFAULT // 2).all()
    assert clamp_matrix(small_lm(MQAR_TASK), MQAR_TASK, mq_tokens, layers=[1], window=2).acc.shape == (4, 3)


@pytest.mark.parametrize("task, options, length", [("selective_copying", {"k": 3}, 20), ("mqar", {"n_pairs": 3}, 18)])
def test_memory_report_end_to_end(tmp_path, task, options, length):
    import json

    from analysis import memory_report
    from model import save_checkpoint
    from tasks import TASKS
    from viz.figures import render

    lm = small_lm(TASKS[task])
    path = tmp_path / "m.safetensors"
    save_checkpoint(lm, path, task=TASKS[task].metadata(length, options=options))
    memory_report.main([str(path), "--seqs", "4", "--order-seqs", "6", "--out", str(tmp_path / "docs")])
    md = (tmp_path / "docs" / f"{task}.md").read_text()
    assert "## The answer" in md and "| layer | write kept at recall" in md and md.count("\n| ") >= 3
    s = json.loads((tmp_path / "docs" / task / "study.json").read_text())
    order = s["order"]["per_query"]
    assert order["length"] == length and order["samples"] == 6 and len(order["correct"]) == 3
    assert "## Which memory each query reads" in md and "| accuracy | " in md
    if task == "selective_copying":        # the lead sweep: data in the last length/4 steps after m * 5 of noise
        assert [r["lead"] for r in s["order"]["lead"]] == [0, 5, 10, 15, 25, 35]
        assert [r["length"] for r in s["order"]["lead"]] == [5, 10, 15, 20, 30, 40]
        assert "## Time before the data" in md and md.count("\n| 35 | 40 | ") == 1
        # the window run from the state a lead leaves is the full sequence with that lead (same draws)
        kept = s["order"]["kept"]
        assert (kept["short"], kept["long"]) == (5, 35) and kept["rows"][0]["label"] == "lead 5"
        assert kept["rows"][0]["correct"] == s["order"]["lead"][1]["correct"]
        assert kept["rows"][1]["correct"] == s["order"]["lead"][-1]["correct"]
        # two leads, then each layer's state swapped both ways, then the top 1, 4 and 16 units (the
        # swaps' exactness: test_copy_order_state_swaps_are_exact)
        assert len(kept["rows"]) == 2 + 2 * 2 + 3 and "### Where the lead is kept" in md
    else:
        assert "lead" not in s["order"] and "## Time before the data" not in md
    assert len(s["writes"]) == 3 and len(s["layers"]) == 2 and 0 <= s["accuracy"] <= 1
    assert s["options"] == options and s["length"] == length
    acc = np.array(s["layers"][s["memory_layer"]]["clamp"]["4"]["acc"], dtype=float)
    assert acc.shape == (4, 3)
    assert len(render(tmp_path / "docs" / task / "figures.json")) == 3          # PNGs drawn by viz.figures


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_copy_order_state_swaps_are_exact(layer):
    """A window run from the state a lead leaves is the full run with that lead; moving every layer's
    state (or every unit of one layer) from another lead is that lead; from_states scores the last K steps only."""
    from analysis.copy_order import _mixed, from_states, lead_states
    from tasks import SELECTIVE_COPYING
    from tasks.selective_copy import NOISE

    lm = small_lm(SELECTIVE_COPYING, layer)
    b = SELECTIVE_COPYING.batch(3, 12, seed=1, k=3)
    window, q = torch.from_numpy(b.tokens), torch.from_numpy(b.queries)
    full = torch.cat([torch.full((3, 9), NOISE), window], 1)
    want = lm(full)[:, -3:, :SELECTIVE_COPYING.vocab_size]
    S, L = lead_states(lm, 9), lead_states(lm, 4)
    torch.testing.assert_close(from_states(lm, S)(window, q), want, rtol=1e-3, atol=2e-4)
    swapped = _mixed(_mixed(L, S, 0), S, 1)
    torch.testing.assert_close(from_states(lm, swapped)(window, q), want, rtol=1e-3, atol=2e-4)
    every = _mixed(L, S, 1, torch.arange(S[1].ssm.shape[1]))
    torch.testing.assert_close(from_states(lm, _mixed(every, S, 0))(window, q), want, rtol=1e-3, atol=2e-4)
    assert not torch.allclose(from_states(lm, L)(window, q), want, rtol=1e-3, atol=2e-4)   # the lead matters
    with pytest.raises(ValueError, match="last K steps"):
        from_states(lm, S)(window, q - 1)


def test_copy_order_skips_the_lead_sweep_where_the_window_cannot_hold_the_data():
    from analysis.copy_order import copy_order, render
    from tasks import SELECTIVE_COPYING
    o = copy_order(small_lm(SELECTIVE_COPYING), SELECTIVE_COPYING, 12, 2, 0, {"k": 4})
    assert "lead" not in o and "cannot hold 4 data tokens" in o["lead_skipped"]
    assert len(o["per_query"]["correct"]) == 4 and "No lead sweep: the window L/4 = 3" in "\n".join(render(o, "selective_copying"))
