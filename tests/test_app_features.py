"""The researcher features of issue #14 and the server's bounds.

In-process: activation patching and the per-row Set* interventions against direct computations
on the model (PatchState, per-channel ClampDelta, a torch forward hook), the logit lens against a
hand-written pass through the blocks, figures (PNG header and size, SVG as XML with the caption),
the export folder (shared identical files, the quota), the per-client queue share and the idle
memory trim, permalinks (generator settings, tokens, hash; unknown values named).
End to end (`python app.py` on a free port, the default checkpoint, gradio_client and raw HTTP):
the permalink round trip, figures, patching and the lens as served, uploads refused, a greedy
client refused beyond its share, identical exports stored once.
"""
import hashlib
import json
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch

from tasks import INDUCTION
from tasks.induction import Generator, set_memory_token
from tests.conftest import call

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "checkpoints" / "induction-2layer.safetensors"
SHA = hashlib.sha256(TRAINED.read_bytes()).hexdigest()
LABEL = f"induction-2layer ({SHA[:8]})"                 # the app's label of its default model
LAYERS = ["layer 1", "layer 2"]


@pytest.fixture(scope="module")
def lm():
    from model import load_checkpoint
    return load_checkpoint(TRAINED)


@pytest.fixture(scope="module")
def pair():
    """(clean, corrupted): a 48-token induction sequence and the same with another memory token."""
    clean = INDUCTION.realize(Generator(length=48, seed=3))
    m = INDUCTION.positions(clean).targets[0]
    return clean, set_memory_token(clean, (m + 5) % 16)


def p_last(lm, tokens, interventions=(), target=None):
    from model import run
    logits = run(lm, torch.from_numpy(np.asarray(tokens))[None], interventions, num_last_tokens=1).logits[0, -1]
    return float(torch.softmax(logits[:lm.config.vocab_size].float(), -1)[target])


# ---------------------------------------------------------------- patching against direct computations
def test_state_patching_matches_patch_state(lm, pair):
    """Restoring h_t of (layer, group) = PatchState of the clean run's state entering step t + 1."""
    from analysis import patching
    from model.interventions import PatchState
    clean, corrupted = pair
    pat = patching.patch_sweep(lm, clean, corrupted, kind="state")
    assert pat.groups == ("all", "memory", "rest") and pat.p.shape == (2, 3, 47)
    write = INDUCTION.positions(clean).first_write
    for li, g, t in [(1, 0, write), (1, 1, write + 5), (1, 2, 30), (0, 0, write + 1), (0, 1, 40)]:
        k = int(np.flatnonzero(pat.positions == t)[0])
        direct = p_last(lm, corrupted, [PatchState(li, pat.channels[li][g], t + 1, clean)], pat.target)
        assert pat.p[li, g, k] == pytest.approx(direct, rel=1e-4, abs=1e-7), (li, g, t)
    # the mechanism: the memory channels of layer 2 after the write carry the answer back
    assert pat.p_clean > 0.9 and pat.p_corrupted < 0.01
    assert pat.recovered[1, 0, pat.positions > write].min() > 0.9
    assert len(pat.channels[1][1]) == patching.N_MEMORY and not set(pat.channels[1][1]) & set(pat.channels[1][2])


def test_delta_patching_matches_per_channel_clamps(lm, pair):
    """Restoring Δ_t of a group = one ClampDelta per channel to its clean value at t."""
    from analysis import patching
    from model import trace
    from model.interventions import ClampDelta
    clean, corrupted = pair
    pat = patching.patch_sweep(lm, clean, corrupted, kind="delta", positions=[5, 6, 7, 20])
    clean_delta = [lt.delta for lt in trace(lm, clean, include=("delta",)).layers]
    for li in (0, 1):
        for g in (1, 2):
            for k, t in enumerate(pat.positions.tolist()):
                ivs = [ClampDelta(li, [c], from_t=t, value=float(clean_delta[li][t, c]), to_t=t + 1)
                       for c in pat.channels[li][g]]
                assert pat.p[li, g, k] == pytest.approx(p_last(lm, corrupted, ivs, pat.target), rel=1e-4, abs=1e-7)


