"""tasks/: the induction task's generator, text format, positions, edits, presets and scoring, and
the one definition of the Δ ratio and of memory channels (tasks/measures.py)."""
import subprocess
import sys

import numpy as np
import pytest

from tasks import INDUCTION, MAX_LEN, Positions, TokenError, score, task_for
from tasks import induction as ind
from tasks.measures import delta_ratio, layer_ratios, memory_channels, unit_order, windows

TRIGGER = ind.TRIGGER


def test_tasks_import_numpy_only():
    code = ("import sys, tasks, tasks.induction, tasks.measures; "
            "bad = [m for m in ('torch', 'pandas', 'altair', 'gradio', 'model') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- the generator
@pytest.mark.parametrize("L", [3, 4, 64, 257])
def test_canonical_invariants(L):
    b = ind.induction_batch(512, L, seed=1)
    t = b.tokens
    assert t.shape == (512, L) and t.dtype == np.int64
    assert ((t == TRIGGER).sum(1) == 2).all()                       # exactly two triggers
    assert (t[:, -1] == TRIGGER).all()                              # the query at the end
    p = b.trigger_pos[:, 0]
    assert ((p >= 0) & (p <= L - 3)).all()
    rows = np.arange(512)
    assert (t[rows, p] == TRIGGER).all()
    assert np.array_equal(t[rows, p + 1], b.target)                 # M right after the trigger
    assert ((t >= 0) & (t <= TRIGGER)).all() and (b.target < 16).all()


def test_seeded_and_varied():
    a, b = ind.induction_batch(64, 100, seed=3), ind.induction_batch(64, 100, seed=3)
    assert np.array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, ind.induction_batch(64, 100, seed=4).tokens)
    big = ind.induction_batch(4096, 100, seed=0)
    assert big.trigger_pos.min() == 0 and big.trigger_pos.max() == 97   # the whole range [0, L-3]
    assert len(np.unique(big.target)) == 16
    # a stream of batches from one generator differs batch to batch and is reproducible
    r1, r2 = np.random.default_rng(7), np.random.default_rng(7)
    s1 = [ind.induction_batch(4, 20, rng=r1).tokens for _ in range(3)]
    s2 = [ind.induction_batch(4, 20, rng=r2).tokens for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(s1, s2)) and not np.array_equal(s1[0], s1[1])


def test_variants():
    b = ind.induction_batch(256, 50, seed=0, trigger_pos=10)
    assert (b.tokens[:, 10] == TRIGGER).all()
    b = ind.induction_batch(256, 50, seed=0, filler_excludes_memory=True)
    filler = b.tokens.copy()
    filler[np.arange(256)[:, None], b.trigger_pos + 1] = -1
    assert not (filler == b.target[:, None]).any()
    b = ind.induction_batch(256, 40, seed=0, n_triggers=3)
    assert ((b.tokens == TRIGGER).sum(1) == 4).all()
    assert (np.diff(b.trigger_pos, axis=1) >= 2).all()
    assert np.array_equal(np.take_along_axis(b.tokens, b.trigger_pos + 1, 1), b.memory)
    assert np.array_equal(b.target, b.memory[:, 0])


@pytest.mark.parametrize("kw,msg", [(dict(length=2), "length must be"),
                                    (dict(length=10, trigger_pos=8), "trigger_pos"),
                                    (dict(length=5, n_triggers=3), "do not fit")])
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ind.induction_batch(2, **kw)


# ---------------------------------------------------------------- the text format
def test_parse_and_format_round_trip():
    ids = INDUCTION.parse("3 7,1  S s,16\n9")
    assert ids.tolist() == [3, 7, 1, 16, 16, 16, 9]
    assert INDUCTION.format(ids) == "3 7 1 S S S 9"
    assert INDUCTION.parse(INDUCTION.format(ids)).tolist() == ids.tolist()
    assert INDUCTION.token_labels(np.array([0, 16, 15])).tolist() == ["0", "S", "15"]


