"""The Mechanism tab's comparison refuses a checkpoint of another task with a specific message
(an MQAR model's top ids are not induction tokens: this was an IndexError), the prediction table
shows ids outside the labels, and permalinks work on a model that was never saved."""
import gradio as gr
import pytest
import torch

from model import MambaConfig, MambaLM
from tasks import INDUCTION, mqar_task
from ui import common, mechanism, permalink
from viz.mechanism import prediction_markdown

CKPT = common.DEFAULT_CHECKPOINT


@pytest.fixture
def induction_app(monkeypatch):
    lm = common.load_model(str(CKPT)).lm
    monkeypatch.setattr(common, "MODEL", common.Loaded(lm, "induction", "", None, task=INDUCTION, path=CKPT))
    return lm


def test_compare_refuses_a_checkpoint_of_another_task(induction_app):
    names = mechanism.checkpoint_names()
    other = next(n for n in names if "mqar" in n)
    with pytest.raises(ValueError, match=r"was trained on mqar \(vocabulary 8192\), this app's sequence is "
                                         r"induction_heads \(vocabulary 17\)"):
        mechanism._task_checkpoint(other)
    same = next(n for n in names if n.startswith("induction-2layer"))
    assert mechanism._task_checkpoint(same).config.vocab_size == 17
    with pytest.raises(gr.Error, match="was trained on mqar"):
        mechanism.compare_checkpoints("3 7 S 9 S", same, other)


def test_prediction_table_names_ids_outside_the_labels():
    md = prediction_markdown([("a", 4100, 0.5, 3, 0.25, "")], INDUCTION.labels)
    assert "**id 4100**" in md and "| 3 |" in md


def test_permalink_of_an_unsaved_model(monkeypatch):
    torch.manual_seed(0)
    task = mqar_task(64)
    lm = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=64)).eval()      # no checkpoint_sha256
    monkeypatch.setattr(common, "MODEL", common.Loaded(lm, "unsaved", "", None, task=task))
    link = permalink.link("1 40 2 50 _ 2 _ 1", 8, -1, 0, 0, 1, False, 0, "index", 64, None, None, ["layer 1"],
                          "max", None, None, "explore")
    assert link.startswith("?") and "model=" not in link