def test_output_patching_matches_a_forward_hook(lm, pair):
    """Restoring a layer's mixer output at t = replacing it with a torch forward hook."""
    from analysis import patching
    clean, corrupted = pair
    pat = patching.patch_sweep(lm, clean, corrupted, kind="output", positions=[6, 7, 30, 47])
    assert pat.groups == ("all",)
    for li in (0, 1):
        mixer = lm.backbone.layers[li].mixer
        kept = {}

        def keep(m, i, out, kept=kept):
            kept["out"] = out[0].clone()             # returns None: the output stays as it is

        h = mixer.register_forward_hook(keep)
        with torch.no_grad():
            lm(torch.from_numpy(clean)[None])
        h.remove()
        for k, t in enumerate(pat.positions.tolist()):
            def swap(m, i, out, t=t, kept=kept):
                y = out[0].clone()
                y[:, t] = kept["out"][:, t]
                return (y, *out[1:])
            h = mixer.register_forward_hook(swap)
            try:
                with torch.no_grad():
                    logits = lm(torch.from_numpy(corrupted)[None])[0, -1, :lm.config.vocab_size]
            finally:
                h.remove()
            direct = float(torch.softmax(logits.float(), -1)[pat.target])
            assert pat.p[li, 0, k] == pytest.approx(direct, rel=1e-3, abs=1e-6), (li, t)


def test_compare_runs_and_bad_pairs(lm, pair):
    from analysis import patching
    clean, corrupted = pair
    cmp = patching.compare_runs(lm, clean, corrupted)
    write = INDUCTION.positions(clean).first_write
    assert cmp.differing.tolist() == [write] and cmp.delta_diff.shape == (2, 48, 128)
    assert np.all(cmp.delta_diff[:, :write] == 0)                   # causal: nothing differs before the edit
    assert cmp.p_clean == pytest.approx(cmp.p_target_clean[-1]) and cmp.top_clean == cmp.target
    with pytest.raises(ValueError, match="equally long"):
        patching.patch_sweep(lm, clean, corrupted[:-1])
    with pytest.raises(ValueError, match="unknown patch kind"):
        patching.patch_sweep(lm, clean, corrupted, kind="heads")
    long = INDUCTION.realize(Generator(length=patching.PATCH_MAX_LEN + 1, seed=0))
    with pytest.raises(ValueError, match="patching is limited to 1,024 tokens"):
        patching.patch_sweep(lm, long, long)


def test_set_interventions_are_validated(lm):
    from model import run
    from model.interventions import SetDelta, SetOutput, SetState, describe
    tok = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"SetState: t=0 is out of range 1..7"):
        run(lm, tok, [SetState(0, [1], 0, value=np.zeros((1, 16)))])
    with pytest.raises(ValueError, match=r"SetDelta: value of shape \(3,\) is not \[2\]"):
        run(lm, tok, [SetDelta(0, [1, 2], 3, value=np.zeros(3))])
    with pytest.raises(ValueError, match=r"SetOutput: value of shape \(2, 64\) is not \[64\] or \[1, 64\]"):
        run(lm, tok, [SetOutput(1, 3, value=np.zeros((2, 64)), rows=(0,))])
    d = describe(SetState(1, [3], 4, value=np.zeros((2, 1, 16)), rows=(0, 1)))
    assert d == {"kind": "SetState", "layer": 1, "channels": [3], "t": 4, "value_shape": [2, 1, 16], "rows": [0, 1]}
    # rows: only the named batch rows change
    base = run(lm, tok).logits
    out = run(lm, tok, [SetOutput(0, 2, value=np.ones((1, 64)), rows=(1,))]).logits
    assert torch.equal(out[0], base[0]) and not torch.equal(out[1], base[1])