@pytest.mark.parametrize("text, message", [
    ("1 2 x 4", "token 3 ('x') is not a whole number or S"),
    ("1 2.5", "token 2 ('2.5') is not a whole number or S"),
    ("1 70 3", "token id 70 is out of range 0..16"),
    ("-1", "token id -1 is out of range 0..16"),
    ("1 99999999999999999999 S", "token id 99999999999999999999 is out of range 0..16 (token 2)"),
    ("1 " + "9" * 5000, "out of range 0..16"),
    ("١ ٢", "token 1 ('١') is not a whole number"),        # Unicode digits are not ids
    ("", "the sequence is empty"),
    (" , ,\n", "the sequence is empty"),
    ("1 " * (MAX_LEN + 1), f"over the cap of {MAX_LEN:,}"),
])
def test_parse_errors_name_the_token_and_the_rule(text, message):
    with pytest.raises(TokenError) as e:
        INDUCTION.parse(text)
    assert message in str(e.value) and len(str(e.value)) < 300      # never echoes a huge input


def test_parse_refuses_non_text():
    with pytest.raises(TokenError, match="must be text"):
        INDUCTION.parse(12)


# ---------------------------------------------------------------- positions, scoring
def test_positions():
    pos = INDUCTION.positions(np.array([1, 16, 5, 2, 16, 9, 3, 16]))
    assert (pos.queries, pos.markers, pos.writes, pos.targets) == ((7,), (1, 4), (2, 5), (5,))
    assert pos.scored == [(7, 5)] and pos.sources == (2,)
    none = INDUCTION.positions(np.array([1, 2, 3]))
    assert none.queries == () and none.scored == []
    lonely = INDUCTION.positions(np.array([1, 2, 16]))        # a query with nothing to recall
    assert lonely.queries == (2,) and lonely.targets == (None,) and lonely.scored == []


def test_score_is_argmax_at_the_query():
    probs = np.full((4, 17), 0.01)
    probs[3, 5] = 0.5
    pos = Positions(writes=(1,), queries=(3,), targets=(5,))
    s = score(probs, pos)
    assert (s.n, s.correct, s.top, s.p_target) == (1, 1, (5,), (0.5,))
    probs[3, 16] = 0.9
    assert score(probs, pos).correct == 0


def test_task_for_metadata():
    assert task_for({"name": "induction_heads"}) is INDUCTION
    assert task_for({"name": "something else"}) is None and task_for(None) is None and task_for("x") is None
    meta = INDUCTION.metadata(256, steps=3)
    assert meta["name"] == "induction_heads" and meta["trigger_id"] == 16 and meta["steps"] == 3


# ---------------------------------------------------------------- edits, presets
def test_quick_edits():
    t = np.array([4, 16, 5, 2, 3, 8, 16])
    assert ind.set_memory_token(t, 11).tolist() == [4, 16, 11, 2, 3, 8, 16]
    moved = ind.move_trigger(t, 3)
    assert moved.tolist() == [4, 2, 3, 16, 5, 8, 16]            # filler order kept, length kept
    assert ind.move_trigger(t, 0).tolist() == [16, 5, 4, 2, 3, 8, 16]
    with pytest.raises(TokenError, match="trigger position 5 is out of range 0..4"):
        ind.move_trigger(t, 5)
    with pytest.raises(TokenError, match="no trigger"):
        ind.set_memory_token(np.array([1, 2, 16]), 3)
    with pytest.raises(TokenError, match="memory token 16 is out of range"):
        ind.set_memory_token(t, 16)


