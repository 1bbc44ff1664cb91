"""viz/: time binning, token roles, tidy frames, the Δ ratio as the charts show it, chart specs,
the tidy CSV. (The text box, edits and presets are tasks/: tests/test_tasks.py.)

Synthetic traces (random arrays with the real shapes) keep these fast; one test runs the model.
"""
import gzip
import io
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tasks import INDUCTION, Positions, Task
from tasks.induction import TRIGGER
from tasks.measures import unit_order
from viz import charts, frames, inline, summary, tables
from viz.frames import TraceView

D, N_LAYER, V = 128, 2, 17


def fake_view(L=256, seed=0, mem_pos=None, query=True, label="test", task=INDUCTION):
    """A TraceView with the real shapes: S at mem_pos-1, M at mem_pos, S at the end."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 16, L)
    if mem_pos is not None:
        tokens[mem_pos - 1], tokens[mem_pos] = TRIGGER, 7
    if query:
        tokens[-1] = TRIGGER
    logits = rng.normal(size=(L, V))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    delta = [rng.gamma(2.0, 0.05, size=(L, D)).astype(np.float32) for _ in range(N_LAYER)]
    norm = [rng.gamma(2.0, 1.0, size=(L, D)).astype(np.float32) for _ in range(N_LAYER)]
    return TraceView(tokens=tokens, probs=probs.astype(np.float32), delta=delta, state_norm=norm, task=task,
                     label=label)


# ---------------------------------------------------------------- spec helpers
def units(spec, data=None):
    """Every unit (mark-bearing) view in a compound spec, depth first, with the data it inherits
    (Altair lifts the data a layer's charts share to the layer)."""
    data = spec.get("data", data)
    if "mark" in spec:
        yield {**spec, "data": data}
    for key in ("vconcat", "hconcat", "layer"):
        for sub in spec.get(key, []):
            yield from units(sub, data)


def unit_frame(spec, unit):
    """The unit's data, parsed back from the inline CSV dataset (what the browser receives)."""
    text = spec["datasets"][unit["data"]["name"]]
    return pd.read_csv(io.StringIO(text)) if text.count("\n") else pd.read_csv(io.StringIO(text + "\n"))


def title_of(unit):
    t = unit.get("title", "")
    return t.get("text", "") if isinstance(t, dict) else t


def heatmaps(spec, what):
    """Rect-mark charts (token strip, predictions) whose title holds `what`."""
    return [u for u in units(spec) if u["mark"] in ("rect", {"type": "rect"}) and what in title_of(u)]


def layers_of(spec):
    if "layer" in spec:
        yield spec
    for key in ("vconcat", "hconcat", "layer"):
        for sub in spec.get(key, []):
            yield from layers_of(sub)


def channel_heatmaps(spec, what):
    """The image heatmaps (layer charts) whose title holds `what`: (layer, image unit)."""
    out = []
    for lay in layers_of(spec):
        if what in title_of(lay):
            img = [u for u in lay["layer"] if u["mark"].get("type") == "image"]
            out.append((lay, img[0]))
    return out


def cells(spec, name, key):
    """A heatmap's page copy of its cells (charts.hover_params): the '|'-joined param split."""
    p = {q["name"]: q for q in spec["params"]}[f"cells_{name}_{key}_text"]
    return p["value"].split("|")


def image_of(spec, unit):
    """The heatmap's PNG (a data URI in the image unit's one datum), decoded: [rows, bins, RGB]."""
    import base64
    from viz import raster
    d = unit["data"]
    values = d["values"] if "values" in d else spec["datasets"][d["name"]]
    return raster.read_png(base64.b64decode(values[0]["url"].split(",", 1)[1]))


# ---------------------------------------------------------------- layering
def test_viz_imports_neither_torch_nor_gradio_nor_the_model():
    code = ("import sys, viz, viz.charts, viz.frames, viz.hover, viz.inline, viz.raster, viz.tables, viz.summary, "
            "viz.mechanism; bad = [m for m in ('torch', 'gradio', 'model', 'analysis', 'ui') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


class ToyTask(Task):
    """Not the induction task: 5 tokens, the cue Q at 0 and at the end, the token after the first
    Q stored and asked for at the end. viz must draw it from the task alone."""
    name, vocab_size, labels, roles = "toy", 5, ("a", "b", "c", "d", "Q"), ("noise", "store", "cue")

    def positions(self, tokens):
        L = len(tokens)
        return Positions(writes=(1,), queries=(L - 1,), targets=(int(tokens[1]),), markers=(0,))


def test_the_charts_draw_any_task_from_its_labels_and_roles():
    task = ToyTask()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 4, 200)
    tokens[0] = tokens[-1] = 4
    tokens[1] = 2                                                  # the stored token: 'c'
    probs = np.full((200, 5), 0.1)
    probs[-1, 2] = 0.6                                             # correct at the query
    v = TraceView(tokens=tokens, probs=probs, delta=[rng.gamma(2.0, 0.05, (200, 8))],
                  state_norm=[rng.random((200, 8))], task=task, d_conv=2)
    spec = charts.dashboard(v, max_bins=16).to_dict()
    pred = heatmaps(spec, "Predictions")[0]
    assert pred["encoding"]["y"]["sort"] == list(task.labels) and pred["height"] == 5 * charts.VOCAB_PX
    assert set(unit_frame(spec, pred).predicted) == set(task.labels)
    strip = unit_frame(spec, heatmaps(spec, "Tokens")[0])
    assert strip.role.iloc[0] == "cue" and strip.role.iloc[-1] == "query: correct"      # binned: top role wins
    assert strip.token.iloc[0].startswith("13 tokens, 1×Q") and strip.token.iloc[-1].endswith("1×Q")
    assert [t for t in units(spec) if t.get("name") == "tokens"][0]["encoding"]["color"]["scale"]["domain"] == \
        ["noise", "store", "cue", "query: correct", "query: wrong"]
    lines = [u for u in units(spec) if u.get("name") == "p_lines"]
    assert "p(target c)" in set(unit_frame(spec, lines[0]).series)
    text = summary.describe(v)
    assert "cue at t = 0, store = **c** at t = 1" in text and "top-1 **c**" in text and "**correct**" in text
    # the Δ ratio uses the view's d_conv: write window [1, 3)
    assert v.windows.write == (1, 3) and "max Δ, write t = 1..2" in json.dumps(spec, ensure_ascii=False)


# ---------------------------------------------------------------- binning
def test_time_bins_cover_every_step_once():
    b = frames.time_bins(0, 10, 4)
    assert b.width == 3 and b.start.tolist() == [0, 3, 6, 9] and b.end.tolist() == [3, 6, 9, 10]
    b = frames.time_bins(5, 9, 256)
    assert b.width == 1 and b.start.tolist() == [5, 6, 7, 8]
    for n, m in [(1, 1), (257, 256), (16384, 256), (65536, 256), (1000, 7)]:
        b = frames.time_bins(0, n, m)
        covered = np.concatenate([np.arange(s, e) for s, e in zip(b.start, b.end)])
        assert covered.tolist() == list(range(n)) and b.n <= m


def test_bin_max_and_mean_including_the_short_last_bin():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)             # [L=10, 2]
    vmax, vmean = frames.time_bins(0, 10, 4).reduce(x)
    assert vmax.tolist() == [[4, 5], [10, 11], [16, 17], [18, 19]]
    assert vmean.tolist() == [[2, 3], [8, 9], [14, 15], [18, 19]]   # last bin holds one step
    vmax, vmean = frames.time_bins(2, 7, 2).reduce(x)               # window t = 2..6, width 3
    assert vmax.tolist() == [[8, 9], [12, 13]] and vmean.tolist() == [[6, 7], [11, 12]]