# ---------------------------------------------------------------- the logit lens
def test_logit_lens_matches_a_pass_through_the_blocks(lm):
    from analysis.lens import logit_lens
    from model import trace
    tokens = INDUCTION.realize(Generator(length=40, seed=5))
    lens = logit_lens(lm, tokens, k=3)
    x = torch.from_numpy(tokens)[None]
    with torch.no_grad():
        hidden, residual = lm.backbone.embedding(x), None
        for i, block in enumerate(lm.backbone.layers):
            hidden, residual, _, _ = block(hidden, residual)
            resid = (hidden + residual).float()
            logits = lm.lm_head(lm.backbone.norm_f(resid))[0, :, :lm.config.vocab_size]
            p = torch.softmax(logits, -1).numpy()
            assert np.allclose(lens.probs[i], p, atol=1e-5)
            assert np.array_equal(lens.top_ids[i, :, 0], p.argmax(-1))
            assert np.allclose(lens.score[i], p[:, lens.target], atol=1e-6)
    assert np.allclose(lens.probs[-1], trace(lm, tokens, include=()).probs, atol=1e-6)    # the model's own output
    q, target = INDUCTION.positions(tokens).scored[0]
    assert (lens.query, lens.target) == (q, target)
    tops = lens.top_ids[:, q, 0]
    assert lens.first_layer == int(np.flatnonzero(tops == target)[0]) == 1                 # appears in layer 2
    assert np.all(np.diff(lens.top_p, axis=-1) <= 0)


def test_logit_lens_without_the_full_read_out_keeps_the_same_numbers(lm, monkeypatch):
    """A 50k vocabulary would not fit the whole read-out: top-k and p(target) are kept blockwise."""
    import analysis.lens as lens_mod
    tokens = INDUCTION.realize(Generator(length=40, seed=5))
    full = lens_mod.logit_lens(lm, tokens, k=3)
    monkeypatch.setattr(lens_mod, "FULL_MAX_ELEMS", 0)
    monkeypatch.setattr(lens_mod, "HEAD_ROWS", 7)                                   # blocks not dividing L
    part = lens_mod.logit_lens(lm, tokens, k=3)
    assert part.probs is None and full.probs is not None
    assert np.array_equal(part.top_ids, full.top_ids) and np.allclose(part.score, full.score, atol=1e-7)
    assert (part.query, part.target, part.first_layer) == (full.query, full.target, full.first_layer)
    monkeypatch.setattr(lens_mod, "MAX_WORK", 2 * 39 * 17)
    with pytest.raises(ValueError, match="choose at most 39 tokens"):
        lens_mod.logit_lens(lm, tokens, k=3)


def test_lens_chart_spec(lm):
    from analysis.lens import logit_lens
    from viz.lens import lens_chart, lens_frame
    tokens = INDUCTION.realize(Generator(length=300, seed=5))
    lens = logit_lens(lm, tokens)
    frame, width = lens_frame(lens.score, lens.top_ids, lens.top_p, INDUCTION.labels, lens.target, max_bins=100)
    assert width == 3 and len(frame) == 2 * 100
    assert frame["p"].max() == pytest.approx(lens.probs[:, :, lens.target].max(), rel=1e-6)
    spec = lens_chart(lens.score, lens.top_ids, lens.top_p, INDUCTION.labels, lens.target, lens.query,
                      lens.first_layer).to_dict()                    # validates against the schema
    assert "first the top-1 at the query after layer 2" in json.dumps(spec)


# ---------------------------------------------------------------- figures
def small_chart():
    import altair as alt
    import pandas as pd
    return alt.Chart(pd.DataFrame({"t": [0, 1, 2], "v": [0.1, 0.5, 0.2]}), title="tiny chart", width=200,
                     height=100).mark_line().encode(x="t:Q", y="v:Q")


def test_figure_png_and_svg_open_and_match():
    from viz import figure
    fig = figure.captioned(small_chart(), ["model x, sha256 0123456789ab", "L = 3, generated (seed 0)"])
    svg = figure.to_svg(fig)
    root = ET.fromstring(svg)                                         # parses as XML
    # every drawn string (a multi-line title's lines are <tspan>s inside one <text>)
    texts = " ".join("".join(t.itertext()) for t in root.iter() if t.tag.endswith("}text"))
    assert "tiny chart" in texts and "model x, sha256 0123456789ab" in texts and "L = 3, generated" in texts
    w, h = figure.svg_size(svg)
    for dpi in (72, 300):
        info = figure.png_info(figure.to_png(fig, dpi))
        assert info["dpi"] == pytest.approx(dpi, rel=1e-3)
        assert abs(info["width"] - w * dpi / 72) <= 1 and abs(info["height"] - h * dpi / 72) <= 1
    with pytest.raises(ValueError, match="dpi 1000 is out of range 36..600"):
        figure.to_png(fig, 1000)
    with pytest.raises(ValueError, match="not a PNG"):
        figure.png_info(b"GIF89a")


