"""Patching and the logit lens on any model (#12): a plain LM (no answer: its top-1 at the last step,
or the actual next token at a chosen step), selective copying and MQAR (the query whose answer the
corruption changes), each checked against the model's own softmax; the corruptions each model gets
(the induction buttons refused elsewhere with a message naming what to use); the app's layout.
Tiny models: random weights, the tasks' own metadata or a tokenizer-less HF-like plain LM."""
import importlib
import re
import sys

import gradio as gr
import numpy as np
import pytest
import torch

from analysis import patching
from analysis.lens import logit_lens
from model import MambaConfig, MambaLM
from tasks import INDUCTION, MQAR_TASK, SELECTIVE_COPYING, IdTask
from tasks import mqar as mq
from tasks import selective_copy as sc
from ui import common
from ui import lens as ui_lens
from ui import patching as ui_patching


def tiny(vocab, seed=0, **cfg):
    torch.manual_seed(seed)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=vocab, ssm_cfg={"d_state": 4}, **cfg)).eval()


def softmax_at(lm, tokens, step):
    """p(next token) after `step` from the model's own forward on the whole sequence: [V]."""
    with torch.no_grad():
        logits = lm(torch.as_tensor(np.asarray(tokens))[None])[0, step, :lm.config.vocab_size]
    return torch.softmax(logits.double(), -1).numpy()


@pytest.fixture
def use(monkeypatch):
    """Point ui.common's model at (lm, task) for one test."""
    def go(lm, task):
        monkeypatch.setattr(common, "MODEL", common.Loaded(lm, "tiny", "", None, task=task))
        return lm
    return go


# ---------------------------------------------------------------- a plain LM
IDS = np.array([5, 9, 2, 31, 7, 7, 40, 3, 12, 5, 9, 2, 31, 7], dtype=np.int64)


def test_plain_lm_reads_its_top1_at_the_last_step_by_default():
    lm, task = tiny(50), IdTask(50)
    corrupted = IDS.copy()
    corrupted[4] = 44
    ro = patching.readout_for(lm, IDS, corrupted, task=task)
    p = softmax_at(lm, IDS, -1)
    assert ro.step == IDS.size - 1 and ro.target == int(p.argmax()) and "top-1 at the last step" in ro.how
    cmp = patching.compare_runs(lm, IDS, corrupted, target=ro.target, task=task)
    assert cmp.p_clean == pytest.approx(p.max(), rel=1e-4) and cmp.top_clean == ro.target
    assert cmp.p_corrupted == pytest.approx(softmax_at(lm, corrupted, -1)[ro.target], rel=1e-4)
    pat = patching.patch_sweep(lm, IDS, corrupted, kind="state", target=ro.target, task=task)
    assert pat.groups == ("all",)                       # no writes: no memory channels to pick
    assert pat.p_clean == pytest.approx(cmp.p_clean, rel=1e-5)
    assert np.allclose(pat.p[:, :, :4], pat.p_corrupted, atol=1e-6)   # before the change: nothing to restore
    # every layer's whole state after the changed step restores the clean prediction: layer 1 alone
    # does not (layer 2's state is still the corrupted one), but the sweep has each cell finite
    assert np.isfinite(pat.p).all() and not np.allclose(pat.p, pat.p_corrupted)


def test_plain_lm_reads_the_actual_next_token_at_a_chosen_step():
    lm, task = tiny(50), IdTask(50)
    corrupted = IDS.copy()
    corrupted[4] = 44
    ro = patching.readout_for(lm, IDS, corrupted, step=9, task=task)
    assert (ro.step, ro.target) == (9, int(IDS[10])) and "actual next token" in ro.how
    cmp = patching.compare_runs(lm, IDS[:10], corrupted[:10], target=ro.target, task=task)
    assert cmp.p_clean == pytest.approx(softmax_at(lm, IDS, 9)[IDS[10]], rel=1e-4)      # causal: the cut is exact
    with pytest.raises(ValueError, match=r"agree up to t = 3: the prediction after step 2 is the same"):
        patching.readout_for(lm, IDS, corrupted, step=2, task=task)
    with pytest.raises(ValueError, match="the corrupted sequence equals the clean one"):
        patching.readout_for(lm, IDS, IDS, task=task)
    with pytest.raises(ValueError, match=r"query step 14 is out of range 0..13"):
        patching.readout_for(lm, IDS, corrupted, step=14, task=task)