def test_presets_realise_what_they_say():
    got = {name: INDUCTION.realize(g) for name, g in INDUCTION.presets.items()}
    pos = {k: INDUCTION.positions(v) for k, v in got.items()}
    assert len(got["Paper setup (L=256)"]) == 256 and len(pos["Paper setup (L=256)"].markers) == 1
    assert len(got["Long: 16384 tokens"]) == 16384
    assert pos["No trigger before the query"].markers == () and pos["No trigger before the query"].queries == (255,)
    assert len(pos["Two triggers"].markers) == 2
    m = pos["Memory token also in the filler"]
    assert (got["Memory token also in the filler"] == m.targets[0]).sum() >= 10
    # a chosen memory token relabels the sequence: M sits after the trigger, filler keeps its statistics
    t = INDUCTION.realize(ind.Generator(length=64, memory=9, seed=5, filler_excludes_memory=True))
    assert INDUCTION.positions(t).targets == (9,) and (t == 9).sum() == 1
    assert set(INDUCTION.preset_notes) == set(INDUCTION.presets)


@pytest.mark.parametrize("g, msg", [(ind.Generator(length=2), "length 2 is out of range"),
                                    (ind.Generator(memory=16), "memory token 16"),
                                    (ind.Generator(n_triggers=3), "number of triggers 3"),
                                    (ind.Generator(seed=2 ** 64), "seed"),
                                    (ind.Generator(length=10, trigger_pos=8), "trigger_pos 8")])
def test_generator_errors(g, msg):
    with pytest.raises(TokenError, match=msg):
        INDUCTION.realize(g)


# ---------------------------------------------------------------- the Δ ratio and memory channels
def test_delta_ratio_definition():
    """ratio = max over the write window [w, w + d_conv) / median over the filler after it."""
    L, U = 40, 3
    delta = np.full((L, U), 0.01)
    pos = INDUCTION.positions(np.array([0] * 9 + [16, 4] + [1] * 28 + [16]))   # S at 9, M at 10, query 39
    delta[12, 0] = 5.0                      # unit 0 writes one step late, inside the window
    delta[14, 1] = 5.0                      # unit 1's spike is outside a d_conv=4 window
    delta[20:, 2] = 1.0                     # unit 2's filler is large
    w = windows(pos, L, d_conv=4)
    assert (w.write, w.filler) == ((10, 14), (14, 39))
    r = delta_ratio(delta, w)
    assert r.ratio[0] == pytest.approx(500.0) and r.write_step[0] == 12
    assert r.ratio[1] == pytest.approx(1.0) and r.ratio[2] == pytest.approx(0.01)
    assert r.filler_mean[1] == pytest.approx((5.0 + 24 * 0.01) / 25)
    # a batch: the write is the max of the batch mean per step; the filler median pools sequences
    rb = delta_ratio(np.stack([delta, delta * 3]), w)
    assert rb.write[0] == pytest.approx(10.0) and rb.filler_median[0] == pytest.approx(0.02)
    assert memory_channels(r.ratio, k=2) == [0, 1] and memory_channels(r.ratio, min_ratio=100) == [0]
    assert unit_order(r.ratio, 3, "ratio") == [0, 1, 2] and unit_order(None, 3, "ratio") == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown channel sort"):
        unit_order(r.ratio, 3, "size")


def test_no_ratio_without_write_or_filler():
    assert windows(INDUCTION.positions(np.array([1, 2, 16])), 3, 4) is None     # no S M pair
    end = INDUCTION.positions(np.array([1, 1, 16, 5, 16]))                      # the write touches the query
    assert windows(end, 5, 4) is None
    assert layer_ratios([np.ones((5, 2))], end, 4) is None
    ok = INDUCTION.positions(np.array([16, 5] + [1] * 8 + [16]))
    assert [r.ratio.shape for r in layer_ratios([np.ones((11, 2)), np.ones((11, 3))], ok, 4)] == [(2,), (3,)]


# ---------------------------------------------------------------- selective copying
from tasks import MQAR_TASK, SELECTIVE_COPYING, TASKS  # noqa: E402
from tasks import mqar as mq  # noqa: E402
from tasks import selective_copy as sc  # noqa: E402