def test_figure_refuses_too_many_pixels(monkeypatch):
    from viz import figure
    monkeypatch.setattr(figure, "MAX_PIXELS", 10_000)
    with pytest.raises(ValueError, match=r"over the limit of 0 MP: choose at most \d+ dpi \(or the SVG\)"):
        figure.to_png(small_chart(), 300)


def test_cli_writes_captioned_figures(tmp_path, capsys):
    from ui import export
    from viz import figure
    out = tmp_path / "figs"
    assert export.main(["--out", str(out), "--checkpoint", str(TRAINED), "--n", "1", "--length", "64", "--seed", "2",
                        "--figure", "svg", "--max-bins", "16"]) == 0
    svg = (out / "seq00000.svg").read_text(encoding="utf-8")
    ET.fromstring(svg)
    assert f"sha256 {SHA[:12]}" in svg and "L = 64, generated (length 64" in svg and "binned by 4 steps" in svg
    assert export.main(["--out", str(out), "--checkpoint", str(TRAINED), "--n", "1", "--length", "64",
                        "--figure", "png", "--dpi", "100", "--max-bins", "16"]) == 0
    w, h = figure.svg_size(svg)
    info = figure.png_info((out / "seq00000.png").read_bytes())
    assert info["dpi"] == pytest.approx(100, rel=1e-3) and abs(info["width"] - w * 100 / 72) <= 1
    with pytest.raises(SystemExit):
        export.main(["--out", str(out), "--figure", "png", "--dpi", "5"])
    assert "--dpi 5 is out of range 36..600" in capsys.readouterr().err


# ---------------------------------------------------------------- the export folder
def test_identical_exports_share_one_file_and_the_quota_evicts_oldest(tmp_path, monkeypatch):
    import os

    from ui import storage
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    a = storage.store("a.bin", lambda p: p.write_bytes(b"x" * 1000))
    b = storage.store("a.bin", lambda p: p.write_bytes(b"x" * 1000))
    c = storage.store("other-name.bin", lambda p: p.write_bytes(b"x" * 1000))
    assert a == b and c.parent == a.parent and os.path.samefile(a, c)        # same bytes: one file
    assert a.is_relative_to(tmp_path) and not list(storage.root().glob(".staging-*"))
    old = [storage.store(f"f{i}.bin", lambda p, i=i: p.write_bytes(bytes([i]) * 400), quota=2000) for i in range(6)]
    kept = {f for f, _, _ in storage.exports(storage.root())}
    total = sum(size for _, size, _ in storage.exports(storage.root()))
    assert old[-1] in kept and old[0] not in kept and total <= 2000         # oldest first, the newest kept
    big = storage.store("big.bin", lambda p: p.write_bytes(b"y" * 5000), quota=2000)
    assert big.exists() and [f for f, _, _ in storage.exports(storage.root())] == [big]


# ---------------------------------------------------------------- limits, in-process
def test_pending_counts_a_clients_waiting_and_running_requests():
    from types import SimpleNamespace as NS

    from ui import limits
    host = lambda h: NS(client=NS(host=h))                         # noqa: E731
    ev = lambda s, i, h="1.2.3.4": NS(session_hash=s, _id=i, request=host(h))   # noqa: E731
    queue = NS(event_queue_per_concurrency_id={"heavy": NS(queue=[ev("a", "1"), ev("b", "2"), ev("3", "3")]),
                                               "light": NS(queue=[ev("a", "4")])},
               active_jobs=[None, [ev("a", "5")], [ev("6", "6", "9.9.9.9")]])
    assert limits.pending(queue, "session a") == 3
    assert limits.pending(queue, "address 1.2.3.4") == 1       # an event without a session counts for its address
    assert limits.pending(queue, "address 9.9.9.9") == 1
    assert limits.client_of(None, None, host("5.6.7.8")) == "address 5.6.7.8"


