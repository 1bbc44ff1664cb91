"""The shipped induction-heads checkpoint works; the training loop and the evaluation table do what
they say (training/train.py, training/eval.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model import MambaConfig, MambaLM, load_checkpoint, save_checkpoint
from tasks import INDUCTION
from training.eval import count_correct, evaluate, main as eval_main, markdown_table
from training.train import TrainConfig, train

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "induction-2layer.safetensors"
TEST_SEED = 424242   # never used in training (training data is seeded by --seed, validation by 1_000_003 + L)


@pytest.fixture(scope="module")
def shipped():
    if not CHECKPOINT.exists():
        pytest.fail(f"the shipped checkpoint {CHECKPOINT} is missing")
    return load_checkpoint(CHECKPOINT)


@pytest.mark.parametrize("length, floor", [(256, 0.996), (1024, 0.99)])
def test_shipped_checkpoint_solves_the_task(shipped, length, floor):
    correct, total = count_correct(shipped, length, 512, seed=TEST_SEED + length)
    assert total == 512 and correct / 512 >= floor, f"{correct}/512 right at L={length}, need >= {floor:.1%}"


@pytest.mark.parametrize("pos", [0, 1, 200, 251, 252, 253])
def test_shipped_checkpoint_at_the_edges(shipped, pos):
    """The rare placements: memory at the start, or right before the query (inside its conv window,
    p = L-3 has probability 1/254 in training; an under-trained run got 7% there)."""
    b = INDUCTION.batch(128, 256, seed=TEST_SEED + pos, trigger_pos=pos)
    with torch.no_grad():
        pred = shipped(torch.from_numpy(b.tokens), num_last_tokens=1)[:, -1].argmax(-1)
    right = pred == torch.from_numpy(b.target)
    assert right.float().mean() >= 0.99, f"trigger at {pos}: {right.sum()}/128"


def test_shipped_checkpoint_metadata(shipped):
    task = shipped.task
    assert task["name"] == "induction_heads" and task["trigger_id"] == 16
    assert 256 in task["lengths_seen"] and task["steps"] > 0 and task["wall_time_s"] > 0
    assert shipped.num_parameters() == 66_560
    assert CHECKPOINT.stat().st_size < 1 << 20


@pytest.mark.parametrize("length, samples, floor", [(256, 256, 0.99), (4096, 64, 0.98), (65536, 16, 0.9),
                                                    (1048576, 4, 1.0)])
def test_shipped_mamba2_checkpoint_holds_the_token_past_its_training_length(length, samples, floor):
    """The Mamba-2 card: trained on L <= 256 only (with filler dilation), 100% at every length 2^6 .. 2^20
    (256 sequences to 2^14, 64 at 2^15-2^16, 16 beyond)."""
    lm = load_checkpoint(CHECKPOINT.with_name("induction-2layer-mamba2.safetensors"))
    assert lm.config.ssm_cfg["layer"] == "Mamba2" and lm.task["lengths_seen"] == [64, 256]
    assert lm.task["filler_dilation_max"] > 1
    correct, total = count_correct(lm, length, samples, seed=TEST_SEED + length)
    assert correct / total >= floor, f"{correct}/{total} right at L={length}, need >= {floor:.0%}"


def test_the_accuracy_test_can_fail():
    """An untrained model must score near chance (1/16) on the same check."""
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig()).eval()
    assert count_correct(lm, 256, 256, seed=TEST_SEED)[0] / 256 < 0.25


# --- training loop ------------------------------------------------------------------------------

def tiny(out, steps, resume=False):
    return TrainConfig(seed=3, steps=steps, batch=2, train_len=24, eval_every=3, val="24:8,48:4",
                       stop_after=100, out=str(out), resume=resume, threads=1, log_every=1)


def test_training_runs_logs_and_saves(tmp_path):
    summary = train(tiny(tmp_path, 4), progress=False)
    assert summary["step"] == 4 and summary["lengths_seen"] == [24]
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert len(losses) == 4 and all(0 < v < 10 for v in losses)
    assert [e["step"] for e in events if e["event"] == "val"] == [3, 4]
    assert json.loads((tmp_path / "settings.json").read_text())["train_len"] == 24
    lm = load_checkpoint(tmp_path / "model.safetensors")
    assert lm.task["steps"] == 4 and lm.task["seed"] == 3 and lm.task["lengths_seen"] == [24]
    assert load_file(str(tmp_path / "optim.safetensors"))  # Adam state, safetensors not pickle


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    train(tiny(tmp_path / "straight", 6), progress=False)
    train(tiny(tmp_path / "split", 3), progress=False)
    train(tiny(tmp_path / "split", 6, resume=True), progress=False)
    a = load_checkpoint(tmp_path / "straight" / "model.safetensors").state_dict()
    b = load_checkpoint(tmp_path / "split" / "model.safetensors").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    oa = load_file(str(tmp_path / "straight" / "optim.safetensors"))
    ob = load_file(str(tmp_path / "split" / "optim.safetensors"))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)
    # and training changed the model at all
    fresh = load_checkpoint(tmp_path / "split" / "model.safetensors")
    torch.manual_seed(3)
    init = MambaLM(MambaConfig()).state_dict()
    assert not torch.equal(init["backbone.layers.0.mixer.in_proj.weight"],
                           fresh.state_dict()["backbone.layers.0.mixer.in_proj.weight"])


def test_init_from_continues_a_shipped_file_as_a_new_run(tmp_path):
    """--init-from: the weights, step count and lengths seen carry over (schedules keep their steps),
    Adam starts fresh, the data stream is new, and the file says where it came from."""
    train(tiny(tmp_path / "first", 3), progress=False)
    src = tmp_path / "first" / "model.safetensors"
    cfg = tiny(tmp_path / "next", 5)
    cfg.init_from, cfg.schedule = str(src), "0:24,3:32"
    summary = train(cfg, progress=False)
    assert summary["step"] == 5 and summary["lengths_seen"] == [24, 32]
    lm = load_checkpoint(tmp_path / "next" / "model.safetensors")
    (origin,) = lm.task["init_from"]
    assert origin == {"file": "model.safetensors", "sha256": load_checkpoint(src).checkpoint_sha256, "step": 3}
    assert lm.task["steps"] == 5 and lm.task["wall_time_s"] >= load_checkpoint(src).task["wall_time_s"]
    # two steps from the source's weights, not from a fresh initialisation
    events = [json.loads(line) for line in (tmp_path / "next" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == [4, 5]
    a, b = load_checkpoint(src).state_dict(), lm.state_dict()
    assert all(a[k].shape == b[k].shape for k in a) and not all(torch.equal(a[k], b[k]) for k in a)
    key = "backbone.layers.0.mixer.in_proj.weight"
    assert (a[key] - b[key]).abs().max() < 0.01            # two Adam steps of lr 1e-3 from there
    with pytest.raises(ValueError, match=r"d_model \(64 there, 32 here\)"):
        train(TrainConfig(**{**vars(cfg), "d_model": 32, "out": str(tmp_path / "x")}), progress=False)
    with pytest.raises(ValueError, match="trained on task 'induction_heads', not 'selective_copying'"):
        train(TrainConfig(**{**vars(cfg), "task": "selective_copying", "val": "64:2",
                             "out": str(tmp_path / "y")}), progress=False)
    with pytest.raises(ValueError, match="give one"):
        TrainConfig(init_from=str(src), resume=True)


def test_dilation_scales_every_decay():
    """--dilation-max: A_log + log k is A -> k·A, with gradients reaching A_log."""
    from training.train import dilated_params
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig())
    p = dilated_params(lm, 8.0)
    assert set(p) == {f"backbone.layers.{i}.mixer.A_log" for i in range(2)}
    A = -torch.exp(lm.backbone.layers[0].mixer.A_log)
    assert torch.allclose(-torch.exp(p["backbone.layers.0.mixer.A_log"]), 8 * A)
    assert p["backbone.layers.0.mixer.A_log"].requires_grad


def test_filler_scale_spares_every_write_marker_and_query_window():
    """--filler-dilation-max: k on the filler only; the conv window after each trigger, memory token,
    data token and marker keeps Δ as it is (the write is never scaled)."""
    from tasks import task_named
    from training.train import filler_scale
    b = INDUCTION.batch(3, 40, seed=1)
    s = filler_scale(INDUCTION, b.tokens, 5.0, 4)[:, 0]                     # [B, L]
    for row, p in zip(s, b.trigger_pos[:, 0]):
        spared = set(range(p, p + 5)) | {39}                               # S, M and 3 after M; the query
        assert {int(t) for t in (row == 1).nonzero()[0]} == {t for t in spared if t < 40}
        assert (row[[t for t in range(40) if t not in spared]] == 5.0).all()
    sc = task_named("selective_copying")
    c = sc.batch(2, 64, seed=0, k=4)
    s = filler_scale(sc, c.tokens, 3.0, 2)[:, 0]
    for row, toks in zip(s, c.tokens):
        signal = toks != 16                                                # data and markers
        after = np.concatenate([[False], signal[:-1]])
        assert (row[signal | after] == 1).all() and (row[~(signal | after)] == 3).all()


@pytest.mark.parametrize("ssm_cfg", [{}, {"layer": "Mamba2", "headdim": 16, "chunk_size": 8}])
def test_filler_dilation_scales_delta_at_the_filler_steps_only(ssm_cfg):
    """The training hook multiplies Δ (what every layer's scan then uses) by the per-step scale,
    Mamba-1 channels and Mamba-2 heads alike, and the loss's gradients reach dt_bias through it."""
    from model import MixerHooks, RecordSpec
    from training.train import filler_scale, train_step
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(d_model=32, ssm_cfg=ssm_cfg))
    b = INDUCTION.batch(2, 37, seed=2)
    scale = torch.from_numpy(filler_scale(INDUCTION, b.tokens, 7.0, 4))     # [B, 1, L]
    tokens = torch.from_numpy(b.tokens)
    seen = []

    def hook(d):                                                           # d [B, U, L]
        seen.append(d.clone())
        return d * scale

    with torch.no_grad():
        _, _, rec = lm.forward_chunk(tokens, spec=RecordSpec(include=("delta",)), hooks=[MixerHooks(delta=hook)] * 2)
        _, _, plain = lm.forward_chunk(tokens, spec=RecordSpec(include=("delta",)))
    assert len(seen) == 2
    for r, d in zip(rec, seen):                                            # what each layer's scan ran on
        torch.testing.assert_close(r["delta"], (d * scale).transpose(1, 2))
    torch.testing.assert_close(seen[0].transpose(1, 2), plain[0]["delta"])  # layer 1's input is unchanged
    opt = torch.optim.Adam(lm.parameters(), lr=1e-3)
    is_dt_bias = lambda n: n.endswith(("mixer.dt_bias", "dt_proj.bias"))  # noqa: E731
    before = [p.detach().clone() for n, p in lm.named_parameters() if is_dt_bias(n)]
    loss, _ = train_step(lm, opt, tokens, torch.from_numpy(b.queries), torch.from_numpy(b.answers),
                         delta_scale=scale)
    after = [p for n, p in lm.named_parameters() if is_dt_bias(n)]
    assert 0 < loss < 10 and before and all(not torch.equal(x, y) for x, y in zip(before, after))


