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


def test_task_edits_and_presets_for_the_other_tasks(mqar_app):
    from ui import explore
    text = "5 4100 7 4200 _ _ 7 _ 5 _"
    assert memory.edit_kinds() == ["set key a's value to b", "ask for key a again at position b"]
    assert memory.apply_edit(text, "set key a's value to b", 7, 5000) == "5 4100 7 5000 _ _ 7 _ 5 _"
    assert memory.apply_edit(text, "ask for key a again at position b", 5, 9) == "5 4100 7 4200 _ _ 7 _ 5 5"
    with pytest.raises(gr.Error, match="key 9 is not among"):
        memory.apply_edit(text, "set key a's value to b", 9, 5000)
    with pytest.raises(gr.Error, match="edit"):
        memory.apply_edit(text, "move data token #a to position b", 1, 2)
    assert explore.preset_names() == list(MQAR_TASK.presets)
    out = explore.apply_preset(explore.preset_names()[0])
    assert len(out) == 9 and MQAR_TASK.positions(MQAR_TASK.parse(out[7])).scored and "pairs" in out[8]
    assert len(MQAR_TASK.parse(explore.first_text())) == 64
    with pytest.raises(gr.Error, match="this model's task is mqar"):
        explore.set_memory(text, 3)


def test_app_on_an_mqar_checkpoint_shows_its_presets_and_the_memories_tab(tmp_path, monkeypatch):
    import importlib
    import sys

    from model import save_checkpoint
    torch.manual_seed(0)
    path = tmp_path / "mqar.safetensors"
    save_checkpoint(MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=MQAR_TASK.vocab_size)), path,
                    task=MQAR_TASK.metadata(64, options={"n_pairs": 4}))
    monkeypatch.setenv(common.CHECKPOINT_ENV, str(path))
    monkeypatch.setattr(common, "MODEL", common.MODEL)              # restored after the test
    monkeypatch.setattr(sys, "argv", ["app.py"])
    app = importlib.reload(sys.modules["app"]) if "app" in sys.modules else importlib.import_module("app")
    by_id = {b.elem_id: b for b in app.demo.blocks.values() if getattr(b, "elem_id", None)}
    assert common.MODEL.task is MQAR_TASK
    assert [c[0] for c in by_id["preset"].choices] == list(MQAR_TASK.presets) and by_id["preset"].visible
    assert by_id["generate-box"].visible is False and by_id["quick-edits"].visible is False   # induction's
    assert by_id["run-memories"].visible is not False
    assert by_id["task-edit"].choices[0][0] == "set key a's value to b"
    assert MQAR_TASK.positions(MQAR_TASK.parse(by_id["tokens"].value)).scored
    assert by_id["tokens"].label.startswith("Tokens (keys 1–4095, values 4096–8191")
    md, ret, hold = memory.show_memories(by_id["tokens"].value, "layer 2", "state held (‖term‖)")
    assert "**4 memories** in layer 2" in md
