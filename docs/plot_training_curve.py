"""Draw a training run's curve (train loss and validation accuracy per length) from its log.jsonl.

    pip install matplotlib        # a dev-only dependency, not in requirements.txt
    python docs/plot_training_curve.py runs/NAME/log.jsonl checkpoints/induction-2layer-curve.png \
        --title "seed 0, L=256"

A run resumed with other flags (e.g. a second phase) appends to the same log.jsonl, so one log is
one curve; --mark-step draws a line where the second phase began.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_log(path: Path) -> tuple[list, list]:
    """(train events, val events), one per step: a resumed run re-logs the steps after its last
    save, and the later line (the run that continued) wins."""
    train, val = {}, {}
    for line in path.read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "train":
            train[e["step"]] = e
        elif e["event"] == "val":
            val[e["step"]] = e
    return [train[k] for k in sorted(train)], [val[k] for k in sorted(val)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("log", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--title", default="")
    p.add_argument("--mark-step", type=int, action="append", default=[],
                   help="draw a vertical line at this step (e.g. where a second phase began)")
    args = p.parse_args(argv)
    train, val = read_log(args.log)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, constrained_layout=True)
    ax1.plot([e["step"] for e in train], [e["loss"] for e in train], lw=1.2, color="k")
    ax1.axhline(2.7726, ls=":", color="grey", lw=1)
    ax1.text(0, 3.0, "ln 16 (chance)", color="grey", fontsize=8, va="bottom")
    ax1.set_ylabel("train loss (EMA, last position)")
    ax1.set_yscale("log")
    ax1.set_ylim(1e-3, 6)
    lengths = sorted({int(k) for e in val for k in e["acc"]})
    for L in lengths:
        pts = [(e["step"], 100 * e["acc"][str(L)]) for e in val if str(L) in e["acc"]]
        ax2.plot(*zip(*pts), marker="o", ms=3, lw=1.2, label=f"L = {L}")
    ax2.set_ylabel("validation accuracy (%)")
    ax2.set_xlabel("step (batch 8)")
    ax2.set_ylim(-2, 102)
    ax2.legend(fontsize=8, loc="center left")
    for s in args.mark_step:
        for ax in (ax1, ax2):
            ax.axvline(s, color="tab:red", ls="--", lw=1)
        ax2.text(s, 50, " phase 2", color="tab:red", fontsize=8)
    if args.title:
        fig.suptitle(args.title, fontsize=10)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
