"""The Memories tab: viz/memory.py's charts and ui/memory.py's adapters on a small MQAR model."""
import gradio as gr
import numpy as np
import pytest
import torch

from model import MambaConfig, MambaLM
from tasks import MQAR_TASK, SELECTIVE_COPYING
from tasks.text import IdTask
from ui import common, memory
from viz.memory import capacity_chart, clamp_chart, holders_chart, holders_frame, memory_labels, retention_chart


def test_charts_validate_and_name_their_aggregation():
    labels = memory_labels([1, 3, 5], [9, 2, 9, 4, 9, 7], ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])
    assert labels == ["#1 t=1: c", "#2 t=3: e", "#3 t=5: h"]
    ret = np.array([[0, 1.0, 0.5, 0.2], [0, 0, 2.0, 1.0], [0, 0, 0, 3.0]])
    retention_chart(ret, np.array([0, 2, 4, 6]), labels, recall=[6, 6, 6]).to_dict()
    holders = np.random.default_rng(0).random((3, 100))
    spec = holders_chart(holders, labels, "channel", max_units=10).to_dict()
    assert "the 10 channels holding most, the other 90 summed" in spec["title"]["subtitle"]
    frame, cols = holders_frame(holders, labels, max_units=10)
    rest = frame[frame.unit == "other 90 channels: sum"].norm.to_numpy()
    top = np.sort(np.argsort(-holders.max(0))[:10])
    np.testing.assert_allclose(rest, np.delete(holders, top, axis=1).sum(1))    # nothing dropped silently
    assert len(cols) == 11
    clamp_chart(np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, np.nan]]), labels).to_dict()
    capacity_chart([4, 8, 4, 8], [1.0, 0.5, 1.0, 0.9], ["N=4", "N=4", "N=8", "N=8"]).to_dict()


@pytest.fixture
def mqar_app(monkeypatch):
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=MQAR_TASK.vocab_size)).eval()
    monkeypatch.setattr(common, "MODEL", common.Loaded(lm, "tiny MQAR", "", None, task=MQAR_TASK))
    return lm


def test_memories_tab_adapters(mqar_app):
    text = "5 4100 7 4200 9 4300 _ _ 7 _ 5 _ 9 _"
    md, ret, hold = memory.show_memories(text, "layer 2", "read at the recall (|C·term|)")
    assert "**3 memories** in layer 2" in md and ret.type == "altair" and hold.type == "altair"
    md, plot = memory.show_clamp(text, "layer 1", 2)
    assert "its own recall right in" in md and plot.type == "altair"
    with pytest.raises(gr.Error, match="layer 9 is out of range 1..2"):
        memory.show_memories(text, "layer 9", "share of the unit's state")
    with pytest.raises(gr.Error, match="unit view"):
        memory.show_memories(text, "layer 1", "colour")
    with pytest.raises(gr.Error, match="writes nothing to remember"):
        memory.show_memories("_ _ 5 _", "layer 1", "share of the unit's state")
    with pytest.raises(gr.Error, match="clamp window"):
        memory.show_clamp(text, "layer 1", 0)


def test_memories_tab_refuses_a_plain_lm(monkeypatch):
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=50)).eval()
    monkeypatch.setattr(common, "MODEL", common.Loaded(lm, "plain", "", None, task=IdTask(50)))
    with pytest.raises(gr.Error, match="needs a task model"):
        memory.show_memories("1 2 3", "layer 1", "share of the unit's state")


def test_selective_copy_sequence_maps_every_data_token(monkeypatch):
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=SELECTIVE_COPYING.vocab_size)).eval()
    monkeypatch.setattr(common, "MODEL", common.Loaded(lm, "tiny copy", "", None, task=SELECTIVE_COPYING))
    md, _, _ = memory.show_memories("_ 3 _ 9 _ _ 1 ? ? ?", "layer 1", "state held (‖term‖)")
    assert "**3 memories**" in md