@pytest.mark.parametrize("n_ctx, k", [(16, 16), (17, 16), (256, 16), (4096, 16), (40, 3)])
def test_selective_copy_format(n_ctx, k):
    b = sc.copy_batch(64, n_ctx, k=k, seed=n_ctx)
    t = b.tokens
    assert t.shape == (64, n_ctx + k) and t.dtype == np.int64
    assert (t[:, n_ctx:] == sc.MARKER).all() and not (t[:, :n_ctx] == sc.MARKER).any()
    assert ((t[:, :n_ctx] < 16).sum(1) == k).all()                          # K data tokens, noise elsewhere
    assert (np.diff(b.data_pos, axis=1) > 0).all()                          # distinct, in context order
    assert np.array_equal(np.take_along_axis(t, b.data_pos, 1), b.data)
    assert np.array_equal(b.answers, b.data) and (b.queries == np.arange(n_ctx, n_ctx + k)).all()
    p = SELECTIVE_COPYING.positions(t[0])
    assert p.scored == list(zip(b.queries[0].tolist(), b.data[0].tolist()))
    assert p.writes == tuple(b.data_pos[0].tolist()) == p.sources             # the j-th marker recalls the j-th write


def test_selective_copy_lead_keeps_the_data_and_its_distances_to_the_markers():
    """lead = noise before the data: the same seed and n_ctx - lead draw the same data at the same
    distances from the first marker, whatever the lead (analysis.memory_report's lead sweep)."""
    base = sc.copy_batch(16, 100, seed=3)
    for lead in (0, 50, 1000):
        b = sc.copy_batch(16, 100 + lead, seed=3, lead=lead)
        assert (b.data_pos >= lead).all() and not (b.tokens[:, :lead] < 16).any()
        assert np.array_equal(b.data, base.data) and np.array_equal(b.data_pos - lead, base.data_pos)
        assert np.array_equal(b.tokens[:, lead:], base.tokens)
    assert sc.copy_batch(4, 20, seed=1, lead=4).data_pos.min() >= 4
    for bad, msg in [(-1, "lead must be"), (1.5, "lead must be"), (True, "lead must be"), (90, "after a lead of 90")]:
        with pytest.raises(ValueError, match=msg):
            sc.copy_batch(2, 100, lead=bad)


def test_selective_copy_lead_max_draws_a_lead_per_row():
    """lead_max: each row keeps its own uniform 0..lead_max steps of noise before the data (a training
    mixture); the data still sit at k distinct ascending context positions, then k markers."""
    n_ctx, k = 1000, 4
    b = sc.copy_batch(4000, n_ctx, k=k, seed=5, lead_max=800)
    assert (np.diff(b.data_pos, axis=1) > 0).all() and (b.data_pos < n_ctx).all()
    assert ((b.tokens[:, :n_ctx] < 16).sum(1) == k).all() and (b.tokens[:, n_ctx:] == sc.MARKER).all()
    first = b.data_pos[:, 0]
    # E[first] = E[lead] + E[(n_ctx - lead) / (k + 1)] = 400 + 120; without leads it is 200
    assert 500 < first.mean() < 540 and first.min() < 50 and first.max() > 800
    assert np.array_equal(sc.copy_batch(8, 100, seed=2, lead_max=50).tokens,
                          sc.copy_batch(8, 100, seed=2, lead_max=50).tokens)
    assert np.array_equal(sc.copy_batch(8, 100, seed=2, lead_max=0).tokens, sc.copy_batch(8, 100, seed=2).tokens)
    for kw, msg in [({"lead_max": -3}, "lead_max must be"), ({"lead_max": 2.0}, "lead_max must be"),
                    ({"lead_max": 90}, "after a lead of 90"), ({"lead": 5, "lead_max": 9}, "not both")]:
        with pytest.raises(ValueError, match=msg):
            sc.copy_batch(2, 100, **kw)


