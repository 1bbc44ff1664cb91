"""Plain language models in the app (#12): traces that keep the top-k and p(next) instead of a 50k
distribution, the LM views (top-k, p(next), loss), the layer x time overview and the top-k
channel filter, the Mechanism tab without task parts, and bad input with specific messages.
Models are tiny HF directories (save_pretrained, random weights) with a tokenizer trained here."""
import gzip
import importlib
import json
import shutil
import sys

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import torch

from model import MambaConfig, MambaLM, Trace, load_checkpoint
from tasks import IdTask
from tests.test_load_dirs import hf_mamba2
from tests.test_text import tok_dir  # noqa: F401  (a fixture)
from viz import charts, lm, scale
from viz.frames import TraceView, time_bins

transformers = pytest.importorskip("transformers")
TEXT = "The cat sat on the mat.\nThe cat sat on the mat."


@pytest.fixture(scope="module")
def text_dir(tok_dir, tmp_path_factory):  # noqa: F811
    """An HF MambaForCausalLM directory with a tokenizer.json (vocabulary = the tokenizer's + 4)."""
    from model.tokenizer import load_tokenizer
    n = load_tokenizer(tok_dir).get_vocab_size()
    torch.manual_seed(0)
    hf = transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=n + 4, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4)).eval()
    d = tmp_path_factory.mktemp("lm") / "m"
    hf.save_pretrained(d)
    shutil.copy(tok_dir / "tokenizer.json", d / "tokenizer.json")
    return d


@pytest.fixture(scope="module")
def ids_dir(tmp_path_factory):
    """A Mamba-2 HF directory without a tokenizer: ids 0..49 in."""
    d = tmp_path_factory.mktemp("ids") / "m2"
    hf_mamba2().save_pretrained(d)
    return d


@pytest.fixture
def app_model(monkeypatch):
    """Point ui.common's model at a directory for one test (restored after)."""
    from ui import common

    def use(path):
        monkeypatch.setattr(common, "MODEL", common.load_model(str(path)))
        return common.MODEL
    return use


def big_vocab_lm(V=1100):
    torch.manual_seed(1)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=V, ssm_cfg={"d_state": 4})).eval()


# ---------------------------------------------------------------- traces
def test_top_k_and_p_next_equal_a_direct_softmax():
    """Above FULL_PROBS_MAX_VOCAB the trace keeps top-k and p(next) only; both equal a softmax of
    the model's own logits."""
    model = big_vocab_lm()
    tokens = torch.randint(0, 1100, (37,), generator=torch.Generator().manual_seed(0))
    tr = model.trace(tokens, top_k=7)
    with torch.no_grad():
        p = torch.softmax(model(tokens[None])[0].double(), -1).numpy()          # [L, V]
    assert tr.probs is None and tr.logits is None and tr.meta["full_probs"] is False
    assert tr.top_k_ids.shape == tr.top_k_probs.shape == (37, 7) and tr.meta["top_k"] == 7
    want = np.argsort(-p, axis=1, kind="stable")[:, :7]
    assert np.array_equal(tr.top_k_ids, want)
    assert np.allclose(tr.top_k_probs, np.take_along_axis(p, want, 1), rtol=1e-4, atol=1e-7)
    nxt = tokens[1:].numpy()
    assert np.allclose(tr.p_next[:-1], p[np.arange(36), nxt], rtol=1e-4, atol=1e-8)
    assert np.allclose(tr.logp_next[:-1], np.log(p[np.arange(36), nxt]), atol=1e-4)
    assert np.isnan(tr.p_next[-1]) and np.isnan(tr.logp_next[-1])
    full = model.trace(tokens, full_probs=True)                                  # asked for: kept
    assert full.probs.shape == (37, 1100) and np.allclose(full.probs, p, atol=1e-6)
    assert full.top_k_ids.shape == (37, 10)                                      # the default k
    with pytest.raises(ValueError, match="top_k must be a whole number >= 1"):
        model.trace(tokens, top_k=0)


