"""The shipped selective-copying and MQAR checkpoints load with their task and score what their
model cards say (small samples; the cards' tables come from training.eval)."""
from pathlib import Path

import pytest

from model import load_checkpoint
from tasks import task_for
from training.eval import count_correct

ROOT = Path(__file__).resolve().parent.parent / "checkpoints"


@pytest.mark.parametrize("name, length, options, floor, ceiling", [
    ("selective-copy-2layer", 128, {"k": 16}, 0.80, 1.0),        # card: 87.9% at n_ctx 128
    ("selective-copy-2layer", 4096, {"k": 16}, 0.0, 0.20),       # card: 8.4% at 4096 (the gap, kept honest)
    ("mqar-2layer", 64, {"n_pairs": 4}, 0.90, 1.0),              # card: 99.2% at (64, 4)
    ("mqar-2layer", 256, {"n_pairs": 16}, 0.70, 0.92),           # card: 78.8% at (256, 16)
])
def test_shipped_memory_checkpoints_score_what_their_cards_say(name, length, options, floor, ceiling):
    lm = load_checkpoint(ROOT / f"{name}.safetensors").eval()
    task = task_for(lm.task)
    assert task.name == {"selective-copy-2layer": "selective_copying", "mqar-2layer": "mqar"}[name]
    right, total = count_correct(lm, length, 16, 12345 + length, task=task, options=options)
    assert floor <= right / total <= ceiling, (name, length, right / total)
