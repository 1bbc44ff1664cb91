"""MQAR capacity, measured: accuracy as a function of the number of key-value pairs D for models
that differ only in their state size N (d_state), at one sequence length.

    python -m training.capacity                                # the defaults below (~75 min on 1 quiet core)
    python -m training.capacity --d-states 4,16 --steps 300    # a quick look
    python -m viz.figures docs/capacity/figures.json           # the plot (make capacity runs both)

One model per N: 2 layers, d_model 64 (Mamba-1), trained on a mixture of the D values in --pairs
(one D per batch, drawn uniformly; Zoology trains on several settings at once), the same seed,
data and steps for each N. The mixture grows over the first half of training, one D at a time
from the two smallest (the large-D batches alone gave no signal: a 2,000-step model on the whole
mixture from step 0 recalled 51% at D = 2); the second half trains on all of them. Each model is
then scored on fresh sequences at every D. Writes docs/capacity/results.json, figures.json (for
viz.figures) and docs/capacity.md after every model, merged with the rows of other sizes already
there under the same settings (a sweep cut short keeps what it finished; two processes may
split the sizes). --score-only re-scores the models already trained in --runs.
--warm-from FILE (`make capacity-warm`): every N starts from one trained MQAR model instead, its state
resized (training/widen.py's resize_state) and trained --steps more on the whole mixture at the file's
vocabulary, width and length: from scratch, which sizes leave MQAR's plateau within the budget decides
the curve (docs/capacity.md); from a warm start every size recalls, and the sizes compare.
A Mamba-1 layer's state is d_inner x N numbers, and the recall reads it through C·B over the N
state dimensions: if recall breaks where the pairs outgrow N, the break moves right as N doubles.

Vocabulary: V = 64 by default (keys 1..31, values 32..63), not Zoology's 8192. Measured here: at
V = 8192 a d_state-16 model needs ~7,000 steps (~2 h on one core) before recall starts, because
each of 4,096 value embeddings is seen a few times per hundred steps; at V = 512 it was still at
chance (loss ln 256) after 400 steps; at V = 64 it recalls within 1,500 steps. A small vocabulary
measures the state's capacity rather than how fast 8,192 embeddings are learned.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from model import load_checkpoint, save_checkpoint

from tasks.mqar import check_vocab

from .eval import count_correct
from .train import VAL_SEED, TrainConfig, train
from .widen import resize_state

ROOT = Path(__file__).resolve().parent.parent


def ints(text: str, flag: str) -> list:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag} must be comma-separated whole numbers, got {text!r}") from None
    if not out or min(out) < 1:
        raise SystemExit(f"{flag} needs at least one number >= 1, got {text!r}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--d-states", default="4,8,16,32", help="state sizes N, one model each")
    ap.add_argument("--pairs", default="2,4,8,16,24", help="D values: trained on as a mixture, scored one by one")
    ap.add_argument("--length", type=int, default=80, help="sequence length L (needs 3*max(D) <= L)")
    ap.add_argument("--vocab", type=int, default=64, help="MQAR vocabulary V (keys 1..V/2-1, values V/2..V-1)")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2500, help="training steps per model")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--samples", type=int, default=64, help="sequences scored per D")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/capacity", help="where the models train (one folder per N)")
    ap.add_argument("--score-only", action="store_true", help="score the models already in --runs; no training")
    ap.add_argument("--warm-from", default="",
                    help="a trained MQAR checkpoint every model starts from, its state resized to each N "
                         "(training/widen.py's resize_state); --steps then counts the steps after it, on the "
                         "whole mixture; vocab, d_model and the length default to the file's")
    ap.add_argument("--out", default=str(ROOT / "docs" / "capacity"), help="results.json and figures.json here")
    a = ap.parse_args(argv)
    states, pairs = ints(a.d_states, "--d-states"), ints(a.pairs, "--pairs")
    warm = warm_source(a, sys.argv[1:] if argv is None else argv)
    if 3 * max(pairs) > a.length:
        raise SystemExit(f"--pairs {max(pairs)} does not fit in --length {a.length} (MQAR needs 3*D <= L)")
    try:
        check_vocab(a.vocab)
    except ValueError as e:
        raise SystemExit(f"--vocab: {e}") from None
    if max(pairs) > a.vocab // 2 - 1:
        raise SystemExit(f"--pairs {max(pairs)} needs that many distinct keys; --vocab {a.vocab} has {a.vocab // 2 - 1}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(a).items() if k not in ("runs", "out", "d_states", "threads", "score_only", "warm_from")}
    if warm:
        settings["warm_from"] = {"file": a.warm_from, "sha256": warm.checkpoint_sha256,
                                 "d_state": warm.config.d_state, "steps": int(warm.task.get("steps", 0))}
    rows = []
    start = settings["warm_from"]["steps"] if warm else 0        # the step count continues from the file's
    for N in states:
        cfg = TrainConfig(task="mqar", task_options=json.dumps({"n_pairs": pairs, "vocab": a.vocab}), seed=a.seed,
                          options_schedule="" if warm else json.dumps(growing_mixture(pairs, a.steps)),
                          steps=start + a.steps,
                          batch=a.batch, lr=a.lr, train_len=a.length, eval_every=a.steps, val=f"{a.length}:8",
                          stop_after=10 ** 9, out=str(Path(a.runs) / f"N{N}"), threads=a.threads,
                          ssm_cfg=json.dumps({"d_state": N}), d_model=a.d_model, n_layer=2)
        t0, model = time.time(), Path(cfg.out) / "model.safetensors"
        if a.score_only:
            if not model.exists():
                raise SystemExit(f"--score-only: no trained model at {model}")
        else:
            if warm:
                Path(cfg.out).mkdir(parents=True, exist_ok=True)
                cfg.init_from = str(Path(cfg.out) / "start.safetensors")
                save_checkpoint(resize_state(warm, N, seed=a.seed), cfg.init_from, task=warm.task)
            train(replace(cfg), progress=False)
        lm = load_checkpoint(model).eval()
        if a.score_only:
            before = float(warm.task.get("wall_time_s") or 0) if warm else 0.0       # the source's own training
            minutes = (float((lm.task or {}).get("wall_time_s") or 0) - before) / 60
        else:
            minutes = (time.time() - t0) / 60
        state = lm.config.d_inner * N
        added = ({"added_dims_read": added_dims_read(lm, warm.config.d_state)}
                 if warm and N > warm.config.d_state else {})
        for D in pairs:
            right, total = count_correct(lm, a.length, a.samples, VAL_SEED + D, task=cfg.the_task,
                                         options={"n_pairs": D, "vocab": a.vocab})
            rows.append({"d_state": N, "state_per_layer": state, "pairs": D, "accuracy": right / total,
                         "queries": total, "train_minutes": round(minutes, 1), **added})
            print(f"N={N:3d} (state {state} per layer)  D={D:3d}: {right / total:.3f} of {total} queries")
        write(out, settings, rows)


def warm_source(a, argv: list):
    """--warm-from's model (or None), its vocab, width and length taken for the sweep's unless given."""
    if not a.warm_from:
        return None
    try:
        lm = load_checkpoint(a.warm_from)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--warm-from: {e}") from None
    task = lm.task or {}
    if task.get("name") != "mqar" or lm.config.layer != "Mamba1":
        raise SystemExit(f"--warm-from {a.warm_from}: needs a Mamba-1 MQAR model, this is "
                         f"{lm.config.layer} on {task.get('name')!r}")
    given = {f.split("=")[0] for f in argv if f.startswith("--")}
    for flag, value in (("--vocab", lm.config.vocab_size), ("--d-model", lm.config.d_model),
                        ("--length", int(task.get("train_len", a.length)))):
        if flag not in given:
            setattr(a, flag[2:].replace("-", "_"), value)
        elif getattr(a, flag[2:].replace("-", "_")) != value and flag != "--length":
            raise SystemExit(f"{flag} {getattr(a, flag[2:].replace('-', '_'))} differs from --warm-from's {value}")
    return lm


def added_dims_read(lm, n0: int) -> float:
    """How much a warm-started model reads the state dimensions added past the source's n0: the norm of
    their C rows of x_proj over the norm of the first n0 rows, the largest over layers (they start at 0:
    until training has grown them, a larger N cannot show a larger capacity)."""
    r, N = lm.config.dt_rank, lm.config.d_state
    out = []
    for layer in lm.backbone.layers:
        C = layer.mixer.x_proj.weight.detach()[r + N:]                                 # [N, E]
        out.append(float(C[n0:].norm() / C[:n0].norm()))
    return round(max(out), 3)


def growing_mixture(pairs: list, steps: int) -> dict:
    """The --options-schedule of the sweep: {step: {"n_pairs": [...]}}, the two smallest D at step 0,
    then one more D at even intervals until half the steps, the whole mixture after."""
    ds = sorted(pairs)
    first = min(2, len(ds))
    adds = len(ds) - first
    return {str(i * (steps // 2) // max(adds, 1)): {"n_pairs": ds[:first + i]} for i in range(adds + 1)}


def merged(out: Path, settings: dict, rows: list) -> list:
    """rows plus the rows of other state sizes in out/results.json when it was made with the same settings."""
    path = out / "results.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return rows
    if old.get("settings") != settings:
        return rows
    mine = {r["d_state"] for r in rows}
    return sorted([r for r in old.get("rows", []) if r["d_state"] not in mine] + rows,
                  key=lambda r: (r["d_state"], r["pairs"]))


def write(out: Path, settings: dict, rows: list) -> None:
    rows = merged(out, settings, rows)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    os.replace(tmp, out / "results.json")
    figure = {"capacity": {"chart": "capacity_chart", "file": "capacity.png", "kwargs": {
        "pairs": [r["pairs"] for r in rows], "accuracy": [r["accuracy"] for r in rows],
        "size": [f"d_state {r['d_state']} ({r['state_per_layer']} per layer)" for r in rows],
        "title": f"MQAR at L={settings['length']}, V={settings['vocab']}: accuracy vs pairs, 2-layer Mamba "
                 f"d_model {settings['d_model']}, {settings['steps']} steps"}}}
    (out / "figures.json").write_text(json.dumps(figure) + "\n")
    (out.parent / f"{out.name}.md").write_text(report(settings, rows, out.name))
    print(f"wrote {out}/results.json, figures.json and {out.parent}/{out.name}.md")


def report(settings: dict, rows: list, name: str = "capacity") -> str:
    states = sorted({r["d_state"] for r in rows})
    pairs = sorted({r["pairs"] for r in rows})
    acc = {(r["d_state"], r["pairs"]): r["accuracy"] for r in rows}
    V = settings.get("vocab", 8192)
    warm = settings.get("warm_from")
    shown = {k: v for k, v in settings.items() if k != "warm_from"}
    flags = ", ".join(f"{k}={v}" for k, v in shown.items())
    if warm:
        how = (f"Every model starts from `{warm['file']}` (d_state {warm['d_state']}, {warm['steps']:,} steps; "
               f"sha256 `{warm['sha256'][:8]}…`) with its state resized to N (training/widen.py's "
               "`resize_state`: larger N computes the same function, the new dimensions unread at first; "
               "smaller N keeps the first N dimensions and must re-learn its recall with them), then trains "
               f"{settings['steps']:,} steps on the mixture of the D values below (one D per batch), and is "
               "scored per D on fresh sequences. A warm start takes MQAR's plateau (thousands of steps before "
               "recall begins, at random per seed) out of the comparison: every size starts from a model "
               "that recalls.")
        cmd = f"`python -m training.capacity --warm-from {warm['file']}` ({flags})"
    else:
        how = (f"V = {V} (keys 1..{V // 2 - 1}, values {V // 2}..{V - 1}; why not Zoology's 8192: "
               "training/capacity.py's docstring); every model trained on the mixture of D values below, then "
               "scored per D on fresh sequences.")
        cmd = f"`python -m training.capacity` ({flags})"
    lines = ["# MQAR capacity: accuracy vs key-value pairs, by state size", "",
             f"Generated by {cmd}; the plot by `python -m viz.figures docs/{name}/figures.json`. " + how, "",
             f"![capacity]({name}/capacity.png)", "",
             f"Chance is 1/{V // 2} (one of the values).", "",
             "| d_state N | state per layer | " + " | ".join(f"D={d}" for d in pairs) +
             " | pairs recalled (most) | training (min) |",
             "|---|---|" + "---|" * len(pairs) + "---|---|"]
    for N in states:
        first = next(r for r in rows if r["d_state"] == N)
        most = max(pairs, key=lambda d: d * acc[N, d])
        lines.append(f"| {N} | {first['state_per_layer']} | " + " | ".join(f"{acc[N, d]:.1%}" for d in pairs) +
                     f" | {most * acc[N, most]:.1f} (D={most}) | {first['train_minutes']} |")
    breaks = []
    for N in states:
        ok = [d for d in pairs if acc[N, d] >= 0.9]
        breaks.append(f"N={N}: {'none' if not ok else 'up to D=' + str(max(ok))} at >= 90%")
    added = {r["d_state"]: r["added_dims_read"] for r in rows if "added_dims_read" in r}
    if added:
        n0 = settings["warm_from"]["d_state"]
        lines += ["", "How much the added state dimensions are read after training (their C rows' norm over the "
                  f"first {n0}'s, the most over layers; 0 at the start): "
                  + "; ".join(f"N={N}: {v:.2f}" for N, v in sorted(added.items()))
                  + ". Well under 1 means training has not yet used them, so that row cannot show a larger "
                  "capacity than the source's."]
    lines += ["", "Pairs recalled = D × accuracy, the expected number of keys answered per sequence; its most "
              "over D is a capacity in pairs (past it, more pairs only crowd the state).", "",
              "Largest D recalled at >= 90%: " + "; ".join(breaks) + ".", ""]
    half = []
    for N in states:
        ok = [d for d in pairs if acc[N, d] >= 0.5]
        half.append(f"N={N}: {'none' if not ok else 'D=' + str(max(ok))}")
    lines += ["Largest D recalled at >= 50%: " + "; ".join(half) + ".", ""]
    stuck = [N for N in states if acc[N, pairs[0]] < 0.9]
    if stuck:     # below 90% at the fewest pairs: the model has not learned recall at all
        lines += [f"Not learned: d_state {', '.join(map(str, stuck))} recall{'s' if len(stuck) == 1 else ''} "
                  f"under 90% even at D = {pairs[0]}, where any state size has room; such a curve measures "
                  "whether training left MQAR's plateau in the steps given, not the state's capacity.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