def test_small_vocab_keeps_the_full_distribution_and_round_trips(tmp_path):
    torch.manual_seed(0)
    task_lm = MambaLM(MambaConfig()).eval()                                      # 17 tokens: a task model
    tr = task_lm.trace(np.arange(17))
    assert tr.probs.shape == (17, 17) and tr.logits.shape == (17, 17)
    assert np.array_equal(tr.top_k_ids[:, 0], tr.probs.argmax(1))
    assert np.allclose(tr.p_next[:-1], tr.probs[np.arange(16), np.arange(1, 17)], atol=1e-7)
    for t in (tr, big_vocab_lm().trace(np.arange(0, 1100, 50))):
        t.save(tmp_path / "t.safetensors")
        back = Trace.load(tmp_path / "t.safetensors")
        for a in ("tokens", "logits", "probs", "top_k_ids", "top_k_probs", "p_next", "logp_next"):
            x, y = getattr(t, a), getattr(back, a)
            assert (x is None and y is None) or np.array_equal(x, y, equal_nan=True), a
        assert back.meta["top_k"] == t.meta["top_k"] and back.meta["full_probs"] == t.meta["full_probs"]


# ---------------------------------------------------------------- LM views
def lm_view(lm_, text_or_ids, task):
    tokens = task.parse(text_or_ids) if isinstance(text_or_ids, str) else np.asarray(text_or_ids)
    return TraceView.from_trace(lm_.trace(tokens, full_probs=False, include=("delta", "state_norm")), task, "lm")


def test_lm_dashboard_shows_top_k_p_next_and_loss(text_dir):
    model = load_checkpoint(text_dir)
    view = lm_view(model, TEXT, model.text_task)
    assert view.is_lm and view.probs is None
    spec = charts.dashboard(view, max_bins=256).to_dict()                       # validates
    text = json.dumps(spec, ensure_ascii=False)
    assert "Top-10 next-token predictions (per timestep)" in text and "p(actual next token)" in text
    assert "Loss per token" in text and "Vocabulary" not in text and "prediction_heatmap" not in text
    frame = lm.topk_frame(view, time_bins(0, view.length, 256))
    assert len(frame) == view.length * 10
    first = frame[frame.t == 0].sort_values("rank")
    assert first.predicted.tolist() == model.text_task.token_labels(view.top_k_ids[0]).tolist()
    assert first.predicted.iloc[0] in text                                     # decoded strings on the page
    want = float(-np.mean(view.logp_next[:-1]))
    assert lm.mean_loss(view) == pytest.approx(want)
    assert f"mean loss **{want:.3f}** nats/token" in lm.describe(view)
    binned = charts.dashboard(view, max_bins=4).to_dict()                      # 4 bins: named means
    assert "ranked by mean p over" in json.dumps(binned, ensure_ascii=False)


