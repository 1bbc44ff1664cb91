"""The shipped selective-copying and MQAR checkpoints load with their task and score what their
model cards say (small samples; the cards' tables come from training.eval)."""
from pathlib import Path

import pytest

from model import load_checkpoint
from tasks import task_for
from training.eval import count_correct

ROOT = Path(__file__).resolve().parent.parent / "checkpoints"


@pytest.mark.parametrize("name, length, options, floor, ceiling", [
    # trained on a mixture of n_ctx 512..8192 at the end: every one of them copies, and beyond
    ("selective-copy-2layer", 1024, {"k": 16}, 0.94, 1.0),       # card: 98.7% at n_ctx 1024 (was 82.8% before the mixture)
    ("selective-copy-2layer", 2048, {"k": 16}, 0.94, 1.0),       # card: 98.9% at n_ctx 2048
    ("selective-copy-2layer", 4096, {"k": 16}, 0.97, 0.997),     # card: 99.0% at 4096 (paper 99.8%: the gap, kept honest)
    ("selective-copy-2layer", 16384, {"k": 16}, 0.75, 0.97),     # card: 89.3% at 16,384, twice its longest context
    ("mqar-2layer", 64, {"n_pairs": 4}, 0.90, 1.0),              # card: 100.0% at (64, 4)
    ("mqar-2layer", 256, {"n_pairs": 16}, 0.97, 1.0),            # card: 99.3% at (256, 16) (d_model 256; target 99%)
    ("mqar-2layer-d64", 256, {"n_pairs": 16}, 0.82, 0.97),       # card: 90.1% at (256, 16)
])
def test_shipped_memory_checkpoints_score_what_their_cards_say(name, length, options, floor, ceiling):
    lm = load_checkpoint(ROOT / f"{name}.safetensors").eval()
    task = task_for(lm.task)
    assert task.name == {"selective-copy-2layer": "selective_copying", "mqar-2layer": "mqar", "mqar-2layer-d64": "mqar"}[name]
    right, total = count_correct(lm, length, 16, 12345 + length, task=task, options=options)
    assert floor <= right / total <= ceiling, (name, length, right / total)


def test_explore_on_the_mqar_checkpoint_scores_its_queries_from_the_top_k_and_watched_targets(monkeypatch):
    """V = 8,192: the trace keeps the top-k, not [L, V]; a query's target (a value) is not the next
    token, so the app's trace watches the targets. Was: 'without the full distribution only
    next-token targets can be scored' on the shipped checkpoint's first view."""
    import json

    import numpy as np

    from tasks import score
    from ui import common, explore
    monkeypatch.setattr(common, "MODEL", common.load_model(str(ROOT / "mqar-2layer.safetensors")))
    text = explore.first_text()
    plot, summary = explore.show_plot(text, "index", 64, None, None, explore.default_layers(), "max")
    assert "Top-10 next-token predictions" in plot.plot and "p(target" in plot.plot and "correct" in summary
    tokens = common.tokens(text)
    tr, view, _ = explore.trace_view(text)
    assert tr.probs is None and tr.watch_probs.shape == (len(tokens), len(tr.watch_ids))
    full = common.model().trace(tokens, full_probs=True)
    want = score(full.probs, common.MODEL.task.positions(tokens))
    got = view.score
    assert got.n > 0 and got.top == want.top and got.targets == want.targets
    assert np.allclose(got.p_target, want.p_target, rtol=1e-4)
    assert json.loads(plot.plot)["vconcat"]
    many = common.MODEL.task.batch(1, 1024, n_pairs=300, seed=0).tokens[0]        # ~300 different answers
    with pytest.raises(Exception, match=r"asks for \d{3} different answers; the app keeps the probability of at most 256"):
        explore.show_plot(common.MODEL.task.format(many), "index", 64, None, None, explore.default_layers(), "max")