def test_selective_copy_text_edits_and_presets():
    t = SELECTIVE_COPYING.parse("_ 3 _ 9 _ ? ?")
    assert t.tolist() == [16, 3, 16, 9, 16, 17, 17] and SELECTIVE_COPYING.format(t) == "_ 3 _ 9 _ ? ?"
    moved = sc.move_data_token(t, 0, 4)                    # 3 moves after 9: the copy's order changes
    assert moved.tolist() == [16, 16, 16, 9, 3, 17, 17]
    assert SELECTIVE_COPYING.positions(moved).scored == [(5, 9), (6, 3)]
    assert SELECTIVE_COPYING.positions(moved).sources == (3, 4)
    assert sc.set_data_token(t, 1, 7).tolist() == [16, 3, 16, 7, 16, 17, 17]
    with pytest.raises(TokenError, match="holds data token 9"):
        sc.move_data_token(t, 0, 3)
    with pytest.raises(TokenError, match="outside the context"):
        sc.move_data_token(t, 0, 5)
    with pytest.raises(TokenError, match="data token 5 does not exist"):
        sc.set_data_token(t, 5, 1)
    for g in SELECTIVE_COPYING.presets.values():
        seq = SELECTIVE_COPYING.realize(g)
        assert len(seq) == g.n_ctx + g.k and len(SELECTIVE_COPYING.positions(seq).scored) == g.k
    with pytest.raises(TokenError, match="need 1 <= k <= n_ctx"):
        SELECTIVE_COPYING.realize(sc.Generator(n_ctx=4, k=16))


# ---------------------------------------------------------------- MQAR
@pytest.mark.parametrize("L, D", mq.ZOOLOGY_SETTINGS)
def test_mqar_format(L, D):
    b = mq.mqar_batch(32, L, D, seed=L)
    t = b.tokens
    assert t.shape == (32, L)
    assert np.array_equal(t[:, 0:2 * D:2], b.keys) and np.array_equal(t[:, 1:2 * D:2], b.values)
    assert ((b.keys >= 1) & (b.keys < 4096)).all() and ((b.values >= 4096) & (b.values < 8192)).all()
    assert all(len(set(row)) == D for row in b.keys.tolist())               # distinct keys
    assert (b.queries >= 2 * D).all() and (np.diff(b.queries, axis=1) > 0).all()
    rest = t[:, 2 * D:].copy()
    rest[np.arange(32)[:, None], b.queries - 2 * D] = 0
    assert (rest == 0).all()                                                # filler except the queries
    queried = np.take_along_axis(t, b.queries, 1)
    assert all(sorted(q) == sorted(k) for q, k in zip(queried.tolist(), b.keys.tolist()))   # each key once
    table = [dict(zip(k, v)) for k, v in zip(b.keys.tolist(), b.values.tolist())]
    assert b.answers.tolist() == [[tab[q] for q in row] for tab, row in zip(table, queried.tolist())]
    p = MQAR_TASK.positions(t[0])
    assert p.scored == list(zip(b.queries[0].tolist(), b.answers[0].tolist()))
    assert p.writes == tuple(range(1, 2 * D, 2)) and p.markers == tuple(range(0, 2 * D, 2))
    key_step = {int(k): 2 * i for i, k in enumerate(b.keys[0])}                 # each query recalls its key's value
    assert p.sources == tuple(key_step[int(t[0, q])] + 1 for q in b.queries[0])