def test_binned_top_k_is_the_mean_p_over_the_bin(text_dir):
    model = load_checkpoint(text_dir)
    view = lm_view(model, TEXT, model.text_task)
    bins = time_bins(0, view.length, 3)
    frame = lm.topk_frame(view, bins, k=3)
    b0 = frame[frame.t == 0]
    s, e = int(bins.start[0]), int(bins.end[0])
    mass = {}
    for t in range(s, e):
        for i, p in zip(view.top_k_ids[t], view.top_k_probs[t]):
            mass[int(i)] = mass.get(int(i), 0.0) + float(p) / (e - s)
    best = sorted(mass.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert b0["id"].tolist() == [i for i, _ in best] and np.allclose(b0.p, [p for _, p in best])


def synthetic_view(n_layer=6, U=200, L=40, seed=0):
    rng = np.random.default_rng(seed)
    V = 5000
    p_next = rng.random(L)
    p_next[-1] = np.nan
    return TraceView(tokens=rng.integers(0, V, L), probs=None, task=IdTask(V),
                     delta=[rng.random((L, U)).astype(np.float32) for _ in range(n_layer)],
                     state_norm=[rng.random((L, U)).astype(np.float32) for _ in range(n_layer)],
                     top_k_ids=rng.integers(0, V, (L, 5)), top_k_probs=np.sort(rng.random((L, 5)))[:, ::-1] / 5,
                     p_next=p_next, logp_next=np.log(p_next))


def param(spec, name):
    return next(p for p in spec["params"] if p["name"] == name)["value"].split("|")


def test_overview_has_one_row_per_layer_with_named_aggregations():
    view = synthetic_view(n_layer=6)
    spec = charts.dashboard(view, max_bins=1024, layers=[0, 5]).to_dict()
    text = json.dumps(spec, ensure_ascii=False)
    assert "Overview: mean Δ over the 200 channels of each layer" in text
    assert "Overview: total state norm ‖h_t‖ of each layer (over all channels)" in text
    assert param(spec, "cells_overview_delta_label_text") == [f"layer {i + 1}" for i in range(6)]
    got = np.array(param(spec, "cells_overview_delta_max_text"), dtype=float).reshape(40, 6)
    want = np.stack([d.astype(np.float64).mean(1) for d in view.delta], 1)
    assert np.allclose(got, want, rtol=1e-3)
    norms = np.array(param(spec, "cells_overview_norm_max_text"), dtype=float).reshape(40, 6)
    assert np.allclose(norms[:, 2], np.linalg.norm(view.state_norm[2].astype(np.float64), axis=1), rtol=1e-3)
    small = charts.dashboard(synthetic_view(n_layer=2), max_bins=64).to_dict()
    assert "Overview" not in json.dumps(small, ensure_ascii=False)             # 2 layers: no overview


def test_top_k_channels_and_the_named_rest_row():
    view = synthetic_view(n_layer=2, U=200)
    d = view.delta[1]
    kept = scale.top_units(scale.unit_scores("max_delta", d, view.state_norm[1], 0, 40), 64)
    assert kept == np.argsort(-d.max(0), kind="stable")[:64].tolist()
    values, labels = scale.keep_top(d, kept, "channel")
    rest = np.setdiff1d(np.arange(200), kept)
    assert values.shape == (40, 65) and labels[-1] == "other 136 channels: mean"
    assert np.allclose(values[:, -1], d[:, rest].astype(np.float64).mean(1), rtol=1e-6)
    spec = charts.dashboard(view, max_bins=1024, top_units=64, score="max_delta").to_dict()
    text = json.dumps(spec, ensure_ascii=False)
    assert "top 64 channels by max Δ, last row: the other 136's mean" in text
    assert param(spec, "cells_delta_2_label_text")[-1] == "other 136 channels: mean"
    cells = np.array(param(spec, "cells_delta_2_max_text"), dtype=float).reshape(40, 65)
    assert np.allclose(cells[:, -1], d[:, rest].mean(1), rtol=1e-3)
    with pytest.raises(ValueError, match="the Δ ratio needs a write position"):
        charts.dashboard(view, top_units=64, score="ratio")
    var = scale.unit_scores("variance", d, view.state_norm[1], 5, 20)
    assert np.allclose(var, d[5:20].astype(np.float64).var(0))


def test_a_wide_layer_pools_consecutive_channels_and_keeps_every_value():
    """1,536 channels one per row made each heatmap 3,072 px tall and a 61 MB page; rows of 12, named."""
    view = synthetic_view(n_layer=2, U=300, L=40)                  # 300 > MAX_UNIT_ROWS = 128: 3 per row, 100 rows
    d, n = view.delta[1].astype(np.float64), view.state_norm[1].astype(np.float64)
    assert scale.pool_size(300) == 3 and scale.pool_size(128) == 1 and scale.pool_size(129) == 2
    vmax, vmean, labels = scale.pool_units(d, 3, "channel")
    assert vmax.shape == vmean.shape == (40, 100) and labels[0] == "channels 0–2" and labels[-1] == "channels 297–299"
    assert np.allclose(vmax[:, 5], d[:, 15:18].max(1)) and np.allclose(vmean[:, 5], d[:, 15:18].mean(1))
    odd_max, odd_mean, odd = scale.pool_units(d[:, :7], 3, "head")     # the last run is shorter, its own mean
    assert odd == ["heads 0–2", "heads 3–5", "head 6"] and np.allclose(odd_mean[:, 2], d[:, 6])
    for bins, width in ((1024, 1), (8, 5)):
        spec = charts.dashboard(view, max_bins=bins, layers=[1]).to_dict()
        text = json.dumps(spec, ensure_ascii=False)
        assert "all 300 channels, 3 per row" in text and "max over each row's channels" in text
        assert param(spec, "cells_delta_2_label_text")[:2] == ["channels 0–2", "channels 3–5"]
        nb = 40 // width
        cells = np.array(param(spec, "cells_delta_2_max_text"), dtype=float).reshape(nb, 100)
        means = np.array(param(spec, "cells_norm_2_mean_text"), dtype=float).reshape(nb, 100)
        # a cell's max: over its channels and its time bin; its mean: of both
        assert np.allclose(cells, d.reshape(nb, width, 100, 3).max(axis=(1, 3)), rtol=1e-3)
        assert np.allclose(means, n.reshape(nb, width, 100, 3).mean(axis=(1, 3)), rtol=1e-3)
    mean_view = json.dumps(charts.dashboard(view, max_bins=1024, layers=[1], stat="mean").to_dict(), ensure_ascii=False)
    assert "mean over each row's channels" in mean_view            # one step per bin: the stat still chooses
    narrow = json.dumps(charts.dashboard(synthetic_view(n_layer=2, U=128), max_bins=64).to_dict(), ensure_ascii=False)
    assert "per row" not in narrow                                  # 128 channels: one row each, as before
    top = json.dumps(charts.dashboard(view, max_bins=64, top_units=64, score="max_delta").to_dict(), ensure_ascii=False)
    assert "top 64 channels by max Δ" in top and "per row" not in top


def test_the_dashboard_without_altairs_concat_copies_is_the_same_spec(monkeypatch):
    """charts.stack and charts.layered skip Altair's deep copies of every subchart (building and
    serialising a 130m dashboard: 1.0 -> 0.42 s); the spec must be exactly what alt.vconcat /
    alt.hconcat / alt.layer build: a task model's (Δ-ratio bars beside the heatmaps) and a deep,
    wide LM's (overview with links, pooled rows, top-k chart)."""
    import altair as alt

    from tests.test_viz import fake_view
    views = [(fake_view(L=300, mem_pos=100), {"sort": "ratio", "max_bins": 64}),
             (synthetic_view(n_layer=6, U=300, L=40), {"layers": [0, 5], "max_bins": 16,
                                                         "layer_links": [f"?layers={i}" for i in range(6)]})]
    fast = [charts.spec_json(charts.dashboard(v, **kw)) for v, kw in views]

    def altairs(kind, *subcharts, **kwargs):
        return (alt.vconcat if kind == "v" else alt.hconcat)(*subcharts, **kwargs)
    monkeypatch.setattr(charts, "stack", altairs)
    monkeypatch.setattr(charts, "layered", alt.layer)
    assert fast == [charts.spec_json(charts.dashboard(v, **kw)) for v, kw in views]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="wraps one chart"):
        charts.stack("h", alt.Chart(), alt.Chart())
    with pytest.raises(ValueError, match="without params, width"):
        charts.layered(alt.Chart(width=100), alt.Chart())


