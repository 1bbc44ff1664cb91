"""analysis.compare.task_of: a checkpoint's own task (MQAR, selective copying), induction heads for a
task-less 17-token file, None for a plain LM (no induction positions applied to it); and every caller
handles None: the plain-LM paths of patching and the lens, no M and no Δ ratio, specific messages.
Tiny random models saved as checkpoints, with the tasks' metadata or none."""
import numpy as np
import pytest
import torch

from analysis import compare, patching
from analysis.lens import logit_lens
from analysis.measure import measure_checkpoint
from model import MambaConfig, MambaLM, load_checkpoint, save_checkpoint
from tasks import INDUCTION, MQAR_TASK, SELECTIVE_COPYING, IdTask
from ui import common
from ui import mechanism as ui_mechanism

PLAIN_IDS = np.array([5, 9, 2, 31, 7, 7, 40, 3, 12, 5, 9, 2, 31, 7], dtype=np.int64)    # [L = 14], V = 50


def tiny(vocab, seed=0):
    torch.manual_seed(seed)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=vocab, ssm_cfg={"d_state": 4})).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """plain (V = 50, no task), bare17 (17 tokens, no task: our early files), mqar, selective copying."""
    d = tmp_path_factory.mktemp("ckpts")
    save_checkpoint(tiny(50), d / "plain.safetensors")
    save_checkpoint(tiny(17), d / "bare17.safetensors")
    save_checkpoint(tiny(MQAR_TASK.vocab_size), d / "mqar.safetensors",
                    task=MQAR_TASK.metadata(64, options={"n_pairs": 4}))
    save_checkpoint(tiny(SELECTIVE_COPYING.vocab_size), d / "sc.safetensors", task=SELECTIVE_COPYING.metadata())
    return d


def load(folder, name):
    return load_checkpoint(folder / f"{name}.safetensors")


def sequence(task):
    return task.realize(next(iter(task.presets.values())))


def test_task_of_a_model_and_of_its_trace(folder):
    plain, bare, mqar, sc = (load(folder, n) for n in ("plain", "bare17", "mqar", "sc"))
    assert plain.task is None and compare.task_of(plain) is None
    assert compare.task_of(plain.trace(PLAIN_IDS, include=())) is None
    assert compare.task_of(bare) is INDUCTION and compare.task_of(bare.trace(np.arange(17), include=())) is INDUCTION
    assert compare.task_of(MambaLM(MambaConfig())) is INDUCTION          # the app's untrained fallback
    got = compare.task_of(mqar)
    assert got.name == MQAR_TASK.name and got.vocab_size == MQAR_TASK.vocab_size
    assert compare.task_of(mqar.trace(sequence(MQAR_TASK), include=())).name == MQAR_TASK.name
    assert compare.task_of(sc) is SELECTIVE_COPYING
    assert compare.task_of(sc.trace(sequence(SELECTIVE_COPYING), include=())) is SELECTIVE_COPYING
    assert isinstance(compare.task_or_next_token(plain), IdTask) and compare.task_or_next_token(sc) is SELECTIVE_COPYING


def test_the_callers_take_a_plain_lm_as_one(folder):
    """No M, no Δ ratio, specific messages; patching and the lens read the next token (not an
    induction query): the same as with the task given explicitly."""
    lm = load(folder, "plain")
    tr = lm.trace(PLAIN_IDS, include=("delta",))
    pred = compare.prediction(tr)
    assert pred.memory is None and pred.top == int(tr.top_k_ids[-1, 0])
    assert compare.delta_ratios(tr, lm.config.d_conv) is None
    assert compare.query_summary(lm, PLAIN_IDS)[1] is None
    with pytest.raises(ValueError, match="this checkpoint is a plain language model \\(no task\\): give channel ids"):
        compare.memory_channels(lm, PLAIN_IDS, 1)
    corrupted = PLAIN_IDS.copy()
    corrupted[4] = 44
    ro = patching.readout_for(lm, PLAIN_IDS, corrupted)
    assert ro.step == PLAIN_IDS.size - 1 and "top-1 at the last step" in ro.how
    assert ro == patching.readout_for(lm, PLAIN_IDS, corrupted, task=IdTask(50))
    lens = logit_lens(lm, PLAIN_IDS, k=3, step=6)
    assert lens.query == 6 and lens.target == int(PLAIN_IDS[7]) and "actual next token" in lens.how
    with pytest.raises(ValueError, match="this checkpoint is a plain language model \\(no task\\)"):
        measure_checkpoint(folder / "plain.safetensors", None)


def test_the_callers_keep_a_tasks_positions(folder):
    for name, task in (("mqar", MQAR_TASK), ("sc", SELECTIVE_COPYING)):
        lm = load(folder, name)
        tokens = sequence(task)
        tr = lm.trace(tokens, include=("delta",), full_probs=True)       # p(M) needs the distribution
        pos = task.positions(tokens)
        assert compare.prediction(tr).memory == int(tokens[pos.first_write])
        lens = logit_lens(lm, tokens, k=2)
        assert (lens.query, lens.target) == tuple(map(int, pos.scored[0]))
        with pytest.raises(ValueError, match=f"this checkpoint is a {task.name} model"):
            measure_checkpoint(folder / f"{name}.safetensors", None)


def test_the_mechanism_tab_refuses_a_plain_checkpoint_beside_a_task_model(folder, monkeypatch):
    monkeypatch.setattr(ui_mechanism, "CHECKPOINT_DIR", folder)
    monkeypatch.setattr(common, "MODEL", common.Loaded(load(folder, "bare17"), "bare", "", None, INDUCTION,
                                                       folder / "bare17.safetensors"))
    text = "1 2 S 5 3 4 3 S"
    with pytest.raises(ValueError, match="'plain.safetensors' is a plain language model \\(no task\\)"):
        ui_mechanism.compare_charts(text, "bare17.safetensors", "plain.safetensors")
    with pytest.raises(ValueError, match="is a plain language model \\(no task\\)"):
        ui_mechanism.intervention_chart(text, "plain.safetensors", "clamp Δ", "layer 1", "3", 3, None, 0.0)
    md, _, _ = ui_mechanism.compare_charts(text, "bare17.safetensors", "bare17.safetensors")
    assert "bare17.safetensors" in md
