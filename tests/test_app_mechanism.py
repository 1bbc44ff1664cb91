"""The Mechanism tab as a user's program sees it: `python app.py` on a free port (the default
checkpoint), driven with gradio_client. Compares the trained and the closed-form checkpoint,
draws hidden attention, runs interventions that must (and must not) flip the prediction, and
checks that each class of bad input comes back as its specific error."""
import re

import pytest

from bench.app_load import start_app, stop
from model.analytic import MEMORY_CHANNELS, MEMORY_LAYER
from model.data import induction_batch
from tests.conftest import call
from viz import sequences

TRAINED, ANALYTIC = "induction-2layer.safetensors", "analytic-2layer.safetensors"
MEMORY = ", ".join(map(str, MEMORY_CHANNELS))                       # "0, 1, ..., 15"
OTHERS = ", ".join(str(c) for c in range(40, 40 + len(MEMORY_CHANNELS)))
LAYER = f"layer {MEMORY_LAYER + 1}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("app") / "app.log"
    proc, url = start_app(log)
    yield url, log
    stop(proc)


@pytest.fixture(scope="module")
def paper():
    """(text, M, write position) of the paper's L = 256 sequence."""
    tokens = sequences.realize(sequences.PRESETS["Paper setup (L=256)"], induction_batch)
    pos = sequences.task_positions(tokens)
    return sequences.format_tokens(tokens), pos.memory_tokens[0], pos.memory_pos[0]


def rows(md: str) -> dict:
    """Markdown prediction table -> {row name: (top token, p(M))}."""
    out = {}
    row = r"^\| \*\*(.+?)\*\* \| \*\*(\S+)\*\* \| (\S+) \| (\S+) \| (\S+) \|"
    for name, top, _, _, p_m in re.findall(row, md, re.MULTILINE):
        out[name] = (top, float(p_m))
    return out


def intervene(client, text, channels, t=None, kind="clamp Δ", ckpt=ANALYTIC, until=None, layer=LAYER):
    return call(client, text, ckpt, kind, layer, channels, t, until, 0.0, api_name="/intervene")


def test_compare_trained_and_closed_form_both_predict_m(client, paper):
    text, m, _ = paper
    md, plot_a, plot_b = call(client, text, TRAINED, ANALYTIC, api_name="/compare")
    r = rows(md)
    assert r[TRAINED][0] == r[ANALYTIC][0] == str(m)
    assert r[TRAINED][1] > 0.9 and r[ANALYTIC][1] > 0.9
    for plot, name in ((plot_a, TRAINED), (plot_b, ANALYTIC)):
        assert plot["type"] == "altair" and f"Δ(memory) / median Δ(filler) {name}" in plot["plot"]


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
])
def test_bad_input_gives_the_specific_error(client, paper, args, api, message):
    from gradio_client.exceptions import AppError
    text = paper[0]
    full = {"/intervene": lambda: intervene(client, text, *args),
            "/hidden_attention": lambda: call(client, text, ANALYTIC, *args, api_name=api),
            "/compare": lambda: call(client, text, *args, api_name=api)}[api]
    with pytest.raises(AppError) as e:
        full()
    assert message in str(e.value) and "Traceback" not in str(e.value)


def test_too_long_or_malformed_sequences_error(client):
    from gradio_client.exceptions import AppError
    long_text = " ".join(["1"] * 2047 + ["S", "5"])
    with pytest.raises(AppError, match="hidden attention needs a sequence of at most 2048 tokens, got 2049"):
        call(client, long_text, ANALYTIC, LAYER, "3", api_name="/hidden_attention")
    with pytest.raises(AppError, match="the mean over channels is limited to 512 tokens .* got 513"):
        call(client, " ".join(["1"] * 511 + ["S", "5"]), ANALYTIC, LAYER, "mean over channels",
             api_name="/hidden_attention")
    with pytest.raises(AppError, match=re.escape("token 2 ('x') is not an integer or S")):
        call(client, "1 x S", TRAINED, ANALYTIC, api_name="/compare")


# ---------------------------------------------------------------- the tab's chart helpers, in-process
def test_attention_binning_keeps_block_maxima_and_the_row_limit():
    import numpy as np

    from viz.mechanism import bin_attention, hidden_attention_chart, p_memory_chart
    a = np.tril(np.arange(100.0).reshape(10, 10)) * -1                 # |α̃| block max, sign ignored
    b, w = bin_attention(a, 4)
    assert w == 3 and b.shape == (4, 4) and b[0, 0] == 22 and b[3, 3] == 99 and b[0, 3] == 0
    assert bin_attention(a, 10)[1] == 1
    big = hidden_attention_chart(np.tril(np.ones((2048, 2048))), max_bins=96)
    assert len(big.data) <= 5000 and "22x22-step blocks" in big.title
    chart = p_memory_chart(np.ones(7), np.zeros(7))
    assert len(chart.data) == 14 and set(chart.data.run) == {"before", "after"}
    chart.to_dict()                                                    # validates against the schema


def test_server_log_has_no_traceback(server, client):
    assert "Traceback" not in server[1].read_text()
