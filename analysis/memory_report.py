"""The memory lab's report on a many-memory checkpoint (selective copying, MQAR): how well it recalls,
which layer and units hold each memory, how much of a write is left when it is recalled, Δ at the
writes vs the filler, the one-write clamp, and which memory each query reads (accuracy per query; for
selective copying also with the data at the same distances from the markers after more or less
noise), all measured.

    python -m analysis.memory_report checkpoints/selective-copy-2layer.safetensors
    python -m viz.figures docs/memory/selective_copying/figures.json       (make memory runs both)

Writes docs/memory/<task>.md and docs/memory/<task>/figures.json (drawn by viz.figures).
"""
from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from model import load_checkpoint, run
from tasks import task_for
from tasks.measures import delta_ratio, windows
from training.eval import count_correct

from .copy_order import copy_order, render as render_order
from .memory_lab import clamp_matrix, memory_map, shared_layout_batch

ROOT = Path(__file__).resolve().parent.parent
TOP = 8                  # holders compared between memories: each memory's top-8 units
ORDER_SEQS = 128         # sequences per row of the copy-order tables (16 markers each)


def _options(lm) -> dict:
    return dict(lm.task.get("options") or {})


def holder_overlap(m, layer: int, top: int = TOP) -> float:
    """Mean Jaccard overlap of the memories' top-`top` holder sets (1: all in the same units)."""
    sets = [set(m.top_holders(layer, k, top)) for k in range(len(m.writes))]
    pairs = list(combinations(sets, 2))
    return float(np.mean([len(a & b) / len(a | b) for a, b in pairs])) if pairs else float("nan")


def write_ratios(lm, task, tokens: np.ndarray, layer: int) -> np.ndarray:
    """[K] per write: the largest Δ ratio over the layer's units (tasks.measures' definition, its
    write window vs the filler after it), over a batch sharing one layout. tokens [B, L]."""
    res = run(lm, torch.from_numpy(tokens), include=("delta",), num_last_tokens=1)
    delta = res.records[layer]["delta"].double().cpu().numpy()            # [B, L, U]
    pos = task.positions(tokens[0])
    out = []
    for i in range(len(pos.writes)):
        win = windows(pos, tokens.shape[1], lm.config.d_conv, write=i)
        out.append(np.nan if win is None else float(delta_ratio(delta, win).ratio.max()))
    return np.array(out)


def study(lm, length: int, n_seqs: int = 32, seed: int = 0, options: dict | None = None,
          order_seqs: int = ORDER_SEQS) -> dict:
    task = task_for(lm.task)
    options = _options(lm) if options is None else options
    right, total = count_correct(lm, length, n_seqs, seed + 1, task=task, options=options)
    example = task.batch(1, length, seed=seed + 2, **options).tokens[0]
    m = memory_map(lm, task, example)
    shared = shared_layout_batch(task, n_seqs, length, seed=seed + 3, **options)
    layers = []
    for i in range(lm.config.n_layer):
        kept = m.kept_at_recall(i)
        clamps = {w: clamp_matrix(lm, task, shared, layers=[i], window=w) for w in (1, lm.config.d_conv)}
        layers.append({
            "layer": i, "kept_median": float(np.median(kept)), "kept_min": float(kept.min()),
            "overlap": holder_overlap(m, i), "share_top": float(np.median(m.share[i].max(1))),
            "ratio_median": float(np.nanmedian(write_ratios(lm, task, shared, i))),
            "clamp": {str(w): {"baseline": c.baseline, "diagonal": c.diagonal, "off_diagonal": c.off_diagonal,
                               "acc": c.acc.tolist()} for w, c in clamps.items()}})
    mem = min(range(len(layers)), key=lambda i: layers[i]["clamp"][str(lm.config.d_conv)]["diagonal"])
    return {"task": task.name, "options": options, "length": length, "n_seqs": n_seqs,
            "accuracy": right / total, "queries": total, "writes": m.writes.tolist(), "recall": m.recall.tolist(),
            "example": example.tolist(), "unit": m.unit, "memory_layer": mem, "layers": layers,
            "retained": m.retained[mem].tolist(), "times": m.times.tolist(), "holders": m.holders[mem].tolist(),
            "top_holders": [m.top_holders(mem, k, 3) for k in range(len(m.writes))],
            "order": copy_order(lm, task, length, order_seqs, seed + 4, options)}


def verdict(s: dict, d_conv: int) -> str:
    L = s["layers"][s["memory_layer"]]
    c = L["clamp"][str(d_conv)]
    others = [x for x in s["layers"] if x["layer"] != s["memory_layer"]]
    other = "; ".join(f"in layer {x['layer'] + 1} the same clamp leaves it at {x['clamp'][str(d_conv)]['diagonal']:.0%}"
                      for x in others)
    several = len(s["writes"]) > 1
    kept = (f"In that layer a write keeps {L['kept_median']:.0%} of its peak norm until it is recalled (median over "
            f"memories; the least kept: {L['kept_min']:.0%})")
    if not several:
        return (f"Clamping Δ to 0 over the write window [w, w+{d_conv}) in layer {s['memory_layer'] + 1} drops the "
                f"recall to {c['diagonal']:.0%} (no clamp: {c['baseline']:.0%}){'; ' + other if other else ''}. "
                f"{kept}; at the recall the memory's term in its top holder is {L['share_top']:.2f}× that unit's "
                f"state norm (above 1: the rest of the state partly cancels it).")
    return (f"Clamping Δ to 0 over one write's window [w, w+{d_conv}) in layer {s['memory_layer'] + 1} drops that "
            f"memory's recall to {c['diagonal']:.0%} while the other memories stay at {c['off_diagonal']:.0%} "
            f"(no clamp: {c['baseline']:.0%}){'; ' + other if other else ''}. {kept}; the memories' top-{TOP} "
            f"{s['unit']}s overlap by {L['overlap']:.2f} (Jaccard), and at the recall the top holder's term is "
            f"{L['share_top']:.2f}× that unit's state norm (median): "
            + ("each memory has units of its own." if L["overlap"] < 0.3 else "memories share units (superposed)."))