def test_mqar_edits_and_errors():
    t = MQAR_TASK.parse("5 4100 7 4200 _ _ 7 _ 5 _")
    assert MQAR_TASK.positions(t).scored == [(6, 4200), (8, 4100)]
    assert MQAR_TASK.positions(mq.set_value(t, 7, 5000)).scored == [(6, 5000), (8, 4100)]
    assert MQAR_TASK.positions(mq.repeat_key(t, 5, 9)).scored == [(6, 4200), (8, 4100), (9, 4100)]
    assert MQAR_TASK.positions(mq.repeat_key(t, 5, 9)).sources == (3, 1, 1)
    with pytest.raises(TokenError, match="key 9 is not among"):
        mq.set_value(t, 9, 5000)
    with pytest.raises(TokenError, match="value 12 is out of the value range"):
        mq.set_value(t, 7, 12)
    with pytest.raises(TokenError, match="must be a filler step"):
        mq.repeat_key(t, 5, 2)
    with pytest.raises(ValueError, match="do not fit"):
        mq.mqar_batch(1, 10, 4)
    with pytest.raises(TokenError, match="token id 8192 is out of range 0..8191"):
        MQAR_TASK.parse("1 8192")
    assert set(TASKS) == {"induction_heads", "selective_copying", "mqar"}
    g = np.random.default_rng(0)
    drawn = {MQAR_TASK.batch(2, 24, n_pairs=[1, 2, 4], rng=g).keys.shape[1] for _ in range(40)}
    assert drawn == {1, 2, 4}                                               # a mixture: one D per batch
    with pytest.raises(ValueError, match="empty list"):
        MQAR_TASK.batch(2, 24, n_pairs=[])
    for g in MQAR_TASK.presets.values():
        assert len(MQAR_TASK.positions(MQAR_TASK.realize(g)).scored) == g.n_pairs


def test_mqar_at_another_vocabulary_round_trips_through_metadata():
    from tasks import mqar_task, task_for
    small = mqar_task(64)                                    # keys 1..31, values 32..63
    assert small is mqar_task(64) and small.vocab_size == 64 and len(small.labels) == 64
    b = small.batch(8, 48, n_pairs=[4, 16], seed=3)
    assert ((b.keys >= 1) & (b.keys < 32)).all() and ((b.values >= 32) & (b.values < 64)).all()
    p = small.positions(b.tokens[0])
    assert p.scored == list(zip(b.queries[0].tolist(), b.answers[0].tolist()))
    # the default vocabulary would read values 32..63 as keys: the instance's own V must be used
    assert MQAR_TASK.positions(b.tokens[0]).scored != p.scored
    assert small.positions(small.set_value(b.tokens[0], int(b.keys[0, 0]), 40)).scored[0][1] in (40, p.scored[0][1])
    assert task_for(small.metadata(48)) is small and task_for(MQAR_TASK.metadata(64)) is MQAR_TASK
    assert task_for({"name": "mqar", "vocab": 7}) is None and task_for({"name": "mqar", "vocab": "x"}) is None
    from tasks import task_named
    assert task_named("mqar", 64) is small and task_named("induction_heads", 17) is task_named("induction_heads")
    assert task_for({"name": "selective_copying", "vocab": 64}) is None       # only MQAR takes a vocabulary
    with pytest.raises(ValueError, match="the task option vocab is MQAR's; selective_copying has a fixed vocabulary"):
        task_named("selective_copying", 64)
    with pytest.raises(ValueError, match="unknown task 'copy'"):
        task_named("copy")
    assert set(small.presets) == {n for n, g in MQAR_TASK.presets.items() if g.n_pairs <= 31}
    with pytest.raises(TokenError, match="token id 64 is out of range 0..63"):
        small.parse("1 64")
    with pytest.raises(ValueError, match="vocab 8192 in the task options"):
        small.batch(1, 24, n_pairs=2, vocab=8192)
    with pytest.raises(ValueError, match="even whole number"):
        mqar_task(9)


def test_training_config_takes_mqar_vocab_option():
    import json
    from tasks import mqar_task
    from training.train import TrainConfig
    cfg = TrainConfig(task="mqar", task_options=json.dumps({"vocab": 64, "n_pairs": [2, 4]}), train_len=32, val="32:4")
    assert cfg.the_task is mqar_task(64) and cfg.model_config().vocab_size == 64
    assert cfg.the_task.metadata(32, options=cfg.options())["vocab"] == 64
    with pytest.raises(ValueError, match="vocab is MQAR's"):
        TrainConfig(task="selective_copying", task_options=json.dumps({"vocab": 64}), train_len=32, val="32:4").the_task
