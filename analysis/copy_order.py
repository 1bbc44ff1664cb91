"""Which memory each query reads, and (selective copying) what sets the order of the copy.

Three measurements, all on the same draws (training.eval.query_breakdown: accuracy per query index
and whether a miss gave an earlier or a later query's answer):
- per query at the report length;
- the lead sweep: the data fill the last W = length/4 steps of the context, the same tokens at the
  same distances from the markers in every row (tasks.selective_copy's `lead`), after m·W steps of
  noise, m in LEADS. Noise carries no data: a model whose copy order counted data tokens alone
  would score every row alike;
- where the lead is kept: the noise before the window is one token repeated, so a row differs from
  another only by the state each layer carries into the window. The window is run again from the
  states left by one lead with one layer's state (or a few of its units') taken from another lead
  (model.run's initial_states): the layer whose state moves the misses is where the time is kept.
"""
from __future__ import annotations

import numpy as np
import torch

from model.records import LayerState
from model.run import STREAM_CHUNK, run
from tasks.selective_copy import K_DEFAULT, NOISE
from training.eval import query_breakdown

LEADS = (0, 1, 2, 3, 5, 7)   # noise before the data, in multiples of the window W = length / 4
ORDER_BATCH = 16             # sequences per batch in every row: the same draws whatever the length
UNITS = (1, 4, 16)           # units of the time-keeping layer moved at once, ranked by their change


def breakdown(lm, task, length: int, n: int, seed: int, options: dict, forward=None) -> dict:
    b = query_breakdown(lm, length, n, seed, task, options, ORDER_BATCH * min(length, STREAM_CHUNK), forward)
    return {"length": length, "samples": n, "correct": b.correct.tolist(), "earlier": int(b.earlier.sum()),
            "later": int(b.later.sum()), "both": int(b.both.sum()), "unstored": b.unstored}


def lead_states(lm, lead: int) -> list:
    """Every layer's state after `lead` selective-copying noise tokens (batch 1): [LayerState] * n_layer."""
    noise = torch.full((1, lead), NOISE, dtype=torch.long)
    with torch.no_grad():
        return run(lm, noise.to(lm.device), num_last_tokens=1).final_states