def render(s: dict, label: str, d_conv: int) -> str:
    lines = [f"# Memory lab: {s['task']} ({label})", "",
             f"Generated by `python -m analysis.memory_report` at L = {s['length']} (options {json.dumps(s['options'])}), "
             f"{s['n_seqs']} sequences per measurement. Accuracy: **{s['accuracy']:.1%}** of {s['queries']} queries.", "",
             "## The answer", "", verdict(s, d_conv), "",
             "## Per layer", "",
             f"| layer | write kept at recall (median / min) | top-{TOP} holder overlap | top holder's share | "
             f"max Δ ratio per write (median) | clamp 1 step: own / others / none | clamp {d_conv} steps: own / others / none |",
             "|---|---|---|---|---|---|---|"]
    for x in s["layers"]:
        c1, cw = x["clamp"]["1"], x["clamp"][str(d_conv)]
        lines.append(f"| {x['layer'] + 1} | {x['kept_median']:.1%} / {x['kept_min']:.1%} | {x['overlap']:.2f} | "
                     f"{x['share_top']:.0%} | {x['ratio_median']:.3g} | {c1['diagonal']:.0%} / {c1['off_diagonal']:.0%} / "
                     f"{c1['baseline']:.0%} | {cw['diagonal']:.0%} / {cw['off_diagonal']:.0%} / {cw['baseline']:.0%} |")
    lines += ["", "Write kept at recall: the norm of the write's exact term in the layer's state at its recall over "
              "its peak during its write window [w, w + d_conv) (analysis/memory_lab.py; top holder's share: that term's norm over "
              "the unit's whole state norm there, median over memories). Clamp: Δ = 0 in every unit of the layer over "
              "[w, w + n) for one write at a time, every query scored; own = that memory's queries, others = the rest. "
              "A window longer than the gap between two writes also covers the next write's first steps (MQAR's "
              "pairs are 2 steps apart): that shows as a second diagonal in the clamp chart.",
              "", f"![retention]({s['task']}/retention.png)", "", f"![holders]({s['task']}/holders.png)", "",
              f"![clamp]({s['task']}/clamp.png)", ""]
    if "order" in s:
        lines += render_order(s["order"], s["task"])
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a selective-copying or MQAR checkpoint (ours, with task metadata)")
    ap.add_argument("--length", type=int, default=0, help="L (selective copying: n_ctx); default: the training length")
    ap.add_argument("--seqs", type=int, default=32, help="sequences per measurement")
    ap.add_argument("--order-seqs", type=int, default=ORDER_SEQS,
                    help="sequences per row of the copy-order tables (which memory each query reads)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--options", default="", help='task options as JSON (default: the checkpoint\'s), e.g. \'{"n_pairs": 16}\'')
    ap.add_argument("--out", default=str(ROOT / "docs" / "memory"))
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    lm = load_checkpoint(a.checkpoint).eval()
    if not lm.task or lm.task.get("name") not in ("selective_copying", "mqar", "induction_heads"):
        raise SystemExit(f"{a.checkpoint}: not a task checkpoint (its task: {lm.task.get('name') if lm.task else None})")
    try:
        options = json.loads(a.options) if a.options else None
    except json.JSONDecodeError as e:
        raise SystemExit(f"--options must be JSON, got {a.options!r} ({e})") from None
    if options is not None and not isinstance(options, dict):
        raise SystemExit(f"--options must be a JSON object, got {a.options!r}")
    if a.seqs < 1 or a.order_seqs < 1:
        raise SystemExit(f"--seqs and --order-seqs must be >= 1, got {a.seqs} and {a.order_seqs}")
    s = study(lm, a.length or int(lm.task.get("train_len", 256)), a.seqs, a.seed, options, a.order_seqs)
    out = Path(a.out)
    (out / s["task"]).mkdir(parents=True, exist_ok=True)
    task = task_for(lm.task)
    labels = [f"#{i + 1} t={w}: {task.labels[s['example'][w]]}" for i, w in enumerate(s["writes"])]
    mem, d_conv = s["memory_layer"], lm.config.d_conv
    figures = {
        "retention": {"chart": "retention_chart", "file": "retention.png", "kwargs": {
            "retained": s["retained"], "times": s["times"], "labels": labels, "recall": s["recall"],
            "title": f"Layer {mem + 1}: each write's part of the state"}},
        "holders": {"chart": "holders_chart", "file": "holders.png", "kwargs": {
            "holders": s["holders"], "labels": labels, "unit": s["unit"],
            "title": f"Layer {mem + 1}: which {s['unit']}s hold each memory at its recall"}},
        "clamp": {"chart": "clamp_chart", "file": "clamp.png", "kwargs": {
            "acc": s["layers"][mem]["clamp"][str(d_conv)]["acc"], "labels": [f"#{i + 1}" for i in range(len(labels))],
            "title": f"Layer {mem + 1}: clamp one write's Δ over {d_conv} steps, score every memory"}}}
    (out / s["task"] / "figures.json").write_text(json.dumps(figures) + "\n")
    (out / s["task"] / "study.json").write_text(json.dumps(s) + "\n")
    (out / f"{s['task']}.md").write_text(render(s, Path(a.checkpoint).name, d_conv))
    print(verdict(s, d_conv))
    print(f"wrote {out / (s['task'] + '.md')} and {out / s['task']}/figures.json")


if __name__ == "__main__":
    main()