def test_window_is_clamped_and_empty_windows_refused():
    assert frames.clamp_window(100, None, None) == (0, 100)
    assert frames.clamp_window(100, 10, 1000) == (10, 100)
    with pytest.raises(ValueError, match="empty"):
        frames.clamp_window(100, 50, 20)


def test_heatmap_frame_rows_and_values():
    v = fake_view(L=1000)
    b = frames.time_bins(0, 1000, 64)                                # width 16, 63 bins
    f = frames.heatmap_frame(v.delta[0], b)
    assert len(f) == b.n * D and list(f.columns) == ["t", "channel", "max", "mean"]
    row = f[(f.t == 16 * 5) & (f.channel == 7)].iloc[0]
    assert row["max"] == pytest.approx(v.delta[0][80:96, 7].max())
    assert row["mean"] == pytest.approx(v.delta[0][80:96, 7].mean(), rel=1e-6)
    f1 = frames.heatmap_frame(v.delta[0], frames.time_bins(0, 1000, 1000))
    assert list(f1.columns) == ["t", "channel", "max"] and len(f1) == 1000 * D


def test_delta_ratio_is_the_tasks_definition_and_orders_the_channels():
    """The dashboard's Δ ratio is tasks.measures': max Δ over the write window [w, w + d_conv)
    over the median Δ of the filler after it (up to the query)."""
    v = fake_view(L=300, mem_pos=41)
    v.delta[0][43, 5] = 100.0                                        # channel 5 writes 2 steps after M
    assert (v.windows.write, v.windows.filler) == ((41, 45), (45, 299))
    r = v.ratios[0]
    want = v.delta[0][41:45].max(0) / np.median(v.delta[0][45:299], axis=0)
    assert np.allclose(r.ratio, want, rtol=1e-6) and r.write_step[5] == 43
    order = unit_order(r.ratio, D, "ratio")
    assert order[0] == 5 and sorted(order) == list(range(D))
    assert (np.diff(r.ratio[order]) <= 0).all()
    assert fake_view(L=100, mem_pos=None).ratios is None
    assert fake_view(L=300, mem_pos=41).ratios[0].ratio.shape == (D,)