def from_states(lm, states: list):
    """A forward for query_breakdown: lm continuing from per-layer states [LayerState] * n_layer
    (batch 1, repeated over the batch), scoring the last K steps only (selective copying's markers)."""

    @torch.no_grad()
    def forward(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:   # [B, L], [B, K] -> [B, K, V]
        B, L = tokens.shape
        K = positions.shape[1]
        if not bool((positions == torch.arange(L - K, L, device=positions.device)).all()):
            raise ValueError("from_states scores the last K steps only")
        states_b = [s.repeat(B) for s in states]
        logits = run(lm, tokens, initial_states=states_b, num_last_tokens=K).logits      # [B, K, V']
        return logits[..., :lm.config.vocab_size]

    return forward


def _mixed(base: list, other: list, layer: int, units=None) -> list:
    """base's states with layer `layer`'s SSM state (or only `units` of it) from `other`."""
    ssm = other[layer].ssm                      # LayerStates are immutable: shared, not copied
    if units is not None:
        ssm = base[layer].ssm.clone()
        ssm[:, units] = other[layer].ssm[:, units]
    out = list(base)
    out[layer] = LayerState(base[layer].conv, ssm)
    return out


def where_time_is_kept(lm, task, W: int, n: int, seed: int, options: dict, short: int, long: int) -> dict:
    """The window run from the states of lead `short` and of lead `long`, then with each layer's state
    swapped between them, then with the `UNITS` units of the layer whose swap moves the most answers."""
    S, L = lead_states(lm, short), lead_states(lm, long)

    def row(states, label: str) -> dict:
        return {"label": label, **breakdown(lm, task, W, n, seed, options, from_states(lm, states))}

    rows = [row(S, f"lead {short}"), row(L, f"lead {long}")]
    for i in range(lm.config.n_layer):
        rows.append(row(_mixed(S, L, i), f"lead {short}, layer {i + 1}'s state from lead {long}"))
        rows.append(row(_mixed(L, S, i), f"lead {long}, layer {i + 1}'s state from lead {short}"))
    moved = [sum(abs(a - b) for a, b in zip(r["correct"], rows[0]["correct"])) for r in rows[2::2]]
    keeper = int(np.argmax(moved))
    change = (L[keeper].ssm[0] - S[keeper].ssm[0]).reshape(S[keeper].ssm.shape[1], -1).norm(dim=-1)   # [U]
    ranked = torch.argsort(change, descending=True)
    for k in UNITS:
        if k <= len(ranked):
            units = ranked[:k]
            rows.append(row(_mixed(S, L, keeper, units), f"lead {short}, layer {keeper + 1}'s top {k} from lead {long}"))
    return {"short": short, "long": long, "layer": keeper, "n_layer": lm.config.n_layer, "ranked_units": ranked[:max(UNITS)].tolist(),
            "unit_change": change[ranked[:max(UNITS)]].tolist(), "rows": rows}


def copy_order(lm, task, length: int, n: int, seed: int, options: dict) -> dict:
    """Per query at `length`; for selective copying also the lead sweep and where the lead is kept."""
    out = {"per_query": breakdown(lm, task, length, n, seed, options)}
    if task.name != "selective_copying":
        return out
    W = length // 4
    k = int(options.get("k", K_DEFAULT))
    if W < k:
        out["lead_skipped"] = f"the window L/4 = {W} cannot hold {k} data tokens; run the report at L >= {4 * k}"
        return out
    out["window"] = W
    out["lead"] = [{"lead": m * W, **breakdown(lm, task, W + m * W, n, seed, {**options, "lead": m * W})}
                   for m in LEADS]
    out["kept"] = where_time_is_kept(lm, task, W, n, seed, options, W, LEADS[-1] * W)
    return out


def _acc(r: dict) -> np.ndarray:
    return np.array(r["correct"]) / r["samples"]


def _misses(c: dict) -> str:
    return (f"{c['earlier']} gave an earlier query's answer, {c['later']} a later one's, {c['both']} one on each "
            f"side at the same distance, {c['unstored']} no answer of the sequence")


def _row(r: dict, first: str) -> str:
    a = _acc(r)
    worst = int(a.argmin())
    return (f"| {first} | {a.mean():.1%} | {len(a) * r['samples'] - sum(r['correct'])} | {r['earlier']} | "
            f"{r['later']} | #{worst + 1} ({a[worst]:.0%}) |")


def render(o: dict, task: str) -> list:
    c = o["per_query"]
    K = len(c["correct"])
    who = "marker" if task == "selective_copying" else "query"
    lines = ["## Which memory each query reads", "",
             f"Accuracy at the j-th {who} (time order), {c['samples']} sequences at L = {c['length']}; misses: "
             f"{_misses(c)} (`python -m training.eval --per-query`):", "",
             f"| {who} | " + " | ".join(str(j + 1) for j in range(K)) + " |",
             "|---|" + "---:|" * K, "| accuracy | " + " | ".join(f"{x:.0%}" for x in _acc(c)) + " |", ""]
    if "lead_skipped" in o:
        return lines + [f"No lead sweep: {o['lead_skipped']}.", ""]
    if "lead" not in o:
        return lines
    W, rows = o["window"], o["lead"]
    head = "| accuracy | misses | earlier token | later token | worst marker |"
    lines += ["## Time before the data", "",
              f"The {K} data tokens fill the last W = {W} steps of the context: in every row the same tokens at "
              f"the same distances from the markers ({rows[0]['samples']} sequences); only the noise before them, "
              "the lead, changes. A miss that gives an earlier data token lags; one that gives a later token "
              "reads ahead.", "", "| lead | n_ctx " + head, "|---:|---:|---:|---:|---:|---:|---|"]
    lines += [_row(r, f"{r['lead']} | {r['length']}") for r in rows]
    ahead = [r["lead"] for r in rows if r["later"] > r["earlier"]]
    lag = [r["lead"] for r in rows if r["earlier"] > r["later"]]
    best = max(rows, key=lambda r: sum(r["correct"]))
    lines += ["", f"Most right at a lead of {best['lead']} (n_ctx {best['length']}). Misses read ahead more than "
              f"they lag at leads {ahead or 'none'}; they lag more at leads {lag or 'none'}.", ""]
    k = o["kept"]
    units = ", ".join(f"{u} ({c:.2g})" for u, c in zip(k["ranked_units"], k["unit_change"]))
    lines += ["### Where the lead is kept", "",
              f"The lead is one token repeated, so two rows differ only in the state each layer carries into the "
              f"window. The window run again from the states left by lead {k['short']} or {k['long']}, with one "
              f"layer's SSM state (or some of its units') taken from the other lead:", "",
              "| run " + head, "|---|---:|---:|---:|---:|---|"]
    lines += [_row(r, r["label"]) for r in k["rows"]]
    short, long = (_acc(r).mean() for r in k["rows"][:2])
    swaps = ", ".join(f"{_acc(k['rows'][2 + 2 * i]).mean():.1%} with layer {i + 1}'s" for i in range(k["n_layer"]))
    lines += ["", f"From lead {k['short']}'s states the window scores {short:.1%}, from lead {k['long']}'s "
              f"{long:.1%}; from lead {k['short']}'s, {swaps} taken from lead {k['long']}. Layer {k['layer'] + 1}'s "
              f"units ranked by how far the lead moves their state (norm of the change from lead {k['short']} to "
              f"{k['long']}): {units}.", ""]
    return lines
