"""The app as a user's program sees it: `python app.py` in a subprocess on a free port, driven
with gradio_client. Runs a sequence, exports every format and reads it back, checks that each
class of bad input comes back as its specific error, fuzzes every parameter of every endpoint
(the server keeps serving, never with a generic error), and that the Mechanism tab offers the
checkpoint the app was started with."""
import concurrent.futures as cf
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.app_load import raw_call, start_app, stop
from tasks import INDUCTION
from tests.conftest import call

LAYERS = ["layer 1", "layer 2"]
TRAINED, ANALYTIC = "induction-2layer.safetensors", "analytic-2layer.safetensors"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from model import MambaConfig, MambaLM, save_checkpoint
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("ckpt") / "e2e.safetensors"
    sha = save_checkpoint(MambaLM(MambaConfig()), path, task={"name": "induction_heads", "train_len": 256})
    return path, sha


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("app") / "app.log"
    proc, url = start_app(log, {"MAMBASCOPE_CHECKPOINT": str(checkpoint[0])})
    yield url, log
    stop(proc)


def view_args(text, sort="index", bins=256, t_from=None, t_to=None, layers=LAYERS, stat="max"):
    return (text, sort, bins, t_from, t_to, layers, stat)


@pytest.fixture(scope="module")
def paper_text(client):
    return call(client, 256, -1, -1, 0, 1, False, 0, api_name="/generate")


def test_run_returns_the_charts_and_the_summary(client, paper_text, checkpoint):
    plot, summary = call(client, *view_args(paper_text, sort="Δ ratio"), api_name="/run")
    assert plot["type"] == "altair"
    spec = plot["plot"]
    assert '"time_range"' in spec and "delta_1" in spec and "norm_2" in spec
    assert "L = 256" in summary and "memory M = **" in summary


def test_generator_presets_and_quick_edits(client, paper_text):
    parse, positions = INDUCTION.parse, INDUCTION.positions
    out = call(client, "Two triggers", api_name="/preset")
    assert out[0] == 256 and out[4] in (2, "2") and len(positions(parse(out[7])).markers) == 2
    edited = parse(call(client, paper_text, 11, api_name="/set_memory"))
    assert positions(edited).targets == (11,)
    moved = parse(call(client, paper_text, 5, api_name="/move_trigger"))
    assert positions(moved).markers[0] == 5 and len(moved) == 256
    long_text = call(client, 16384, -1, -1, 1, 1, False, 0, api_name="/generate")
    assert len(parse(long_text)) == 16384 and len(long_text) > 30000
    plot, summary = call(client, *view_args(long_text), api_name="/run")
    assert "binned by **64** steps" in summary and "max over 64-step bins" in plot["plot"]


def test_export_safetensors_reads_back(client, paper_text, checkpoint):
    from model import Trace
    path = call(client, paper_text, api_name="/export_safetensors")
    tr = Trace.load(path)
    assert " ".join("S" if t == 16 else str(t) for t in tr.tokens.tolist()) == paper_text
    assert tr.meta["checkpoint_sha256"] == checkpoint[1] == hashlib.sha256(checkpoint[0].read_bytes()).hexdigest()
    assert tr.meta["config"]["d_model"] == 64 and len(tr.layers) == 2
    # the file name only: a server's paths must not leak into exports
    assert tr.meta["checkpoint"] == checkpoint[0].name and str(checkpoint[0].parent) not in json.dumps(tr.meta)
    assert tr.layers[1].delta.shape == (256, 128) and tr.probs.shape == (256, 17)


def test_export_csv_reads_back(client, paper_text):
    path = call(client, paper_text, 10, 20, False, api_name="/export_csv")
    assert path.endswith(".csv.gz")
    with gzip.open(path, "rt") as fh:
        df = pd.read_csv(fh)
    assert list(df.columns) == ["layer", "t", "channel", "quantity", "value"]
    assert len(df) == 10 * (2 * 2 * 128 + 17) and sorted(set(df.t)) == list(range(10, 20))
    assert set(df.quantity) == {"delta", "state_norm", "probs"}
    p = df[df.quantity == "probs"].pivot(index="t", columns="channel", values="value").to_numpy()
    assert np.allclose(p.sum(1), 1, atol=1e-5)


def test_export_html_holds_the_chart_specs(client, paper_text):
    path = call(client, *view_args(paper_text), api_name="/export_html")
    html = Path(path).read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "vegaEmbed" in html
    assert '"time_range"' in html and '"name": "delta_1"' in html and '"name": "total_norm_2"' in html