def test_filler_dilation_runs_and_is_recorded(tmp_path):
    cfg = tiny(tmp_path, 3)
    cfg.filler_dilation_max, cfg.filler_dilation_from = 64.0, 1
    summary = train(cfg, progress=False)
    assert summary["step"] == 3
    task = load_checkpoint(tmp_path / "model.safetensors").task
    assert task["filler_dilation_max"] == 64.0 and task["filler_dilation_from"] == 1
    with pytest.raises(ValueError, match="filler_dilation_max"):
        TrainConfig(filler_dilation_max=0.5)


# --- evaluation table ---------------------------------------------------------------------------

class Oracle(torch.nn.Module):
    """Answers by looking the memory token up in the input: a perfect score, from the real loop."""
    device = torch.device("cpu")

    def forward(self, tokens, positions):
        pos = (tokens[:, :-1] == 16).float().argmax(1)               # first trigger
        mem = tokens.gather(1, (pos + 1)[:, None])[:, 0]
        return torch.nn.functional.one_hot(mem, 17).float()[:, None, :].expand(-1, positions.shape[1], -1)


def test_evaluate_counts_right_and_wrong():
    res = evaluate(Oracle(), [16, 64], samples=10, long_samples=3, long_from=64, progress=False)
    assert [(r.length, r.samples, r.correct) for r in res] == [(16, 10, 10), (64, 3, 3)]
    table = markdown_table(res)
    assert table.splitlines()[2] == "| 16 | 4 | 10 | 10 | 100.0% |"
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig()).eval()
    (r,) = evaluate(lm, [32], samples=64, progress=False)
    assert r.samples == 64 and r.correct < 32       # an untrained model is not scored as right


