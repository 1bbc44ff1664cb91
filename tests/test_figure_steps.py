"""A figure is the chart on screen: the Patching and Logit lens tabs' "read at step t" reaches the
figure export (ui/figure.py) and the app's /figure endpoint, and the caption names the step read."""
import importlib
import sys

import numpy as np
import pytest
import torch

from model import MambaConfig, MambaLM, save_checkpoint
from tasks import IdTask
from ui import common, figure, lens, patching
from viz import charts

IDS = np.array([5, 9, 2, 31, 7, 7, 40, 3, 12, 5, 9, 2, 31, 7], dtype=np.int64)     # [L = 14]
GEN = (64, -1, -1, 0, 1, False, 0)
VIEW = ("index", 64, None, None, ["layer 1"], "max")
MECH = ("a", "b", "layer 1", "0", "clamp Δ", "layer 1", "0", None, None, 0.0)


def tiny(vocab=50):
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=vocab, ssm_cfg={"d_state": 4})).eval()


@pytest.fixture
def texts(monkeypatch):
    """A plain LM (its read steps: the last by default, any step when given) as the app's model;
    (clean, corrupted) as the text boxes hold them."""
    task = IdTask(50)
    monkeypatch.setattr(common, "MODEL", common.Loaded(tiny(), "tiny", "", None, task=task))
    corrupted = IDS.copy()
    corrupted[4] = 44
    return task.format(IDS), task.format(corrupted)


def spec(chart) -> str:
    return charts.spec_json(chart)


def figure_of(which, clean, corrupted, patch_step=None, lens_step=None):
    return figure.chart_and_caption(which, clean, GEN, VIEW, MECH, corrupted, "state h", 3, patch_step, lens_step)


def test_the_lens_figure_reads_the_step_on_screen(texts):
    clean, corrupted = texts
    chart, caption = figure_of("logit lens", clean, corrupted, lens_step="5")
    assert spec(chart) == spec(lens.chart_of(clean, 3, "5")[1])
    assert spec(chart) != spec(lens.chart_of(clean, 3, None)[1])          # the step changes the chart
    assert caption[-1].endswith("read at t = 5")
    assert figure_of("logit lens", clean, corrupted)[1][-1].endswith(f"read at t = {IDS.size - 1}")   # chosen


@pytest.mark.parametrize("which, part", [("patching: heatmap", 2), ("patching: differences", 1)])
def test_the_patching_figures_read_the_step_on_screen(texts, which, part):
    clean, corrupted = texts
    chart, caption = figure_of(which, clean, corrupted, patch_step="6")
    assert spec(chart) == spec(patching.chart_of(clean, corrupted, "state h", "6")[part])
    assert spec(chart) != spec(patching.chart_of(clean, corrupted, "state h", None)[part])
    assert caption[-1].endswith("read after t = 6")
    with pytest.raises(ValueError, match="query step 99 is out of range 0..13"):
        figure_of(which, clean, corrupted, patch_step="99")


def test_export_figure_takes_the_steps_last_and_optional(texts):
    clean, corrupted = texts
    args = ("logit lens", "svg", 300, clean, *GEN, *VIEW, *MECH, corrupted, "state h", 3)
    assert "read at t = 5" in open(figure.export_figure(*args, "", "5"), encoding="utf-8").read()
    assert f"read at t = {IDS.size - 1}" in open(figure.export_figure(*args), encoding="utf-8").read()


def test_the_figure_endpoint_is_wired_to_the_step_boxes(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny(), path)
    monkeypatch.setenv(common.CHECKPOINT_ENV, str(path))
    monkeypatch.setattr(common, "MODEL", common.MODEL)              # restored after the test
    monkeypatch.setattr(sys, "argv", ["app.py"])
    app = importlib.reload(sys.modules["app"]) if "app" in sys.modules else importlib.import_module("app")
    fn = next(f for f in app.demo.fns.values() if f.api_name == "figure")
    ids = [getattr(c, "elem_id", None) for c in fn.inputs]
    assert ids[-2:] == ["patch-step", "lens-step"]