@pytest.mark.parametrize("args, api, message", [
    (view_args("3 7 x 1 S"), "/run", "token 3 ('x') is not a whole number or S"),
    (view_args("3 70 1 S"), "/run", "token id 70 is out of range 0..16"),
    (view_args("   "), "/run", "the sequence is empty"),
    (view_args("1 " * 65537), "/run", "over the cap of 65,536"),
    (view_args("1 2 S 3 S", t_from=4, t_to=2), "/run", "time window"),
    (view_args("1 2 S 3 S", layers=[]), "/run", "choose at least one layer"),
    (("1 2 S 3 S", 99), "/set_memory", "memory token 99 is out of range 0..15"),
    (("1 2 S 3 S", 4), "/move_trigger", "trigger position 4 is out of range 0..2"),
    ((2, -1, -1, 0, 1, False, 0), "/generate", "length 2 is out of range 3..65536"),
    ((256, 300, -1, 0, 1, False, 0), "/generate", "trigger_pos 300 must be in 0..253"),
    ((256, 5, -1, 0, 2, False, 0), "/generate", "a fixed trigger position goes with exactly one trigger"),
    ((100, -1, -1, 0, 2, False, 0), "/generate", None),                       # valid: two triggers
    ((256, -1, -1, 2 ** 64, 1, False, 0), "/generate", "seed 18446744073709551616 is out of range 0..2^63-1"),
    (view_args("1 2 S 3 S", sort="random"), "/run", "unknown channel order 'random'; choose one of"),
    (("1 99999999999999999999 S",), "/export_safetensors", "token id 99999999999999999999 is out of range 0..16"),
    (("1 2 x",), "/export_safetensors", "token 3 ('x') is not a whole number or S"),
])
def test_bad_input_gives_the_specific_error(client, args, api, message):
    from gradio_client.exceptions import AppError
    if message is None:
        call(client, *args, api_name=api)
        return
    with pytest.raises(AppError) as e:
        call(client, *args, api_name=api)
    assert message in str(e.value)
    assert "Traceback" not in str(e.value)


def test_csv_over_the_cap_is_refused_not_cut(client):
    long_text = call(client, 16384, -1, -1, 2, 1, False, 0, api_name="/generate")
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match=r"would have 8,667,136 rows, over the cap of 4,194,304"):
        call(client, long_text, None, None, False, api_name="/export_csv")


@pytest.mark.slow
def test_light_load_no_errors(server, paper_text):
    """4 concurrent clients x 3 runs (the full 16 x 25 is bench/app_load.py)."""
    from gradio_client import Client

    def worker(i):
        c = Client(server[0], verbose=False)
        return [call(c, *view_args(paper_text, sort="Δ ratio" if i % 2 else "index"), api_name="/run")[1]
                for _ in range(3)]

    with cf.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(worker, range(4)))
    assert all("L = 256" in s for r in results for s in r)


# ---------------------------------------------------------------- the Mechanism tab on the app's own checkpoint
def test_mechanism_tab_offers_the_checkpoint_the_app_was_started_with(client, paper_text):
    """The server runs a checkpoint outside checkpoints/ (MAMBASCOPE_CHECKPOINT): the Mechanism
    tab lists it beside the folder's files and runs it."""
    own = "e2e.safetensors (loaded at start)"
    md, plot_a, _ = call(client, paper_text, own, ANALYTIC, api_name="/compare")
    assert f"| **{own}** |" in md and f"| **{ANALYTIC}** |" in md
    assert plot_a["type"] == "altair" and own in plot_a["plot"]
    plot = call(client, paper_text, own, "layer 1", "5", api_name="/hidden_attention")
    assert "layer 1, channel 5" in plot["plot"]


# ---------------------------------------------------------------- every parameter of every endpoint, fuzzed
def test_non_finite_numbers_in_whole_number_fields(server):
    """NaN, inf and 1e400 as raw JSON (gradio_client refuses to send them) name their field."""
    cases = [("/run", '["1 2 S 3 S", "index", NaN, null, null, ["layer 1"], "max"]',
              "time bins must be a finite whole number, got nan"),
             ("/generate", '[256, -1, -1, 1e400, 1, false, 0]', "seed must be a finite whole number, got inf"),
             ("/export_csv", '["1 2 S 3 S", -Infinity, null, false]', "window from t must be a finite whole number"),
             ("/set_memory", '["1 2 S 3 S", 1e400]', "memory token must be a finite whole number, got inf")]
    for api, data, message in cases:
        kind, got = raw_call(server[0], api, '{"data": %s}' % data)
        assert kind == "error" and got is not None and message in got, (api, got)