def test_pooled_ratio_rows_name_their_best_channel():
    frame = pd.DataFrame({"channel": np.arange(7), "write": np.ones(7), "write_step": np.zeros(7),
                          "filler_median": np.ones(7), "ratio": [1.0, 5.0, 2.0, 9.0, 3.0, 1.0, 4.0]})
    pooled = scale.ratio_pooled(frame, 3, "channel")
    assert pooled["ratio"].tolist() == [5.0, 9.0, 4.0] and pooled["channel"].tolist() == [0, 1, 2]
    assert pooled["name"].tolist() == ["channels 0–2: max at 1", "channels 3–5: max at 3", "channel 6: max at 6"]


# ---------------------------------------------------------------- the app on a plain LM
def test_overview_rows_link_to_the_view_with_their_layer_added(app_model, tok_dir, tmp_path):  # noqa: F811
    """A deep model's overview: each layer's row carries the permalink of this view with that layer
    added (a click drills in); the link restores the text and the layers. Exports carry no links."""
    from model.tokenizer import load_tokenizer
    from ui import explore, export, permalink
    torch.manual_seed(0)
    hf = transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=load_tokenizer(tok_dir).get_vocab_size() + 4, hidden_size=16, state_size=4, num_hidden_layers=6,
        expand=2, conv_kernel=4)).eval()
    hf.save_pretrained(tmp_path / "deep")
    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "deep" / "tokenizer.json")
    app_model(tmp_path / "deep")
    shown = explore.default_layers()
    assert shown == ["layer 1", "layer 3", "layer 4", "layer 6"]
    plot, _ = explore.show_plot(TEXT, "index", 64, None, None, shown, "max")
    spec = json.loads(plot.plot)
    links = [v["href"] for d in spec["datasets"].values() if isinstance(d, list) for v in d if "href" in v]
    assert len(links) == 6                                          # one per layer (both overview heatmaps share them)
    assert [q.split("&layers=")[1].split("&")[0] for q in links[:6]] == \
        ["1,3,4,6", "1,2,3,4,6", "1,3,4,6", "1,3,4,6", "1,3,4,5,6", "1,3,4,6"]
    out = permalink.open_link(links[1])
    assert out[0] == TEXT and out[12] == ["layer 1", "layer 2", "layer 3", "layer 4", "layer 6"] and out[-1] == ""
    crowded = permalink.drill_links(TEXT, "index", 64, None, None, [f"layer {i}" for i in (1, 2, 3, 4, 5, 6)], "max")
    assert all(len(q.split("&layers=")[1].split("&")[0].split(",")) == 6 for q in crowded)
    html = export.export_html(TEXT, "index", 64, None, None, shown, "max")
    assert "click to show it below" not in open(html).read()