def test_a_large_vocabulary_scores_without_full_probs():
    """Above 1,024 tokens a trace keeps only the top-k: p(target) comes from the logits instead."""
    lm, task = tiny(1100, seed=1), IdTask(1100)
    clean = np.array([3, 1050, 77, 900, 12, 1099, 5, 640], dtype=np.int64)
    corrupted = clean.copy()
    corrupted[2] = 1000
    ro = patching.readout_for(lm, clean, corrupted, task=task)
    cmp = patching.compare_runs(lm, clean, corrupted, target=ro.target, task=task)
    with torch.no_grad():
        want = torch.softmax(lm(torch.as_tensor(clean)[None])[0].double(), -1)[:, ro.target].numpy()
    assert np.allclose(cmp.p_target_clean, want, rtol=1e-4, atol=1e-9)
    pat = patching.patch_sweep(lm, clean, corrupted, kind="output", target=ro.target, task=task)
    assert pat.p_clean == pytest.approx(want[-1], rel=1e-4) and np.isfinite(pat.p).all()
    long = np.random.default_rng(0).integers(0, 1100, 600)           # three blocks of the head, the last short
    long_bad = long.copy()
    long_bad[5] = (long[5] + 1) % 1100
    cmp = patching.compare_runs(lm, long, long_bad, target=7, task=task)
    with torch.no_grad():
        want = torch.softmax(lm(torch.as_tensor(long)[None])[0].double(), -1)[:, 7].numpy()
    assert cmp.p_target_clean.shape == (600,) and np.allclose(cmp.p_target_clean, want, rtol=1e-4, atol=1e-9)


def test_patching_tab_on_a_plain_lm(use):
    lm = use(tiny(50), IdTask(50))
    text = " ".join(map(str, IDS))
    corrupted = ui_patching.corrupt_edit(text, "set the token at step a to id b", 4, 44)
    assert corrupted.split()[4] == "44" and len(corrupted.split()) == IDS.size
    assert ui_patching.corrupt_edit(text, "swap the tokens at steps a and b", 0, 1).split()[:2] == ["9", "5"]
    md, _, heat = ui_patching.run_patching(text, corrupted, "Δ")
    top = int(softmax_at(lm, IDS, -1).argmax())
    assert f"**target {top}**, read after t = 13: the clean run's top-1 at the last step" in md
    assert heat.type == "altair"
    md, _, _ = ui_patching.run_patching(text, corrupted, "state h", 9)
    assert f"**target {IDS[10]}**, read after t = 9: the actual next token" in md
    assert "(both runs stop there: 4 later steps left out)" in md
    for fn, args, message in [
            (ui_patching.corrupt_memory, (text, 3), ("Corrupt: set M corrupts induction-heads sequences (their S M "
                                                     "pair); this model is a plain language model: use corrupt_edit")),
            (ui_patching.corrupt_trigger, (text, 3), "this model is a plain language model"),
            (ui_patching.corrupt_edit, (text, "set data token #a to b", 1, 2), "unknown corruption"),
            (ui_patching.corrupt_edit, (text, "set the token at step a to id b", 14, 2), "step a 14 is out of range"),
            (ui_patching.corrupt_edit, (text, "set the token at step a to id b", 0, 5), "leaves the sequence as it is"),
            (ui_patching.run_patching, (text, corrupted, "Δ", 2), "agree up to t = 3"),
            (ui_patching.run_patching, (text, corrupted, "Δ", 1.5), "query step must be a whole number"),
            (ui_patching.run_patching, (text, text, "Δ"), "the corrupted sequence equals the clean one")]:
        with pytest.raises(gr.Error, match=re.escape(message)):
            fn(*args)


# ---------------------------------------------------------------- the other tasks
def copy_pair():
    clean = SELECTIVE_COPYING.realize(sc.Generator(n_ctx=24, k=4, seed=5))
    data = [int(clean[p]) for p in sc.positions(clean).writes]
    corrupted = sc.set_data_token(clean, 2, (data[2] + 3) % 16)
    return clean, corrupted, data