@pytest.mark.parametrize("name", sorted(p.stem for p in ROOT.glob("*.safetensors")))
def test_every_shipped_checkpoint_opens_in_the_explore_tab(name, monkeypatch):
    """The app's first view (its first text, the default layers) on each checkpoint in checkpoints/:
    a chart and a summary, no error (the MQAR one failed this way once)."""
    from ui import common, explore
    monkeypatch.setattr(common, "MODEL", common.load_model(str(ROOT / f"{name}.safetensors")))
    assert common.MODEL.lm is not None, common.MODEL.error
    plot, summary = explore.show_plot(explore.first_text(), "index", 64, None, None, explore.default_layers(), "max")
    assert plot.plot.startswith("{") and "L = " in summary


def test_per_query_breakdown_scores_the_same_sequences_as_count_correct():
    from training.eval import query_breakdown
    lm = load_checkpoint(ROOT / "selective-copy-2layer.safetensors").eval()
    task = task_for(lm.task)
    b = query_breakdown(lm, 512, 24, 7 + 512, task, {"k": 16}, tokens_per_batch=512 * 10)   # 3 batches
    right, total = count_correct(lm, 512, 24, 7 + 512, tokens_per_batch=512 * 10, task=task, options={"k": 16})
    assert b.correct.shape == (16,) and int(b.correct.sum()) == right and total == 16 * 24
    assert b.misses == total - right
    with pytest.raises(ValueError, match="samples must be >= 1"):
        query_breakdown(lm, 512, 0, 1, task)


def test_per_query_breakdown_places_a_model_that_reads_the_next_memory():
    """A fake model that answers the j-th marker with the (j+1)-th data token (the last one right):
    query j is right exactly where data j and j+1 agree, and every miss gave the answer of the query 1
    later (or of both neighbours, where data j - 1 = data j + 1)."""
    import numpy as np
    import torch

    from tasks import SELECTIVE_COPYING
    from tasks.selective_copy import MARKER, NOISE, VOCAB
    from training.eval import breakdown_table, query_breakdown

    class ReadsAhead(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, tokens, positions):                               # [B, L], [B, K] -> [B, K, V]
            data = [row[(row != NOISE) & (row != MARKER)] for row in tokens]
            shifted = torch.stack([torch.cat([d[1:], d[-1:]]) for d in data])   # [B, K]
            return torch.nn.functional.one_hot(shifted, VOCAB).float()

    task = SELECTIVE_COPYING
    b = query_breakdown(ReadsAhead(), 64, 40, 3, task, {"k": 8})
    draw = task.batch(40, 64, rng=np.random.default_rng(3), k=8)
    expected = np.append((draw.answers[:, :-1] == draw.answers[:, 1:]).sum(0), 40)
    assert (b.correct == expected).all() and b.correct[-1] == 40 and b.correct[:-1].min() < 40
    a = draw.answers
    both = ((a[:, 1:-1] != a[:, 2:]) & (a[:, :-2] == a[:, 2:])).sum()      # miss at j, data j-1 = data j+1
    assert b.misses == 40 * 8 - expected.sum() and b.unstored == 0 and b.earlier.sum() == 0
    assert b.both[1] == both and b.later[1] == b.misses - both and b.later[2:].sum() == b.both[2:].sum() == 0
    table = breakdown_table(b)
    assert "| 8 | 40 | 100.0% |" in table and f"| 1 | 0 | {b.later[1]} | {both} |" in table


def test_eval_cli_per_query_reports_the_table_and_its_breakdown(capsys):
    import json

    from training.eval import main as eval_main
    eval_main(["--checkpoint", str(ROOT / "selective-copy-2layer.safetensors"), "--lengths", "64,128",
               "--samples", "6", "--per-query", "--json", "--no-progress"])
    doc = json.loads(capsys.readouterr().out)
    for r, b in zip(doc["results"], doc["per_query"]):
        assert b["length"] == r["length"] and len(b["correct"]) == 16 and r["queries"] == 96
        assert sum(b["correct"]) == r["correct"] and sum(b["misses_earlier"] + b["misses_later"] + b["misses_both"]) + b["misses_unstored"] == 96 - r["correct"]
    eval_main(["--checkpoint", str(ROOT / "selective-copy-2layer.safetensors"), "--lengths", "64",
               "--samples", "6", "--per-query", "--no-progress"])
    out = capsys.readouterr().out
    assert "Per query at L = 64 (6 sequences)" in out and "| 16 |" in out and "| d | earlier | later | both |" in out