SHORT = "1 2 S 5 3 4 3 S"
VIEW = [("tokens", SHORT), ("channel_sort", "index"), ("max_bins", 64), ("t_from", None), ("t_to", None),
        ("layers", LAYERS), ("bin_stat", "max")]
GENERATOR = [("length", 64), ("trigger_pos", -1), ("memory", -1), ("seed", 0), ("n_triggers", 1),
             ("filler_excludes_memory", False), ("memory_in_filler_every", 0)]
ENDPOINTS = {   # endpoint -> its parameters with a valid value each
    "/run": VIEW,
    "/generate": GENERATOR,
    "/preset": [("name", "Two triggers")],
    "/set_memory": [("tokens", SHORT), ("memory", 3)],
    "/move_trigger": [("tokens", SHORT), ("position", 1)],
    "/export_safetensors": [("tokens", SHORT)],
    "/export_csv": [("tokens", SHORT), ("t_from", None), ("t_to", None), ("all_quantities", False)],
    "/export_html": VIEW,
    "/compare": [("tokens", SHORT), ("checkpoint_a", TRAINED), ("checkpoint_b", ANALYTIC)],
    "/hidden_attention": [("tokens", SHORT), ("checkpoint", ANALYTIC), ("layer", "layer 2"), ("channel", "3")],
    "/intervene": [("tokens", SHORT), ("checkpoint", ANALYTIC), ("kind", "clamp Δ"), ("layer", "layer 2"),
                   ("channels", "3"), ("timestep", None), ("until", None), ("value", 0.0)],
    "/permalink": [("tokens", SHORT), *GENERATOR, *VIEW[1:], ("checkpoint_a", TRAINED), ("checkpoint_b", ANALYTIC),
                   ("tab", "explore"), ("patch_step", "3"), ("lens_step", "")],
    "/open_link": [("query", "?seq=1,2,S,5,3,4,3,S&bins=32&layers=2&tab=lens")],
    "/corrupt_memory": [("tokens", SHORT), ("memory", 3)],
    "/corrupt_trigger": [("tokens", SHORT), ("position", 1)],
    "/corrupt_edit": [("tokens", SHORT), ("kind", "swap the tokens at steps a and b"), ("a", 0), ("b", 1)],
    "/patching": [("tokens", SHORT), ("corrupted", "1 2 S 6 3 4 3 S"), ("kind", "Δ"), ("query_step", None)],
    "/logit_lens": [("tokens", SHORT), ("top_k", 3), ("query_step", None)],
    "/memories": [("tokens", SHORT), ("layer", "layer 2"), ("unit_view", "share of the unit's state")],
    "/clamp_writes": [("tokens", SHORT), ("layer", "layer 2"), ("window", 2)],
    "/task_edit": [("tokens", SHORT), ("kind", "set the memory token M to b"), ("a", 0), ("b", 3)],
    "/figure": [("which", "logit lens"), ("format", "svg"), ("dpi", 300), ("tokens", SHORT), *GENERATOR, *VIEW[1:],
                ("checkpoint_a", TRAINED), ("checkpoint_b", ANALYTIC), ("attention_layer", "layer 2"),
                ("attention_channel", "3"), ("intervention_kind", "clamp Δ"), ("intervention_layer", "layer 2"),
                ("intervention_channels", "3"), ("timestep", None), ("until", None), ("value", 0.0),
                ("corrupted", "1 2 S 6 3 4 3 S"), ("patch_kind", "state h"), ("top_k", 3), ("patch_step", ""),
                ("lens_step", "")],
}
# None, a huge number, NaN, 1e400 (inf once parsed), text in a numeric field / an unknown choice,
# 200k characters: sent as raw JSON, as any HTTP client can
HUGE_FLOAT = "__1e400__"
BAD = [None, 10 ** 30, float("nan"), HUGE_FLOAT, "abc", "x" * 200_000]


@pytest.mark.parametrize("api", list(ENDPOINTS))
def test_fuzzing_every_parameter_gives_success_or_a_specific_error(server, api):
    params = ENDPOINTS[api]
    body = lambda args: json.dumps({"data": args}).replace(f'"{HUGE_FLOAT}"', "1e400")   # noqa: E731
    assert raw_call(server[0], api, body([v for _, v in params]))[0] == "complete"      # the valid call works
    failures = []
    for i, (name, _) in enumerate(params):
        for bad in BAD:
            args = [v for _, v in params]
            args[i] = bad
            kind, got = raw_call(server[0], api, body(args))
            if kind == "error" and (not got or "x" * 61 in got or len(got) > 1000):
                failures.append(f"{api} {name}={str(bad)[:12]!r}: {str(got)[:200]!r}")
    assert not failures, "\n".join(failures)