def test_eval_cli_prints_table_and_json(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_checkpoint(MambaLM(MambaConfig()), path, task=INDUCTION.metadata(256))
    eval_main(["--checkpoint", str(path), "--lengths", "16,32", "--samples", "4", "--no-progress"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| L |") and len(lines) == 4 and lines[3].startswith("| 32 | 5 | 4 |")
    eval_main(["--checkpoint", str(path), "--lengths", "16,32", "--samples", "4", "--no-progress", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert [r["length"] for r in doc["results"]] == [16, 32] and doc["results"][0]["samples"] == 4
    lm = load_checkpoint(path)
    want, _ = count_correct(lm, 32, 4, seed=0 + 32)
    assert doc["results"][1]["correct"] == want


@pytest.mark.parametrize("args, says", [
    (["--lengths", "2"], "length 2 must be >= 3"),
    (["--lengths", "16", "--samples", "0"], "samples 0 >= 1"),
    (["--lengths", "16", "--options", '{"colour": 1}'], "do not fit induction_heads's generator"),
    (["--lengths", "16", "--memory-channels", "--checkpoint", "checkpoints/selective-copy-2layer.safetensors"],
     "for induction heads only"),
    (["--lengths", "8", "--checkpoint", "checkpoints/mqar-2layer.safetensors"], "length 8: 16 pairs"),
    (["--lengths", "16", "--checkpoint", "no/such.safetensors"], "checkpoint not found"),
])
def test_eval_cli_names_bad_input_without_a_traceback(tmp_path, capsys, args, says):
    path = tmp_path / "m.safetensors"
    save_checkpoint(MambaLM(MambaConfig(d_model=16)), path, task=INDUCTION.metadata(256))
    with pytest.raises(SystemExit):
        eval_main(["--checkpoint", str(path), "--samples", "2", "--no-progress"] + args)
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_eval_batches_long_inputs_within_memory():
    from training.eval import batch_size_for
    assert batch_size_for(1 << 20, 16) == 16 and batch_size_for(256, 512) == 512
    assert batch_size_for(1 << 20, 64, tokens_per_batch=1 << 16) == 8


# --- the other tasks through the same loop ------------------------------------------------------

@pytest.mark.parametrize("task, options, length, d_model", [("selective_copying", "", 20, 32),
                                                            ("mqar", '{"n_pairs": 2}', 12, 16)])
def test_training_and_eval_on_multi_query_tasks(tmp_path, task, options, length, d_model):
    cfg = TrainConfig(task=task, task_options=options, seed=1, steps=3, batch=2, train_len=length, eval_every=3,
                      val=f"{length}:4", stop_after=100, out=str(tmp_path), threads=1, log_every=1, d_model=d_model)
    summary = train(cfg, progress=False)
    lm = load_checkpoint(tmp_path / "model.safetensors")
    assert summary["step"] == 3 and lm.task["name"] == task and lm.config.vocab_size == cfg.the_task.vocab_size
    (r,) = evaluate(lm, [length], samples=5, progress=False, task=cfg.the_task, options=cfg.options())
    k = 16 if task == "selective_copying" else 2
    assert r.samples == 5 and r.queries == 5 * k and 0 <= r.correct <= r.queries
    assert markdown_table([r]).splitlines()[0] == "| L | log2 L | samples | queries | correct | accuracy |"


def test_options_schedule_changes_the_training_batches_not_the_target(tmp_path):
    cfg = TrainConfig(task="selective_copying", options_schedule='{"0": {"k": 2}, "2": {"k": 4}}', seed=1, steps=3,
                      batch=2, train_len=12, eval_every=3, val="12:2", stop_after=100, out=str(tmp_path), threads=1,
                      d_model=16)
    assert [cfg.options_at(s)["k"] for s in range(4)] == [2, 2, 4, 4] and cfg.options() == {"k": 4}
    train(cfg, progress=False)
    lm = load_checkpoint(tmp_path / "model.safetensors")
    assert lm.task["options"] == {"k": 4} and lm.task["options_schedule"] == cfg.options_schedule
    with pytest.raises(ValueError, match="first step must be 0"):
        TrainConfig(options_schedule='{"5": {"k": 2}}')
    with pytest.raises(ValueError, match="keys must be steps"):
        TrainConfig(options_schedule='{"soon": {"k": 2}}')


def test_train_options_reach_the_training_batches_only(tmp_path, monkeypatch):
    """An augmentation (selective copying's lead_max) shapes what the model trains on; validation and
    the checkpoint's task options stay the task's own, and the checkpoint records the augmentation."""
    import training.train as tt
    seen = []
    real = tt.task_batch
    monkeypatch.setattr(tt, "task_batch", lambda task, n, L, gen, options: (seen.append(dict(options)),
                                                                           real(task, n, L, gen, options))[1])
    cfg = TrainConfig(task="selective_copying", task_options='{"k": 2}', train_options='{"lead_max": 8}', seed=1,
                      steps=2, batch=2, train_len=12, eval_every=2, val="12:2", stop_after=100, out=str(tmp_path),
                      threads=1, d_model=16)
    assert cfg.options_at(0) == {"k": 2, "lead_max": 8} and cfg.options() == {"k": 2}
    assert seen == [{"k": 2, "lead_max": 8}, {"k": 2}]      # the config's check: a training and a validation draw
    seen.clear()
    train(cfg, progress=False)
    assert seen == [{"k": 2, "lead_max": 8}] * 2
    lm = load_checkpoint(tmp_path / "model.safetensors")
    assert lm.task["options"] == {"k": 2} and lm.task["train_options"] == cfg.train_options
    with pytest.raises(ValueError, match="train_options must be a JSON object"):
        TrainConfig(train_options="[1]")


def test_train_flags_whose_batches_cannot_be_drawn_fail_before_any_step(tmp_path, capsys):
    from training.train import main as train_main
    base = ["--task", "selective_copying", "--steps", "5", "--out", str(tmp_path / "run")]
    for extra, says in [(["--train-len", "64", "--train-options", '{"lead_max": 60}'],
                         "training batches from step 0 (length 64, options {'lead_max': 60}) cannot be drawn"),
                        (["--schedule", "0:64,3:8"], "training batches from step 3 (length 8"),
                        (["--train-len", "64", "--val", "64:2,8:2"], "the validation set at 8"),
                        (["--train-len", "64", "--task-options", '{"pairs": 3}'], "do not fit selective_copying")]:
        with pytest.raises(SystemExit):
            train_main(base + extra)
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_checks_its_batches_from_its_own_step(tmp_path, capsys):
    """Options that fit only the run's later contexts (a lead that a short early context cannot hold)
    are fine for a run resumed past those contexts, and refused one line early for one that is not."""
    from training.train import main as train_main
    run = ["--task", "selective_copying", "--task-options", '{"k": 2}', "--schedule", "0:8,2:64", "--batch", "2",
           "--val", "64:2", "--eval-every", "2", "--stop-after", "100", "--threads", "1", "--d-model", "16",
           "--out", str(tmp_path)]
    train_main(run + ["--steps", "2"])
    capsys.readouterr()
    lead = ["--train-options", '{"lead_max": 40}', "--resume"]
    train_main(run + lead + ["--steps", "3"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
    bad = [(run[:-1] + [str(tmp_path / "fresh"), "--train-options", '{"lead_max": 40}', "--steps", "3"],
            "training batches from step 0 (length 8, options {'k': 2, 'lead_max': 40}) cannot be drawn"),
           (run[:7] + ["4"] + run[8:] + ["--resume", "--steps", "4"], "--resume with batch=4 but the run in"),
           (run[:-1] + [str(tmp_path / "none"), "--resume"], "--resume: no "),
           (run[:-1] + [str(tmp_path / "other"), "--init-from", "checkpoints/mqar-2layer.safetensors"],
            "trained on task 'mqar', not 'selective_copying'")]
    for argv, says in bad:
        with pytest.raises(SystemExit) as e:
            train_main(argv)
        err = capsys.readouterr().err + str(e.value.code)
        assert says in err and "Traceback" not in err, err


def test_a_schedule_mixture_draws_one_length_per_batch(tmp_path, monkeypatch):
    import training.train as tt
    cfg = TrainConfig(task="selective_copying", task_options='{"k": 2}', schedule="0:12,3:8|16|24", seed=1,
                      steps=40, batch=1, eval_every=40, val="12:2", stop_after=100, out=str(tmp_path), threads=1,
                      d_model=8)
    assert cfg.lengths_at(2) == (12,) and cfg.lengths_at(3) == (8, 16, 24) and cfg.length_at(3) == 24
    seen = []
    real = tt.task_batch
    monkeypatch.setattr(tt, "task_batch", lambda task, n, L, gen, options: (seen.append(L),
                                                                           real(task, n, L, gen, options))[1])
    train(cfg, progress=False)
    assert seen[:3] == [12] * 3 and set(seen[3:]) == {8, 16, 24}
    lm = load_checkpoint(tmp_path / "model.safetensors")
    assert sorted(lm.task["lengths_seen"]) == [8, 12, 16, 24] and lm.task["train_len"] == 24
    assert lm.task["train_lengths"] == [8, 16, 24]
    for bad in ("0:8|x", "0:8|0", "0:8:9", "2:8"):
        with pytest.raises(ValueError, match="schedule"):
            TrainConfig(schedule=bad)


def test_lr_schedule_sets_the_optimizer_lr_from_its_steps(tmp_path):
    cfg = TrainConfig(lr=1e-3, lr_schedule="2:1e-4,5:3e-5")
    assert [cfg.lr_at(s) for s in (0, 1, 2, 4, 5, 99)] == [1e-3, 1e-3, 1e-4, 1e-4, 3e-5, 3e-5]

    def moved(lr_schedule):             # Adam's first step moves each weight by ~lr whatever the gradient
        out = tmp_path / (lr_schedule or "const")
        kw = dict(task="mqar", task_options='{"n_pairs": 2, "vocab": 16}', seed=0, steps=1, batch=2, train_len=12,
                  eval_every=1, val="12:2", stop_after=100, threads=1, d_model=16, out=str(out))
        torch.manual_seed(0)
        before = MambaLM(TrainConfig(**kw).model_config()).state_dict()
        train(TrainConfig(**kw, lr_schedule=lr_schedule), progress=False)
        after = load_checkpoint(out / "model.safetensors").state_dict()
        return max((after[k] - before[k]).abs().max().item() for k in before)

    assert moved("") > 1e-4 and moved("0:1e-8") < 1e-6
    for bad in ("soon:1e-3", "5:1e-3,2:1e-4", "0:2"):
        with pytest.raises(ValueError, match="lr_schedule"):
            TrainConfig(lr_schedule=bad)


def test_bad_training_flags_are_named():
    with pytest.raises(ValueError, match="unknown task 'copy'"):
        TrainConfig(task="copy")
    with pytest.raises(ValueError, match="ssm_cfg must be a JSON object"):
        TrainConfig(ssm_cfg="[1]")
