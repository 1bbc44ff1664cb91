"""viz/: token parsing and edits, time binning, tidy frames, chart specs, the tidy CSV.

Synthetic traces (random arrays with the real shapes) keep these fast; one test runs the model.
"""
import gzip
import io
import json
import re
import subprocess
import sys

import altair as alt
import numpy as np
import pandas as pd
import pytest

from viz import charts, frames, sequences, tables
from viz.frames import TraceView
from viz.sequences import TRIGGER, TokenError

D, N_LAYER, V = 128, 2, 17


def fake_view(L=256, seed=0, mem_pos=None, query=True, label="test"):
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
    return TraceView(tokens=tokens, probs=probs.astype(np.float32), delta=delta, state_norm=norm, label=label)


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
def test_viz_imports_neither_torch_nor_gradio():
    code = ("import sys, viz, viz.charts, viz.frames, viz.tables, viz.sequences, viz.summary; "
            "bad = [m for m in ('torch', 'gradio') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_trigger_matches_the_task_definition():
    from model import data
    assert sequences.TRIGGER == data.TRIGGER and sequences.CONTENT_VOCAB == data.CONTENT_VOCAB


# ---------------------------------------------------------------- the text box
def test_parse_and_format_round_trip():
    ids = sequences.parse_tokens("3 7,1  S s,16\n9")
    assert ids.tolist() == [3, 7, 1, 16, 16, 16, 9]
    assert sequences.format_tokens(ids) == "3 7 1 S S S 9"
    assert sequences.parse_tokens(sequences.format_tokens(ids)).tolist() == ids.tolist()


@pytest.mark.parametrize("text, message", [
    ("1 2 x 4", "token 3 ('x') is not an integer or S"),
    ("1 2.5", "token 2 ('2.5') is not an integer or S"),
    ("1 70 3", "token id 70 is out of range 0..16"),
    ("-1", "token id -1 is out of range 0..16"),
    ("", "the sequence is empty"),
    (" , ,\n", "the sequence is empty"),
    ("1 " * (sequences.MAX_LEN + 1), f"over the cap of {sequences.MAX_LEN:,}"),
])
def test_parse_errors_name_the_token_and_the_rule(text, message):
    with pytest.raises(TokenError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        sequences.parse_tokens(text)


def test_task_positions():
    pos = sequences.task_positions(np.array([1, 16, 5, 2, 16, 9, 3, 16]))
    assert (pos.query, pos.triggers, pos.memory_pos, pos.target) == (7, [1, 4], [2, 5], 5)
    assert sequences.task_positions(np.array([1, 2, 3])).target is None


def test_quick_edits():
    t = np.array([4, 16, 5, 2, 3, 8, 16])
    assert sequences.set_memory_token(t, 11).tolist() == [4, 16, 11, 2, 3, 8, 16]
    moved = sequences.move_trigger(t, 3)
    assert moved.tolist() == [4, 2, 3, 16, 5, 8, 16]            # filler order kept, length kept
    assert sequences.move_trigger(t, 0).tolist() == [16, 5, 4, 2, 3, 8, 16]
    with pytest.raises(TokenError, match="trigger position 5 is out of range 0..4"):
        sequences.move_trigger(t, 5)
    with pytest.raises(TokenError, match="no trigger"):
        sequences.set_memory_token(np.array([1, 2, 16]), 3)


def test_presets_realise_what_they_say():
    from model.data import induction_batch
    got = {name: sequences.realize(g, induction_batch) for name, g in sequences.PRESETS.items()}
    pos = {k: sequences.task_positions(v) for k, v in got.items()}
    assert len(got["Paper setup (L=256)"]) == 256 and len(pos["Paper setup (L=256)"].triggers) == 1
    assert len(got["Long: 16384 tokens"]) == 16384
    assert pos["No trigger before the query"].triggers == [] and pos["No trigger before the query"].query == 255
    assert len(pos["Two triggers"].triggers) == 2
    m = pos["Memory token also in the filler"]
    assert (got["Memory token also in the filler"] == m.target).sum() >= 10
    # a chosen memory token relabels the sequence: M sits after the trigger, filler keeps its statistics
    g = sequences.Generator(length=64, memory=9, seed=5, filler_excludes_memory=True)
    t = sequences.realize(g, induction_batch)
    p = sequences.task_positions(t)
    assert p.target == 9 and (t == 9).sum() == 1


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


def test_delta_ratio_and_channel_order():
    v = fake_view(L=300, mem_pos=41)
    v.delta[0][41, 5] = 100.0                                        # channel 5 writes at the memory position
    r = frames.delta_ratio(v.delta[0], 41)
    med = np.median(np.delete(v.delta[0], 41, axis=0), axis=0)
    assert np.allclose(r["ratio"], v.delta[0][41] / med, rtol=1e-6)
    order = frames.channel_order(r, D, "ratio")
    assert order[0] == 5 and sorted(order) == list(range(D))
    assert (np.diff(r["ratio"].to_numpy()[order]) <= 0).all()
    assert frames.channel_order(r, D, "index") == list(range(D))
    assert frames.delta_ratio(v.delta[0], None) is None


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
    want = frames.channel_order(frames.delta_ratio(v.delta[0], 50), D, "ratio")
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
    back = pd.read_csv(io.StringIO(charts.csv_text(f)))
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
    """End to end inside viz: a real trace, the dashboard validates, the summary reads it."""
    import torch
    from model import MambaConfig, MambaLM
    from model.data import induction_batch
    from viz import summary
    torch.manual_seed(0)
    tr = MambaLM(MambaConfig()).trace(sequences.realize(sequences.PRESETS["Two triggers"], induction_batch))
    v = TraceView.from_trace(tr, label="fresh")
    spec = charts.dashboard(v, sort="ratio").to_dict()
    assert json.loads(json.dumps(spec))["title"]["text"].startswith("fresh · L = 256")
    text = summary.describe(v)
    assert "2 triggers" in text and ("correct" in text or "wrong" in text)
    assert isinstance(charts.dashboard(v), alt.VConcatChart)