def test_server_log_has_no_traceback(server, client):
    assert "Traceback" not in server[1].read_text()


# ---------------------------------------------------------------- checkpoints, in-process
def test_missing_or_unreadable_checkpoint_gives_a_clear_error(tmp_path, capsys):
    import gradio as gr

    import app  # noqa: F401  (loads the model and lays out the app, as `python app.py` does)
    from ui import common, explore
    missing = common.load_model(str(tmp_path / "nope.safetensors"))
    assert missing.lm is None and "checkpoint not found" in missing.error
    assert "Traceback" not in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not a checkpoint")
    bad = common.load_model(str(junk))
    assert bad.lm is None and "pickle" in bad.error
    saved = common.MODEL
    try:
        common.MODEL = bad
        with pytest.raises(gr.Error, match="no model is loaded: .*pickle"):
            explore.show("1 2 S 3 S", "index", 256, None, None, LAYERS, "max")
    finally:
        common.MODEL = saved


def test_the_model_banner_names_its_training_lengths(tmp_path):
    from model import MambaConfig, MambaLM, save_checkpoint
    from tasks import SELECTIVE_COPYING
    from ui import common
    for extra, says in [({}, "trained on selective_copying at L = 4096 ·"),
                        ({"train_lengths": [512, 4096, 8192]}, "at L = 512, 4096, 8192 (mixed)")]:
        path = tmp_path / "sc.safetensors"
        save_checkpoint(MambaLM(MambaConfig(d_model=16, vocab_size=18)), path,
                        task=SELECTIVE_COPYING.metadata(4096 if not extra else 8192, **extra))
        assert says in common.load_model(str(path)).status


def test_a_missing_default_checkpoint_starts_a_fresh_model_and_says_so(tmp_path):
    """The default checkpoint may be absent (it is being trained): the app then runs a seeded,
    freshly initialised model, its banner says so, and the views work on it."""
    import app  # noqa: F401
    from ui import common, explore
    fresh = common.load_model(None, default=tmp_path / "absent.safetensors")
    assert fresh.lm is not None and fresh.error is None
    assert "Untrained model" in fresh.status and "absent.safetensors` is not found" in fresh.status
    assert fresh.label == "untrained model (seed 0)" and fresh.path is None
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    assert "is unreadable" in common.load_model(None, default=junk).status
    saved = common.MODEL
    try:
        common.MODEL = fresh
        chart, summary = explore.show("1 2 S 3 S", "index", 256, None, None, LAYERS, "max")
        assert "L = 5" in summary and chart.to_dict()["title"]["text"].startswith("untrained model (seed 0)")
        from ui import mechanism
        assert "untrained model (seed 0) (loaded at start)" in mechanism.checkpoint_names()
    finally:
        common.MODEL = saved


# ---------------------------------------------------------------- python -m ui.export, in-process
def test_batch_export_cli_writes_every_format(checkpoint, tmp_path, capsys):
    from model import Trace
    from tasks.induction import Generator
    from ui import export
    out = tmp_path / "out"
    rc = export.main(["--out", str(out), "--checkpoint", str(checkpoint[0]), "--n", "2", "--length", "64",
                      "--seed", "7", "--formats", "safetensors,csv,html", "--max-bins", "16"])
    assert rc == 0 and "wrote 2 traces" in capsys.readouterr().out
    settings = json.loads((out / "settings.json").read_text())
    assert settings["checkpoint_sha256"] == checkpoint[1] and settings["generator"]["seed"] == "7 + i"
    for i in range(2):
        tr = Trace.load(out / f"seq{i:05d}.safetensors")
        assert tr.tokens.tolist() == INDUCTION.realize(Generator(length=64, seed=7 + i)).tolist()
        with gzip.open(out / f"seq{i:05d}.csv.gz", "rt") as fh:
            assert len(pd.read_csv(fh)) == 64 * (2 * 2 * 128 + 17)
        assert '"time_range"' in (out / f"seq{i:05d}.html").read_text(encoding="utf-8")
    seqs = tmp_path / "seqs.txt"
    seqs.write_text("# two sequences\n1 2 S 3 S\n\n4 x S\n")
    assert export.main(["--out", str(tmp_path / "bad"), "--sequences", str(seqs), "--checkpoint",
                        str(checkpoint[0])]) == 2
    assert "seqs.txt line 4: token 2 ('x') is not a whole number or S" in capsys.readouterr().err


def test_batch_export_cli_every_flag_has_help():
    from ui import export
    flags = [a for a in export.parser()._actions if a.option_strings and a.dest != "help"]
    assert len(flags) == 18 and all(a.help for a in flags), [a.dest for a in flags if not a.help]
