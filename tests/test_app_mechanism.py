"""The Mechanism tab as a user's program sees it: `python app.py` on a free port (the default
checkpoint), driven with gradio_client. Compares the trained and the closed-form checkpoint,
draws hidden attention, runs interventions that must (and must not) flip the prediction, also on
the 16,384-token preset, and checks that each class of bad input comes back as its specific error."""
import json
import re

import pytest

from bench.app_load import raw_call
from analysis.analytic import MEMORY_CHANNELS, MEMORY_LAYER
from tasks import INDUCTION
from tests.conftest import call

TRAINED, ANALYTIC = "induction-2layer.safetensors", "analytic-2layer.safetensors"
MEMORY = ", ".join(map(str, MEMORY_CHANNELS))                       # "0, 1, ..., 15"
OTHERS = ", ".join(str(c) for c in range(40, 40 + len(MEMORY_CHANNELS)))
LAYER = f"layer {MEMORY_LAYER + 1}"


@pytest.fixture(scope="module")
def paper():
    """(text, M, write position) of the paper's L = 256 sequence."""
    tokens = INDUCTION.realize(INDUCTION.presets["Paper setup (L=256)"])
    pos = INDUCTION.positions(tokens)
    return INDUCTION.format(tokens), pos.targets[0], pos.first_write


def rows(md: str) -> dict:
    """Markdown prediction table -> {row name: (top token, p(M))}."""
    out = {}
    row = r"^\| \*\*(.+?)\*\* \| \*\*(\S+)\*\* \| (\S+) \| (\S+) \| (\S+) \|"
    for name, top, _, _, p_m in re.findall(row, md, re.MULTILINE):
        out[name] = (top, float(p_m))
    return out


def intervene(client, text, channels, t=None, kind="clamp Δ", ckpt=ANALYTIC, until=None, layer=LAYER, value=0.0):
    return call(client, text, ckpt, kind, layer, channels, t, until, value, api_name="/intervene")


def memory_points(plot) -> int:
    """How many points of a Δ-ratio chart are drawn as memory channels."""
    spec = json.loads(plot["plot"])
    return sum(r.get("kind") == "memory channel" for rows in spec["datasets"].values() for r in rows)


def test_compare_trained_and_closed_form_both_predict_m(client, paper):
    text, m, _ = paper
    md, plot_a, plot_b = call(client, text, TRAINED, ANALYTIC, api_name="/compare")
    r = rows(md)
    assert r[TRAINED][0] == r[ANALYTIC][0] == str(m)
    assert r[TRAINED][1] > 0.9 and r[ANALYTIC][1] > 0.9
    for plot, name in ((plot_a, TRAINED), (plot_b, ANALYTIC)):
        assert plot["type"] == "altair" and f"Δ ratio {name}" in plot["plot"]
        assert "max Δ over the write window / median Δ over the filler after it" in plot["plot"]
    # the memory channels are coloured: the closed-form model's 16 (ratio ~1e14), the trained one's too
    assert memory_points(plot_b) == len(MEMORY_CHANNELS) and memory_points(plot_a) >= 1


def test_hidden_attention_chart_for_a_short_sequence(client, paper):
    plot = call(client, paper[0], ANALYTIC, LAYER, "3", api_name="/hidden_attention")
    assert plot["type"] == "altair" and "layer 2, channel 3" in plot["plot"]
    assert "max |α̃| over 3x3-step blocks" in plot["plot"]                 # 256 steps in <= 96 bins
    plot = call(client, "1 2 S 5 3 4 3 S", TRAINED, "layer 1", "mean over channels", api_name="/hidden_attention")
    assert "mean over channels" in plot["plot"] and "blocks" not in plot["plot"]


def test_clamping_delta_on_the_memory_channels_at_the_write_flips_the_prediction(client, paper):
    text, m, write = paper
    r = rows(intervene(client, text, MEMORY)[0])                         # t empty = the write position
    assert r["before"] == (str(m), pytest.approx(1, abs=1e-3))
    assert r["after"][0] != str(m) and r["after"][1] < 0.01
    md, plot = intervene(client, text, "memory channels", t=write)        # found by Δ ratio: the same 16
    assert f"t = {write}, channels {MEMORY}" in md and rows(md)["after"][0] != str(m)
    assert plot["type"] == "altair" and "p(M) before vs after" in plot["plot"]


def test_clamping_delta_on_other_channels_keeps_the_prediction(client, paper):
    text, m, _ = paper
    r = rows(intervene(client, text, OTHERS)[0])
    assert r["after"][0] == str(m) and r["after"][1] > 0.9