def test_d_conv_comes_from_the_trace_metadata():
    assert frames.trace_d_conv({"config": {"ssm_cfg": {"d_conv": 2}}}) == 2
    assert frames.trace_d_conv({"config": {"ssm_cfg": {}}}) == frames.trace_d_conv({}) == 4
    v = fake_view(L=100, mem_pos=20)
    v2 = TraceView(tokens=v.tokens, probs=v.probs, delta=v.delta, state_norm=v.state_norm, task=INDUCTION, d_conv=2)
    assert v.windows.write == (20, 24) and v2.windows.write == (20, 22)


def test_token_roles_and_the_query_score():
    v = fake_view(L=50, mem_pos=10)
    v.probs[49] = 0.0
    v.probs[49, 7] = 1.0                                              # top-1 at the query is M = 7
    names = np.array(frames.role_names(INDUCTION))[frames.roles(v)]
    assert (names[9], names[10], names[49]) == ("trigger S", "memory M", "query: correct")
    assert set(names[:9]) == {"filler"}
    w = fake_view(L=50, mem_pos=10)
    w.probs[49] = 0.0
    w.probs[49, 3] = 1.0
    assert frames.role_names(INDUCTION)[frames.roles(w)[49]] == "query: wrong"
    assert w.score.correct == 0 and v.score.correct == 1


# ---------------------------------------------------------------- chart specs
@pytest.fixture(scope="module")
def spec256():
    v = fake_view(L=256, mem_pos=100)
    return v, charts.dashboard(v, sort="ratio").to_dict()           # to_dict validates against the schema


def test_heatmap_encodings_and_types(spec256):
    _, spec = spec256
    for what, scheme in (("Δ (step size", "viridis"), ("hidden-state norm", "magma")):
        hs = channel_heatmaps(spec, what)
        assert len(hs) == N_LAYER
        for lay, img in hs:
            assert "per timestep" in title_of(lay)
            enc = img["encoding"]
            assert (enc["x"]["field"], enc["x"]["type"], enc["x"]["scale"]["domain"]) == ("t", "quantitative", [0, 256])
            assert (enc["y"]["field"], enc["y"]["scale"]["domain"], enc["y"]["scale"]["reverse"]) == ("row", [0, D], True)
            assert enc["url"]["field"] == "url" and img["mark"]["smooth"] is False
            legend = [u for u in lay["layer"] if "color" in u.get("encoding", {})]
            assert len(legend) == 1 and legend[0]["encoding"]["color"]["scale"]["scheme"] == scheme
            readout = [u for u in lay["layer"] if u["mark"]["type"] == "text"]
            expr = readout[-1]["mark"]["text"]["expr"]
            assert f"hover_{img['name']}_x" in expr and "channel" in expr and "token" in expr
            # Mamba-1: channel rows of CHANNEL_PX (a Mamba-2 trace gets heads: test_mamba2_views.py)
            assert lay["height"] == charts.CHANNEL_PX * D and enc["y"]["title"] == "channel (by Δ ratio)"