def test_memory_is_released_once_the_heavy_lane_is_idle(monkeypatch):
    from ui import limits
    monkeypatch.setattr(limits, "TRIM_AFTER_IDLE_S", 3600.0)       # the request's own timer stays out of the way
    calls = limits.trims
    limits.heavy(lambda: None)()
    gen = limits._generation
    limits._trim_if_still_idle(gen - 1)                        # a later request ended since: no trim
    assert limits.trims == calls
    limits._trim_if_still_idle(gen)
    assert limits.trims == calls + 1 or limits._LIBC is None


def test_heavy_requests_share_the_cores(monkeypatch, tmp_path):
    """A lone heavy request takes every core (mamba-130m at L = 512: 1.9 s on 2 threads, 3.1 s on 1);
    two at once take one each; a CPU quota below the affinity counts (a container's cpu.max)."""
    from ui import limits
    seen = []
    monkeypatch.setattr(limits, "_cores", 0)
    limits.share_cores(2)
    before = torch.get_num_threads()
    try:
        limits.heavy(lambda: seen.append(torch.get_num_threads()))()
        monkeypatch.setattr(limits, "_running", 1)                   # another heavy request is running
        limits.heavy(lambda: seen.append(torch.get_num_threads()))()
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1]
    assert [limits.threads_for(n) for n in (1, 2, 3)] == [2, 1, 1]
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert limits.available_cores(quota) == min(2, limits.available_cores(tmp_path / "absent"))
    quota.write_text("max 100000\n")
    assert limits.available_cores(quota) == limits.available_cores(tmp_path / "absent") >= 1


def test_chart_events_show_their_progress_as_a_timer_on_their_text():
    """Every event that draws charts shows progress as Gradio's small timer on its text outputs, not
    as the full overlay over its charts (headless chromium spent ~0.5 core animating that overlay for
    the whole run, slowing the model beside it on 2 cores); nothing saved per run in the browser."""
    import gradio as gr

    import app
    charting = [f for f in app.demo.fns.values()
                if any(isinstance(o, gr.Plot) for o in f.outputs) and any(isinstance(o, gr.Markdown) for o in f.outputs)]
    assert len(charting) >= 8                          # the view (run, edits, widgets), lens, patching, memories ...
    for f in charting:
        assert f.show_progress == "minimal"
        assert f.show_progress_on and all(isinstance(o, gr.Markdown) for o in f.show_progress_on)
    assert app.RUN_HISTORY is False                    # launch(run_history=...): see test_browser.py too


# ---------------------------------------------------------------- permalinks, in-process
def test_permalink_round_trip_in_process():
    import app  # noqa: F401  (loads the model and lays out the app)
    from ui import explore, permalink
    text = explore.generate(300, -1, 7, 2, 1, False, 0)
    gen = (300, -1, 7, 2, 1, False, 0)
    q = permalink.link(text, *gen, "Δ ratio", 128, 5, 200, ["layer 2"], "mean", None, None, "lens")
    assert q.startswith("?gen=300,-1,7,2,1,0,0&sort=ratio&bins=128&from=5&to=200&layers=2&stat=mean")
    out = permalink.open_link(q)
    assert out[:14] == (text, *gen, "Δ ratio", 128, 5, 200, ["layer 2"], "mean") and out[16] == "lens"
    assert out[-1] == ""                                          # restored in full
    assert out[-3:-1] == ("", "")                                 # the two "read at step t" boxes: empty
    q = permalink.link(text, *gen, "index", 64, None, None, ["layer 2"], "max", None, None, "patching", "250", 199)
    assert "&pstep=250&lstep=199" in q and permalink.open_link(q)[-3:] == ("250", "199", "")
    with pytest.raises(gr.Error, match="patching: read after step t 300 is out of range 0..299"):
        permalink.link(text, *gen, "index", 64, None, None, ["layer 2"], "max", None, None, "patching", "300", "")
    note = permalink.open_link("?seq=1,2,3&lstep=x")[-1]
    assert "`lstep`" in note and "logit lens: read at step t" in note
    short = "1 2 S 5 3 4 3 S"
    assert permalink.link(short, *gen, "index", 64, None, None, LAYERS, "max", None, None, "explore").startswith(
        "?seq=1,2,S,5,3,4,3,S&")
    long = INDUCTION.format(set_memory_token(INDUCTION.parse(explore.generate(5000, -1, -1, 1, 1, False, 0)), 4))
    q = permalink.link(long, *gen, "index", 64, None, None, LAYERS, "max", None, None, "explore")
    assert q.startswith("?h=") and len(q) < 200 and permalink.open_link(q)[0] == long
    note = permalink.open_link("?h=00000000deadbeef&bins=99999&sort=sideways&model=abc")[-1]
    assert "not known to this server" in note and "time bins 99999 is out of range 1..1024" in note
    assert "unknown channel order 'sideways'" in note and "the link was made with model 'abc'" in note