def test_interventions_on_the_long_preset_draw_binned(client):
    """The app's own 16,384-token preset with the default settings (it failed above 2,500 steps):
    p(M) is drawn in 16-step bins (max and mean, named in the title), and the answer still flips."""
    out = call(client, "Long: 16384 tokens", api_name="/preset")
    tokens = INDUCTION.parse(out[7])
    m = INDUCTION.positions(tokens).targets[0]
    md, plot = intervene(client, out[7], "memory channels")
    assert "max and mean over 16-step bins" in plot["plot"] and rows(md)["after"][0] != str(m)


@pytest.mark.parametrize("args, api, message", [
    (("3, x",), "/intervene", "channel 'x' is not a whole number"),
    (("3, 200",), "/intervene", "channel 200 is out of range 0..127"),
    (("3", 300), "/intervene", "timestep 300 is out of range 0..255"),
    (("3", 10, "clamp Δ", ANALYTIC, 5), "/intervene", "'until t' 5 must be in 11..256"),
    (("3", 0, "zero state"), "/intervene", "zero state at t = 0 does nothing"),
    (("  ",), "/intervene", "give at least one channel"),
    ((LAYER, "999"), "/hidden_attention", "channel 999 is out of range 0..127"),
    ((LAYER, "abc"), "/hidden_attention", "channel 'abc' is not a whole number or 'mean over channels'"),
    ((TRAINED, "nope.safetensors"), "/compare", "unknown checkpoint 'nope.safetensors'; choose one of"),
    (("layer 9", "3"), "/hidden_attention", "layer 9 is out of range 1..2"),
    (("3", None, "clamp Δ", ANALYTIC, None, "layer 0"), "/intervene", "layer 0 is out of range 1..2"),
    (("3", None, "clamp Δ", ANALYTIC, None, LAYER, None), "/intervene", "clamp Δ to is empty: give a number"),
    (("3", None, "clamp Δ", ANALYTIC, None, LAYER, 1e308), "/intervene", "clamp Δ to 1e+308 is out of range 0..1000"),
    (("3", 2 ** 64), "/intervene", "timestep 18446744073709551616 is out of range"),
    (("3, " + "7" * 200_000,), "/intervene", "is not a whole number"),
])
def test_bad_input_gives_the_specific_error(client, paper, args, api, message):
    from gradio_client.exceptions import AppError
    text = paper[0]
    full = {"/intervene": lambda: intervene(client, text, *args),
            "/hidden_attention": lambda: call(client, text, ANALYTIC, *args, api_name=api),
            "/compare": lambda: call(client, text, *args, api_name=api)}[api]
    with pytest.raises(AppError) as e:
        full()
    assert message in str(e.value) and "Traceback" not in str(e.value) and len(str(e.value)) < 1000


def test_non_finite_clamp_values_are_refused(server, paper):
    """NaN and inf (raw JSON: gradio_client refuses to send them) used to 'succeed' with p = nan."""
    for value, shown in (("NaN", "nan"), ("Infinity", "inf"), ("-1e400", "-inf")):
        body = json.dumps({"data": [paper[0], ANALYTIC, "clamp Δ", LAYER, "3", None, None, 0.0]})
        kind, got = raw_call(server[0], "/intervene", body.replace("0.0]}", value + "]}"))
        assert kind == "error" and got == f"clamp Δ to {shown} is out of range 0..1000", got


def test_too_long_or_malformed_sequences_error(client):
    from gradio_client.exceptions import AppError
    long_text = " ".join(["1"] * 2047 + ["S", "5"])
    with pytest.raises(AppError, match="hidden attention needs a sequence of at most 2048 tokens, got 2049"):
        call(client, long_text, ANALYTIC, LAYER, "3", api_name="/hidden_attention")
    with pytest.raises(AppError, match=re.escape("token 2 ('x') is not a whole number or S")):
        call(client, "1 x S", TRAINED, ANALYTIC, api_name="/compare")


# ---------------------------------------------------------------- the tab's chart helpers, in-process
def test_attention_binning_keeps_block_maxima_and_the_row_limit():
    import numpy as np

    from viz.mechanism import bin_attention, hidden_attention_chart
    a = np.tril(np.arange(100.0).reshape(10, 10)) * -1                 # |α̃| block max, sign ignored
    b, w = bin_attention(a, 4)
    assert w == 3 and b.shape == (4, 4) and b[0, 0] == 22 and b[3, 3] == 99 and b[0, 3] == 0
    assert bin_attention(a, 10)[1] == 1
    big = hidden_attention_chart(np.tril(np.ones((2048, 2048))), max_bins=96)
    assert len(big.data) <= 5000 and "22x22-step blocks" in big.title
    big.to_dict()                                                      # validates against the schema
    # (p(M) before vs after is viz/intervention.py's, tested in tests/test_viz.py)


def test_server_log_has_no_traceback(server, client):
    assert "Traceback" not in server[1].read_text()