def test_explore_and_exports_on_a_plain_lm(app_model, text_dir, tmp_path, monkeypatch):
    from ui import explore, export, storage
    monkeypatch.setattr(storage, "root", lambda: tmp_path / "exports")
    m = app_model(text_dir)
    assert m.task.name == "text" and "plain language model" in m.status
    layers = explore.default_layers()
    chart, summary = explore.show(TEXT, "top 64 by max Δ", 64, None, None, layers, "max")
    chart.to_dict()
    assert "mean loss" in summary
    path = export.export_csv(TEXT, None, None, False)
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        df = pd.read_csv(fh, keep_default_na=False)
    tokens = m.task.parse(TEXT)
    labels = m.task.token_labels(tokens)
    assert list(df.columns) == ["layer", "t", "channel", "quantity", "value", "token", "predicted"]
    p = df[df.quantity == "p_next"]
    assert p.token.tolist() == labels.tolist()
    top = df[df.quantity == "top_k_ids"]
    assert (top.predicted == m.task.token_labels(top.value.astype(int).to_numpy())).all()
    tr = Trace.load(export.export_safetensors(TEXT))
    assert tr.meta["token_labels"] == labels.tolist()
    html = export.export_html(TEXT, "index", 64, None, None, layers, "max")
    with open(html, encoding="utf-8") as fh:
        assert "Top-10 next-token predictions" in fh.read()