# ---------------------------------------------------------------- end to end
GEN = (64, -1, -1, 3, 1, False, 0)
MECH = ("analytic-2layer.safetensors", "induction-2layer.safetensors", "layer 2", "3", "clamp Δ", "layer 2", "3",
        None, None, 0.0)


@pytest.fixture(scope="module")
def text64(client):
    return call(client, *GEN, api_name="/generate")


def test_permalink_round_trip_through_the_api(client, text64):
    q = call(client, text64, *GEN, "Δ ratio", 128, 5, 40, ["layer 2"], "mean", *MECH[:2], "mechanism", "", "7",
             api_name="/permalink")
    assert q.startswith("?gen=64,-1,-1,3,1,0,0&sort=ratio&bins=128&from=5&to=40&layers=2&stat=mean&ckpt=analytic")
    assert q.endswith("&lstep=7") or "&lstep=7&" in q
    out = call(client, q, api_name="/open_link")
    assert list(out[:16]) == [text64, *GEN, "Δ ratio", 128, 5, 40, ["layer 2"], "mean", *MECH[:2]]
    assert out[16] == "mechanism" and list(out[-3:]) == ["", "7", ""]


def figure_args(which, fmt, dpi, text, corrupted=""):
    return (which, fmt, dpi, text, *GEN, "index", 16, None, None, LAYERS, "max", *MECH, corrupted, "state h", 3)


def test_dashboard_figure_png_and_svg_through_the_api(client, text64):
    from viz import figure
    svg = Path(call(client, *figure_args("dashboard", "svg", 300, text64), api_name="/figure")).read_text()
    root = ET.fromstring(svg)
    texts = " ".join("".join(t.itertext()) for t in root.iter() if t.tag.endswith("}text"))
    assert f"{LABEL} · L = 64" in texts                                              # the chart's own title
    assert "Layer 2: Δ (step size, after softplus)" in texts and "Δ ratio" in texts  # its charts
    assert f"model {LABEL}, sha256 {SHA[:12]}" in texts                              # the caption
    assert "L = 64, generated (length 64, trigger pos -1, memory -1, seed 3" in texts
    assert "window t = 0..63; time binned by 4 steps (heatmaps: max per bin); channels by index" in texts
    assert str(ROOT) not in svg                                                      # no server paths
    png = Path(call(client, *figure_args("dashboard", "png", 150, text64), api_name="/figure")).read_bytes()
    info, (w, h) = figure.png_info(png), figure.svg_size(svg)
    assert info["dpi"] == pytest.approx(150, rel=1e-3)
    assert abs(info["width"] - w * 150 / 72) <= 1 and abs(info["height"] - h * 150 / 72) <= 1