def test_selective_copying_reads_the_query_the_corruption_changes(use):
    lm = use(tiny(sc.VOCAB, seed=2), SELECTIVE_COPYING)
    clean, corrupted, data = copy_pair()
    ro = patching.readout_for(lm, clean, corrupted, task=SELECTIVE_COPYING)
    assert (ro.step, ro.target) == (24 + 2, data[2]) and "the first whose answer the corruption changes" in ro.how
    text = SELECTIVE_COPYING.format(clean)
    assert ui_patching.corrupt_edit(text, "set data token #a to b", 3, (data[2] + 3) % 16) == \
        SELECTIVE_COPYING.format(corrupted)
    assert ui_patching.edit_kinds()[:2] == ["move data token #a to position b", "set data token #a to b"]
    md, _, _ = ui_patching.run_patching(text, SELECTIVE_COPYING.format(corrupted), "state h")
    cut = ro.step + 1
    pat = patching.patch_sweep(lm, clean[:cut], corrupted[:cut], kind="state", target=ro.target,
                               task=SELECTIVE_COPYING)
    assert pat.p_clean == pytest.approx(softmax_at(lm, clean, ro.step)[ro.target], rel=1e-4)
    best = pat.p.max(axis=2)
    assert f"**target {data[2]}**, read after t = 26" in md
    assert "| layer 2 | " + " | ".join(f"{v:.3f}" for v in best[1]) + " |" in md
    # a chosen marker; a step that is no query is refused with the queries listed
    md, _, _ = ui_patching.run_patching(text, SELECTIVE_COPYING.format(corrupted), "Δ", 27)
    assert f"**target {data[3]}**, read after t = 27: the query at t = 27 (chosen)" in md
    with pytest.raises(gr.Error, match=r"step 25 is not a scored query of the clean sequence \(queries with an "
                                       r"answer: t = 24, 25, 26, 27\)".replace("25 is", "23 is")):
        ui_patching.run_patching(text, SELECTIVE_COPYING.format(corrupted), "Δ", 23)
    with pytest.raises(gr.Error, match="this model is a selective_copying model: use corrupt_edit"):
        ui_patching.corrupt_memory(text, 3)


def test_mqar_reads_the_first_query_of_the_changed_key(use):
    lm = use(tiny(MQAR_TASK.vocab_size, seed=3), MQAR_TASK)
    clean = MQAR_TASK.realize(mq.Generator(length=24, n_pairs=4, seed=1))
    pos = MQAR_TASK.positions(clean)
    key = int(clean[pos.markers[1]])
    corrupted = mq.set_value(clean, key, 4100)
    first_q = next(q for q in pos.queries if clean[q] == key)
    ro = patching.readout_for(lm, clean, corrupted, task=MQAR_TASK)
    assert ro.step == first_q and ro.target == int(clean[pos.writes[1]])
    text = MQAR_TASK.format(clean)
    assert ui_patching.corrupt_edit(text, "set key a's value to b", key, 4100) == MQAR_TASK.format(corrupted)
    md, _, heat = ui_patching.run_patching(text, MQAR_TASK.format(corrupted), "layer output")
    assert f"read after t = {first_q}: the query at t = {first_q}, the first whose answer" in md
    cmp = patching.compare_runs(lm, clean[:first_q + 1], corrupted[:first_q + 1], target=ro.target, task=MQAR_TASK)
    assert cmp.p_clean == pytest.approx(softmax_at(lm, clean, first_q)[ro.target], rel=1e-4)   # V = 8192: no probs
    assert f"clean **{cmp.p_clean:.3f}**" in md and heat.type == "altair"
    # asking a key again adds a query the clean run lacks: the first scored query after it is read
    extra = next(t for t in range(8, 24) if clean[t] == mq.FILLER and any(q > t for q in pos.queries))
    again = mq.repeat_key(clean, key, extra)
    ro = patching.readout_for(lm, clean, again, task=MQAR_TASK)
    assert ro.step == min(q for q in pos.queries if q > extra) and "the first scored one from the first" in ro.how


def test_induction_keeps_its_readout():
    """Induction heads: the query at the end, as before (the buttons' corruptions)."""
    from tasks.induction import Generator, move_trigger, set_memory_token
    lm = tiny(INDUCTION.vocab_size)
    clean = INDUCTION.realize(Generator(length=40, seed=2))
    for corrupted, why in ((set_memory_token(clean, (INDUCTION.positions(clean).targets[0] + 1) % 16), "answer"),
                           (move_trigger(clean, 3), "recalled write")):
        ro = patching.readout_for(lm, clean, corrupted)
        assert (ro.step, ro.target) == (39, patching.target_of(INDUCTION, clean)) and why in ro.how