def test_every_chart_has_its_data_and_no_cell_is_dropped(spec256):
    """Each heatmap image holds every cell, coloured as Vega's scale would (Vega's palette, the
    data's extent), rows in the channel order; the page's copy of the values holds every cell."""
    from viz import raster
    v, spec = spec256
    for (lay, img), name, data in [*[(h, f"delta_{i + 1}", v.delta[i]) for i, h in enumerate(channel_heatmaps(spec, "Δ (step size"))],
                                   *[(h, f"norm_{i + 1}", v.state_norm[i]) for i, h in enumerate(channel_heatmaps(spec, "hidden-state norm"))]]:
        order = [int(c) for c in cells(spec, name, "order")]
        scheme = "viridis" if name.startswith("delta") else "magma"
        want = raster.colorize(data[:, order].T, scheme, raster.extent(data))
        assert np.array_equal(image_of(spec, img), want)                   # [D rows, 256 steps, RGB]
        got = np.array(cells(spec, name, "max"), dtype=float).reshape(256, D)
        assert np.allclose(got, data, rtol=1e-3)                      # 4 significant digits on the page
        assert len(cells(spec, name, "time")) == len(cells(spec, name, "token")) == 256
    pred = heatmaps(spec, "Predictions")[0]
    assert len(unit_frame(spec, pred)) == 256 * V
    strip = heatmaps(spec, "Tokens")[0]
    assert unit_frame(spec, strip).role.tolist().count("memory M") == 1


def raster_rgb(values, scheme, whole):
    from viz import raster
    return raster.colorize(values[None], scheme, raster.extent(whole))[0]