def test_patching_and_lens_through_the_api(client, text64, lm):
    from analysis import patching
    from analysis.lens import logit_lens
    corrupted = call(client, text64, 5, api_name="/corrupt_memory")
    clean_ids, corrupted_ids = INDUCTION.parse(text64), INDUCTION.parse(corrupted)
    assert (clean_ids != corrupted_ids).sum() >= 1 and INDUCTION.positions(corrupted_ids).targets == (5,)
    md, diff, heat = call(client, text64, corrupted, "state h", api_name="/patching")
    pat = patching.patch_sweep(lm, clean_ids, corrupted_ids, kind="state")
    best = pat.p.max(axis=2)
    for i in range(2):
        assert f"| layer {i + 1} | " + " | ".join(f"{v:.3f}" for v in best[i]) + " |" in md
    assert heat["type"] == "altair" and "channels: memory" in heat["plot"] and "Clean vs corrupted" in diff["plot"]
    svg = Path(call(client, *figure_args("patching: heatmap", "svg", 300, text64, corrupted),
                    api_name="/figure")).read_text()
    assert "channels: memory" in svg and "restored: state h" in svg
    md, plot = call(client, text64, 3, api_name="/logit_lens")
    lens = logit_lens(lm, clean_ids)
    assert f"first the top-1 after layer **{lens.first_layer + 1}**" in md and plot["type"] == "altair"
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="they must be equally long"):
        call(client, text64, corrupted + " 3", "state h", api_name="/patching")
    with pytest.raises(AppError, match="top-k 11 is out of range 1..10"):
        call(client, text64, 11, api_name="/logit_lens")


def test_uploads_are_refused(server):
    for path, ctype in (("gradio_api/upload", "multipart/form-data; boundary=x"),
                        ("gradio_api/upload", "application/octet-stream"),
                        ("gradio_api/component_server", "multipart/form-data; boundary=x")):
        req = urllib.request.Request(server[0] + path, data=b"--x\r\n\r\n--x--\r\n", method="POST",
                                     headers={"Content-Type": ctype})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 403 and e.value.read() == b"this app takes no file uploads"


def test_a_greedy_client_gets_its_share_and_a_specific_refusal(server, text64):
    """One client submits 8 heavy requests at once: at most CLIENT_SHARE are taken, the rest refused
    with HTTP 429 and the share's message; another client is served meanwhile."""
    import httpx
    from gradio_client import Client

    from ui import limits
    greedy, other = Client(server[0], verbose=False), Client(server[0], verbose=False)
    long_text = call(greedy, 4096, -1, -1, 0, 1, False, 0, api_name="/generate")
    jobs = [greedy.submit(long_text, "index", 256, None, None, LAYERS, "max", api_name="/run") for _ in range(8)]
    assert "L = 64" in call(other, text64, "index", 64, None, None, LAYERS, "max", api_name="/run")[1]
    refused, done = [], 0
    for j in jobs:
        try:
            j.result(timeout=300)
            done += 1
        except httpx.HTTPStatusError as e:
            refused.append(e.response)
    assert done <= limits.CLIENT_SHARE + 1 and len(refused) >= 8 - limits.CLIENT_SHARE - 1
    assert all(r.status_code == 429 and r.json()["detail"] == limits.CLIENT_SHARE_MESSAGE for r in refused)


def test_identical_exports_are_stored_once(client, text64):
    from ui.storage import exports, root
    before = {f for f, _, _ in exports(root())}
    for _ in range(3):
        call(client, text64, api_name="/export_safetensors")
    new = [f for f, _, _ in exports(root()) if f not in before]
    assert len(new) <= 1 and len({f for f, _, _ in exports(root())} - before) <= 1


def test_server_log_has_no_traceback(server, client):
    assert "Traceback" not in server[1].read_text()


def test_default_layers_are_few_and_spread(monkeypatch):
    """A deep model opens on 4 layers spread over its depth (the dashboard must not grow with the
    layer count), and asking for more than 8 at once is a specific error."""
    from ui import explore
    names = [f"layer {i}" for i in range(1, 25)]
    monkeypatch.setattr(explore, "layer_choices", lambda: names)
    assert explore.default_layers() == ["layer 1", "layer 9", "layer 16", "layer 24"]
    monkeypatch.setattr(explore, "layer_choices", lambda: names[:3])
    assert explore.default_layers() == names[:3]
    monkeypatch.setattr(explore, "layer_choices", lambda: names)
    with pytest.raises(ValueError, match="9 layers chosen: show at most 8"):
        explore.view_settings("index", 64, None, None, names[:9], "max")