# ---------------------------------------------------------------- the logit lens
def test_lens_on_a_plain_lm_and_a_chosen_query(use):
    lm = use(tiny(50), IdTask(50))
    lens = logit_lens(lm, IDS, task=IdTask(50))
    top = int(softmax_at(lm, IDS, -1).argmax())
    assert (lens.query, lens.target) == (13, top) and lens.first_layer is not None   # the last layer's own top-1
    assert "own top-1 at the last step" in lens.how
    lens = logit_lens(lm, IDS, step=4, task=IdTask(50))
    assert (lens.query, lens.target) == (4, int(IDS[5])) and "actual next token" in lens.how
    md, plot = ui_lens.show_lens(" ".join(map(str, IDS)), 3)
    assert plot.type == "altair"
    assert f"Read at t = 13 (the model's own top-1 at the last step t = 13), answer **{top}**" in md
    md, _ = ui_lens.show_lens(" ".join(map(str, IDS)), 3, 4)
    assert f"Read at t = 4 (the actual next token at t = 4), answer **{IDS[5]}**" in md
    with pytest.raises(gr.Error, match=r"query step 14 is out of range 0..13"):
        ui_lens.show_lens(" ".join(map(str, IDS)), 3, 14)


def test_lens_on_selective_copying_reads_a_chosen_marker(use):
    lm = use(tiny(sc.VOCAB, seed=2), SELECTIVE_COPYING)
    clean, _, data = copy_pair()
    lens = logit_lens(lm, clean, step=26, task=SELECTIVE_COPYING)
    assert (lens.query, lens.target) == (26, data[2])
    assert logit_lens(lm, clean, task=SELECTIVE_COPYING).query == 24                         # default: the first scored query
    with pytest.raises(ValueError, match=r"step 3 is not a scored query of the sequence \(queries with an answer: "
                                         r"t = 24, 25, 26, 27\)"):
        logit_lens(lm, clean, step=3, task=SELECTIVE_COPYING)


# ---------------------------------------------------------------- the app's layout
@pytest.mark.parametrize("which", ["mqar", "induction"])
def test_patching_tab_shows_the_corruptions_of_the_models_task(which, tmp_path, monkeypatch):
    from model import save_checkpoint
    path = tmp_path / "m.safetensors"
    if which == "mqar":
        save_checkpoint(tiny(MQAR_TASK.vocab_size), path, task=MQAR_TASK.metadata(64, options={"n_pairs": 4}))
    else:
        save_checkpoint(tiny(INDUCTION.vocab_size), path, task=INDUCTION.metadata())
    monkeypatch.setenv(common.CHECKPOINT_ENV, str(path))
    monkeypatch.setattr(common, "MODEL", common.MODEL)              # restored after the test
    monkeypatch.setattr(sys, "argv", ["app.py"])
    app = importlib.reload(sys.modules["app"]) if "app" in sys.modules else importlib.import_module("app")
    by_id = {b.elem_id: b for b in app.demo.blocks.values() if getattr(b, "elem_id", None)}
    assert by_id["corrupt-induction"].visible is (which == "induction")
    assert by_id["corrupt-any"].visible is (which != "induction")
    if which == "mqar":
        assert [c[0] for c in by_id["corrupt-kind"].choices] == [
            "set key a's value to b", "ask for key a again at position b", *ui_patching.ANY_MODEL]
    assert by_id["patch-step"].value == "" and by_id["lens-step"].value == ""       # blank: the step is chosen


def test_the_step_box_takes_text_and_a_blank_means_chosen():
    """The browser's empty number box sends 0 (a real step), so the step is a text box."""
    from ui import common
    assert common.optional_whole("", "query step", 0, 9) is None and common.optional_whole(None, "q", 0, 9) is None
    assert common.optional_whole(" 7 ", "query step", 0, 9) == 7 and common.optional_whole(3, "q", 0, 9) == 3
    with pytest.raises(ValueError, match="query step must be a whole number or empty, got '٣'"):
        common.optional_whole("٣", "query step", 0, 9)
    with pytest.raises(ValueError, match="out of range"):
        common.optional_whole("12", "query step", 0, 9)
