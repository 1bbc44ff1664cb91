"""The app as a user's program sees it: `python app.py` in a subprocess on a free port, driven
with gradio_client. Runs a sequence, exports every format and reads it back, and checks that
each class of bad input comes back as its specific error (and the server keeps serving)."""
import concurrent.futures as cf
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.app_load import start_app, stop
from tests.conftest import call

LAYERS = ["layer 1", "layer 2"]


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
    assert "L = 256" in summary and "memory **M =" in summary


def test_generator_presets_and_quick_edits(client, paper_text):
    from viz.sequences import parse_tokens, task_positions
    out = call(client, "Two triggers", api_name="/preset")
    assert out[0] == 256 and out[4] in (2, "2") and len(task_positions(parse_tokens(out[7])).triggers) == 2
    edited = parse_tokens(call(client, paper_text, 11, api_name="/set_memory"))
    assert task_positions(edited).target == 11
    moved = parse_tokens(call(client, paper_text, 5, api_name="/move_trigger"))
    assert task_positions(moved).triggers[0] == 5 and len(moved) == 256
    long_text = call(client, 16384, -1, -1, 1, 1, False, 0, api_name="/generate")
    assert len(parse_tokens(long_text)) == 16384 and len(long_text) > 30000
    plot, summary = call(client, *view_args(long_text), api_name="/run")
    assert "binned by **64** steps" in summary and "max over 64-step bins" in plot["plot"]


def test_export_safetensors_reads_back(client, paper_text, checkpoint):
    from model import Trace
    path = call(client, paper_text, api_name="/export_safetensors")
    tr = Trace.load(path)
    assert " ".join("S" if t == 16 else str(t) for t in tr.tokens.tolist()) == paper_text
    assert tr.meta["checkpoint_sha256"] == checkpoint[1] == hashlib.sha256(checkpoint[0].read_bytes()).hexdigest()
    assert tr.meta["config"]["d_model"] == 64 and len(tr.layers) == 2
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
    (view_args("3 7 x 1 S"), "/run", "token 3 ('x') is not an integer or S"),
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
    (("1 2 x",), "/export_safetensors", "token 3 ('x') is not an integer or S"),
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


def test_server_log_has_no_traceback(server, client):
    assert "Traceback" not in server[1].read_text()


# ---------------------------------------------------------------- checkpoints, in-process
def test_missing_or_unreadable_checkpoint_gives_a_clear_error(tmp_path, capsys):
    import gradio as gr

    import app
    missing = app.load_model(str(tmp_path / "nope.safetensors"))
    assert missing.lm is None and "checkpoint not found" in missing.error
    assert "Traceback" not in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not a checkpoint")
    bad = app.load_model(str(junk))
    assert bad.lm is None and "pickle" in bad.error
    saved = app.MODEL
    try:
        app.MODEL = bad
        with pytest.raises(gr.Error, match="no model is loaded: .*pickle"):
            app.show("1 2 S 3 S", "index", 256, None, None, LAYERS, "max")
    finally:
        app.MODEL = saved
    # the default checkpoint may be absent: then an untrained model, and the banner says so
    fresh = app.load_model(None) if not app.DEFAULT_CHECKPOINT.exists() else None
    if fresh is not None:
        assert fresh.lm is not None and "Untrained model" in fresh.status