def test_mechanism_tab_on_a_plain_lm(app_model, text_dir):
    from ui import mechanism
    app_model(text_dir)
    parts = mechanism.task_parts()
    assert parts["task"] is False and "plain language model" in parts["note"] and parts["channels"] == "0"
    names = mechanism.checkpoint_names()
    assert names == [f"{text_dir.name} (loaded at start)"]          # the 17-token checkpoints are not offered
    md, a, b = mechanism.compare_checkpoints(TEXT, names[0], names[0])
    assert "mean loss" in md and a is None and b is None
    with pytest.raises(gr.Error, match="are the top Δ-ratio channels at a task's write position"):
        mechanism.intervene(TEXT, names[0], "clamp Δ", "layer 1", "memory channels", 3, None, 0.0)
    with pytest.raises(gr.Error, match="a plain language model has no write position"):
        mechanism.intervene(TEXT, names[0], "clamp Δ", "layer 1", "0, 1", None, None, 0.0)
    md, plot = mechanism.intervene(TEXT, names[0], "zero state", "layer 2", "0, 1, 2", 4, None, 0.0)
    assert "mean loss" in md and "p(actual next token)" in plot.plot
    assert mechanism.show_attention(TEXT, names[0], "layer 1", "3").type == "altair"


def test_app_layout_hides_task_controls_for_a_plain_lm(text_dir, monkeypatch):
    """app.py built on a plain LM: no presets, generator or quick edits; the Mechanism tab's note."""
    from ui import common
    monkeypatch.setenv(common.CHECKPOINT_ENV, str(text_dir))
    monkeypatch.setattr(common, "MODEL", common.MODEL)              # restored after the test
    monkeypatch.setattr(sys, "argv", ["app.py"])
    app = importlib.reload(sys.modules["app"]) if "app" in sys.modules else importlib.import_module("app")
    by_id = {b.elem_id: b for b in app.demo.blocks.values() if getattr(b, "elem_id", None)}
    assert by_id["preset"].visible is False
    assert by_id["mech-lm-note"].visible is True and "plain language model" in by_id["mech-lm-note"].value
    assert by_id["mech-channels"].value == "0"
    assert by_id["tokens"].value == "The quick brown fox jumps over the lazy dog. The quick brown fox"


def test_bad_input_for_a_plain_lm(app_model, text_dir, ids_dir, monkeypatch):
    from ui import common, explore
    layers = ["layer 1"]
    app_model(text_dir)
    with pytest.raises(gr.Error, match="the text is empty"):
        explore.show("", "index", 64, None, None, layers, "max")
    per_token = common.bytes_per_step(common.MODEL.lm, common.CHART_QUANTITIES)
    monkeypatch.setattr(common, "TRACE_MAX_BYTES", 20 * per_token)     # a cap of 20 tokens
    with pytest.raises(gr.Error, match=r"encodes to \d+ tokens, over the cap of 20 \(the cap for a "):
        explore.show(TEXT * 3, "index", 64, None, None, layers, "max")
    with pytest.raises(gr.Error, match="the Δ ratio needs a task's write position"):
        explore.show(TEXT, "Δ ratio", 64, None, None, layers, "max")
    with pytest.raises(gr.Error, match="the generator makes induction-heads sequences"):
        explore.generate(256, -1, -1, 0, 1, False, 0)
    m = app_model(ids_dir)
    assert isinstance(m.task, IdTask) and m.task.name == "next_token" and m.lm.config.layer == "Mamba2"
    with pytest.raises(gr.Error, match=r"token id 50 is out of range 0..49 \(token 2\)"):
        explore.show("3 50 7", "index", 64, None, None, layers, "max")
    with pytest.raises(gr.Error, match="is not a whole number"):
        explore.show("hello world", "index", 64, None, None, layers, "max")
    with pytest.raises(gr.Error, match="has no tokenizer.json, so it takes ids"):
        explore.show(" ", "index", 64, None, None, layers, "max")
    chart, summary = explore.show("3 7 7 49 1 2", "index", 64, None, None, layers, "max")
    chart.to_dict()
    assert "per **head**" in summary and "5 predicted tokens" in summary