def test_colorize_matches_vega_palette_and_png_round_trips():
    from viz import raster
    vals = np.array([[0.0, 0.5, 1.0, np.nan]])
    rgb = raster.colorize(vals, "viridis", (0.0, 1.0))
    assert rgb[0, 0].tolist() == [0x44, 0x01, 0x54] and rgb[0, 2].tolist() == [0xfd, 0xe7, 0x25]   # ends
    stops = raster.palette("viridis")
    assert len(stops) % 2 == 1 and rgb[0, 1].tolist() == stops[len(stops) // 2].astype(int).tolist()  # middle
    assert rgb[0, 3].tolist() == [255, 255, 255]
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(raster.read_png(raster.png_bytes(img)), img)
    with pytest.raises(ValueError, match="unknown colour scheme"):
        raster.palette("jet")


def test_long_sequences_are_binned_with_max_and_mean_labelled():
    v = fake_view(L=1 << 16, mem_pos=30000)
    spec = charts.dashboard(v, max_bins=256).to_dict()              # 2^16 steps -> 256 bins of 256
    b = frames.time_bins(0, 1 << 16, 256)
    for i, (lay, img) in enumerate(channel_heatmaps(spec, "Δ (step size")):
        assert "max over 256-step bins" in title_of(lay)
        expr = [u for u in lay["layer"] if u["mark"]["type"] == "text"][-1]["mark"]["text"]["expr"]
        assert "'Δ max '" in expr and "', mean '" in expr                      # the readout names both
        vmax, vmean = b.reduce(v.delta[i])
        for key, want in (("max", vmax), ("mean", vmean)):                     # none dropped
            got = np.array(cells(spec, f"delta_{i + 1}", key), dtype=float).reshape(256, D)
            assert np.allclose(got, want, rtol=1e-3)                  # 4 significant digits on the page
        assert image_of(spec, img).shape == (D, 256, 3)
    lines = [u for u in units(spec) if u["mark"] in ("line", {"type": "line"}, {"type": "line", "opacity": 0.3})]
    stats = set(unit_frame(spec, lines[0]).stat)
    assert stats == {"max", "mean"}


def test_one_time_selection_shared_by_every_time_chart(spec256):
    _, spec = spec256
    params = [p for p in spec["params"] if p["name"] == charts.TIME_PARAM]
    assert len(params) == 1 and params[0]["select"] == {"type": "interval", "encodings": ["x"]}
    names = [u.get("name") for u in units(spec) if u.get("name")]
    assert len(names) == len(set(names))                            # unique view names
    assert sorted(params[0]["views"]) == sorted(names)
    assert len(names) == 3 + 3 * N_LAYER                            # strip, predictions, p line + 3 per layer
    # every chart with a time axis shows the selection: a conditional opacity or a filtered layer
    for u in units(spec):
        if u.get("encoding", {}).get("x", {}).get("field") != "t":
            continue
        shows = ("condition" in u["encoding"].get("opacity", {})
                 or any(t.get("filter", {}).get("param") == charts.TIME_PARAM for t in u.get("transform", [])))
        assert shows or u.get("name") in params[0]["views"], title_of(u)


def test_channel_sort_order_is_the_same_in_the_heatmaps_and_the_ratio_bars():
    v = fake_view(L=200, mem_pos=50)
    v.delta[0][50, 77] = 50.0
    spec = charts.dashboard(v, sort="ratio").to_dict()
    bars = [u["encoding"]["y"]["sort"] for u in units(spec)
            if u.get("encoding", {}).get("y", {}).get("field") == "channel"]
    assert len(bars) == N_LAYER                                        # the ratio bars per layer
    want = unit_order(v.ratios[0].ratio, D, "ratio")
    assert bars[0][0] == 77 and bars[0] == want
    for name in ("delta_1", "norm_1"):
        assert [int(c) for c in cells(spec, name, "order")] == want
    img = image_of(spec, channel_heatmaps(spec, "Layer 1: Δ")[0][1])
    top = raster_rgb(v.delta[0][:, 77], "viridis", v.delta[0])
    assert np.array_equal(img[0], top)                                # channel 77 is the image's first row
    spec = charts.dashboard(v, sort="index").to_dict()
    assert [int(c) for c in cells(spec, "delta_1", "order")] == list(range(D))


def test_no_memory_position_means_no_ratio_chart():
    v = fake_view(L=100, mem_pos=None)
    spec = charts.dashboard(v, sort="ratio").to_dict()
    assert not [u for u in units(spec) if "Δ ratio" in title_of(u)]
    assert len(channel_heatmaps(spec, "Δ (step size")) == N_LAYER


@pytest.mark.parametrize("kwargs, message", [
    ({"stat": "median"}, "unknown bin statistic"), ({"max_bins": 0}, "out of range"),
    ({"layers": [2]}, "layer 3 does not exist"), ({"sort": "random"}, "unknown channel sort"),
])
def test_dashboard_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        charts.dashboard(fake_view(L=50, mem_pos=10), **kwargs)


def test_inline_csv_quotes_text_and_keeps_every_row():
    f = pd.DataFrame({"t": [0, 1, 2], "token": ['64 tokens, 1×S', 'a"b', "S"], "v": [0.123456, 1e-7, 3.0]})
    back = pd.read_csv(io.StringIO(inline.csv_text(f)))
    assert back.token.tolist() == f.token.tolist() and np.allclose(back.v, [0.1235, 1e-7, 3.0])


def spec_from_html(html):
    m = re.search(r"(?:var|const) spec = (\{.*?\});\n", html, re.S)
    assert m, "no Vega-Lite spec in the page"
    return json.loads(m.group(1))


def test_html_export_holds_the_specs():
    chart = charts.dashboard(fake_view(L=64, mem_pos=10))
    html = charts.chart_html(chart)
    spec = spec_from_html(html)
    assert "cdn.jsdelivr" not in html and "<script src=" not in html     # standalone: works offline
    assert spec["params"][0]["name"] == charts.TIME_PARAM and spec["datasets"] == chart.to_dict()["datasets"]
    assert len(channel_heatmaps(spec, "Δ (step size")) == N_LAYER


# ---------------------------------------------------------------- the tidy CSV
class _Layer:
    def __init__(self, rng, L):
        for q, c in [("delta", D), ("state_norm", D), ("ssm_input", D), ("ssm_output", D), ("B", 16), ("C", 16),
                     ("resid_post", 64)]:
            setattr(self, q, rng.normal(size=(L, c)).astype(np.float32))


class _Trace:
    def __init__(self, L=50):
        rng = np.random.default_rng(0)
        self.tokens = rng.integers(0, 17, L)
        self.layers = [_Layer(rng, L) for _ in range(N_LAYER)]
        self.logits = rng.normal(size=(L, V)).astype(np.float32)
        self.probs = rng.random((L, V)).astype(np.float32)


def test_tidy_csv_round_trip(tmp_path):
    tr = _Trace(50)
    n = tables.write_tidy_csv(tr, tmp_path / "t.csv.gz", t_from=10, t_to=30)
    with gzip.open(tmp_path / "t.csv.gz", "rt") as fh:
        df = pd.read_csv(fh)
    assert list(df.columns) == tables.COLUMNS and len(df) == n == 20 * (2 * D * N_LAYER + V)
    d = df[(df.layer == 1) & (df.quantity == "delta")].pivot(index="t", columns="channel", values="value")
    assert d.index.tolist() == list(range(10, 30))
    assert np.array_equal(d.to_numpy(dtype=np.float32), tr.layers[1].delta[10:30])     # float32 exact
    p = df[df.quantity == "probs"]
    assert set(p.layer) == {-1} and np.array_equal(
        p.pivot(index="t", columns="channel", values="value").to_numpy(dtype=np.float32), tr.probs[10:30])


def test_tidy_csv_all_quantities_and_the_cap(tmp_path):
    tr = _Trace(20)
    n = tables.write_tidy_csv(tr, tmp_path / "a.csv", quantities=tables.ALL_QUANTITIES)
    assert n == 20 * ((4 * D + 32 + 64) * N_LAYER + 2 * V)
    assert len(pd.read_csv(tmp_path / "a.csv")) == n
    with pytest.raises(ValueError, match=r"would have 10,580 rows, over the cap of 1,000"):
        tables.write_tidy_csv(tr, tmp_path / "b.csv.gz", max_rows=1000)
    assert not (tmp_path / "b.csv.gz").exists()                       # refused: nothing written


def test_with_the_real_model_and_summary():
    """End to end inside viz: a real trace, the dashboard validates and holds the trace's values,
    the summary and the token strip agree with tasks.score."""
    import torch
    from model import MambaConfig, MambaLM
    torch.manual_seed(0)
    tr = MambaLM(MambaConfig()).trace(INDUCTION.realize(INDUCTION.presets["Two triggers"]))
    v = TraceView.from_trace(tr, INDUCTION, label="fresh")
    assert v.d_conv == MambaConfig().d_conv
    spec = charts.dashboard(v, sort="ratio").to_dict()
    assert json.loads(json.dumps(spec))["title"]["text"].startswith("fresh · L = 256")
    text = summary.describe(v)
    correct = v.score.correct == 1
    assert "2 × trigger S" in text and ("**correct**" if correct else "**wrong**") in text
    top = INDUCTION.labels[int(tr.probs[-1].argmax())]
    assert f"top-1 **{top}**" in text
    strip = unit_frame(spec, heatmaps(spec, "Tokens")[0])
    assert strip.role.iloc[-1] == ("query: correct" if correct else "query: wrong")
    by_index = charts.dashboard(v).to_dict()                          # the default: channels by index
    assert [int(c) for c in cells(by_index, "delta_2", "order")] == list(range(D))
    got = np.array(cells(by_index, "delta_2", "max"), dtype=float).reshape(256, D)
    assert np.allclose(got, tr.layers[1].delta, rtol=1e-3)
    ratio = v.ratios[1].ratio
    assert [int(c) for c in cells(spec, "delta_2", "order")] == unit_order(ratio, D, "ratio")


def test_tidy_csv_gz_is_byte_identical_run_to_run(tmp_path):
    """No time in the gzip header: the same trace exports to the same bytes (shareable, cacheable)."""
    tr = _Trace(30)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    tables.write_tidy_csv(tr, tmp_path / "a" / "t.csv.gz")
    tables.write_tidy_csv(tr, tmp_path / "b" / "t.csv.gz")
    a, b = (tmp_path / "a" / "t.csv.gz").read_bytes(), (tmp_path / "b" / "t.csv.gz").read_bytes()
    assert a == b and a[4:8] == b"\0\0\0\0"                          # MTIME field of RFC 1952


# ---------------------------------------------------------------- the intervention chart
def test_p_target_chart_bins_long_runs_names_the_binning_and_drops_nothing():
    from viz.intervention import MAX_BINS, p_target_chart
    L = 16384                                                        # the app's "Long" preset
    rng = np.random.default_rng(0)
    before, after = rng.random(L), rng.random(L) * 0.1
    spec = p_target_chart(before, after, title="p(M) before vs after clamp Δ", y_title="p(M)").to_dict()
    df = unit_frame(spec, spec)
    assert len(df) == 2 * 2 * MAX_BINS                                # 2 runs x (max, mean) x 1024 bins
    b = frames.time_bins(0, L, MAX_BINS)
    vmax, vmean = b.reduce(before)
    got = df[(df.run == "before") & (df.stat == "max")].sort_values("t")
    assert np.allclose(got.value, vmax, rtol=1e-3) and got.t.tolist() == b.start.tolist()
    assert np.allclose(df[(df.run == "before") & (df.stat == "mean")].sort_values("t").value, vmean, rtol=1e-3)
    assert "max and mean over 16-step bins" in title_of(spec) and spec["encoding"]["y"]["title"] == "p(M)"
    short = p_target_chart(np.ones(7), np.zeros(7)).to_dict()
    d = unit_frame(short, short)
    assert len(d) == 14 and set(d.stat) == {"value"} and "per timestep" in title_of(short)
    with pytest.raises(ValueError, match="alike"):
        p_target_chart(np.ones(7), np.ones(8))
