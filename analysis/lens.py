"""The logit lens (nostalgebraist 2020): the residual stream after each layer, read out as if it were
the last one: through the final norm (norm_f) and the head (lm_head). Where along the depth does
the answer appear?

    lens = logit_lens(lm, tokens, k=3)
    lens.top_ids     # [n_layer, L, k] the top-k tokens read after each layer (most likely first); top_p alike
    lens.score       # [n_layer, L] p(answer) read after each layer (p(top-1) without an answer)
    lens.probs       # [n_layer, L, V] the whole read-out, kept only up to FULL_MAX_ELEMS numbers
    lens.first_layer # the first layer (0-based) whose top-1 at the query is the answer, or None

The last layer's read-out is the model's own output (the same residual, norm and head), so
lens.probs[-1] equals the trace's probs. At a 50k vocabulary the whole read-out is what would
limit the lens (n_layer x L x V numbers: 24 layers, 512 tokens = 2.4 GB), so it is computed a
layer and HEAD_ROWS steps at a time and only the top-k and the answer's probability are kept. The query is the sequence's first scored query (tasks'
positions), the answer its target; without one, first_layer is None. step= reads another scored
query. A plain LM (tasks.IdTask; pass task=, a model directory's metadata names none) reads the last
step by default, its answer the model's own top-1 there (the token after the text is not known:
from which layer on is the final answer the top-1?), or at step < L - 1 the actual next token;
`how` says which.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from model import run
from tasks import MAX_LEN, IdTask, Task

from .compare import task_or_next_token

TOP_K = 3
FULL_MAX_ELEMS = 1 << 24      # n_layer x L x V: the whole read-out is kept up to this (64 MiB of fp32)
MAX_WORK = 1 << 30            # n_layer x L x V head outputs computed, at most (~890 tokens at 24 x 50k)
HEAD_ROWS = 1024              # steps read out at a time: one [rows, V] block is the only big temporary


@dataclass
class Lens:
    top_ids: np.ndarray            # [n_layer, L, k] int64, most likely first
    top_p: np.ndarray              # [n_layer, L, k]
    score: np.ndarray              # [n_layer, L] p(target) after each layer (p(top-1) without a target)
    query: Optional[int]           # the scored query's step, or None
    target: Optional[int]          # its expected token, or None
    first_layer: Optional[int]     # first layer (0-based) whose top-1 at the query is the target
    how: str = ""                  # which query and target, in words
    probs: Optional[np.ndarray] = None    # [n_layer, L, V] when n_layer x L x V <= FULL_MAX_ELEMS

    @property
    def n_layer(self) -> int:
        return int(self.top_ids.shape[0])


@torch.no_grad()
def read_out(lm, resid: torch.Tensor) -> torch.Tensor:
    """Residual stream [..., d_model] -> next-token probabilities [..., V] through norm_f and the head
    (mamba.py's forward_chunk: norm_f in its weight's dtype, then lm_head; padded vocabulary cut)."""
    norm = lm.backbone.norm_f
    logits = lm.lm_head(norm(resid.to(norm.weight.dtype)))[..., :lm.config.vocab_size]
    return torch.softmax(logits.float(), dim=-1)


def logit_lens(lm, tokens, k: int = TOP_K, step: Optional[int] = None, task: Optional[Task] = None) -> Lens:
    """The lens of one sequence (see the module docstring). tokens: [L] ints; step: the query to read
    (None: the task's first scored query, a plain LM's last step); task: default task_or_next_token(lm)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"one non-empty sequence of token ids, got shape {tokens.shape}")
    if tokens.size > MAX_LEN:
        raise ValueError(f"the logit lens takes at most {MAX_LEN:,} tokens, got {tokens.size:,}")
    V, n_layer = lm.config.vocab_size, lm.config.n_layer
    if not 1 <= k <= V:
        raise ValueError(f"top-k {k} is out of range 1..{V}")
    if n_layer * tokens.size * V > MAX_WORK:
        raise ValueError(f"the lens of {tokens.size:,} tokens x {n_layer} layers x {V:,} tokens of vocabulary is over "
                         f"{MAX_WORK:,} read-out numbers: choose at most {MAX_WORK // (n_layer * V):,} tokens")
    res = run(lm, torch.from_numpy(tokens)[None].to(lm.device), include=("resid_post",))
    resid = [r["resid_post"][0] for r in res.records]                                 # n_layer x [L, d_model]
    keep = n_layer * tokens.size * V <= FULL_MAX_ELEMS
    last = _layer(lm, resid[-1], k, None, keep)                                        # the answer needs the output's top-1
    query, target, how = _query(task or task_or_next_token(lm), tokens, step, last[0][:, 0])
    layers = [_layer(lm, r, k, target, keep) for r in resid]                           # (ids, p, score, probs) each
    top_ids, top_p = np.stack([a[0] for a in layers]), np.stack([a[1] for a in layers])   # [n_layer, L, k]
    first = None
    if query is not None:
        hits = np.flatnonzero(top_ids[:, query, 0] == target)
        first = int(hits[0]) if hits.size else None
    return Lens(top_ids, top_p, np.stack([a[2] for a in layers]), query, target, first, how,
                np.stack([a[3] for a in layers]) if keep else None)


def _layer(lm, resid: torch.Tensor, k: int, target: Optional[int], keep: bool) -> tuple:
    """One layer's read-out, HEAD_ROWS steps at a time: (top ids [L, k] int64, top p [L, k],
    p(target) or p(top-1) [L], the probabilities [L, V] or None)."""
    ids, ps, score, full = [], [], [], []
    for s in range(0, resid.shape[0], HEAD_ROWS):
        p = read_out(lm, resid[s:s + HEAD_ROWS])                                       # [rows, V]
        tp, ti = torch.topk(p, k, dim=-1)
        ids.append(ti)
        ps.append(tp)
        score.append(p[:, target] if target is not None else tp[:, 0])
        if keep:
            full.append(p)
    cat = lambda xs: torch.cat(xs).cpu().numpy()                                       # noqa: E731
    return cat(ids).astype(np.int64), cat(ps), cat(score), cat(full) if keep else None


def _query(task: Task, tokens: np.ndarray, step: Optional[int], final_top: np.ndarray) -> tuple:
    """(query step, target, how) per the module docstring; final_top [L] the last layer's top-1."""
    L = tokens.size
    if step is not None and not 0 <= step < L:
        raise ValueError(f"query step {step} is out of range 0..{L - 1}")
    if isinstance(task, IdTask):
        if step is None or step == L - 1:
            return L - 1, int(final_top[L - 1]), f"the model's own top-1 at the last step t = {L - 1}"
        return int(step), int(tokens[step + 1]), f"the actual next token at t = {step}"
    scored = task.positions(tokens).scored
    if step is None:
        return (int(scored[0][0]), int(scored[0][1]), f"the first scored query, t = {scored[0][0]}") if scored \
            else (None, None, "")
    at = dict(scored)
    if step not in at:
        shown = ", ".join(str(q) for q, _ in scored[:8]) + (" …" if len(scored) > 8 else "")
        raise ValueError(f"step {step} is not a scored query of the sequence (queries with an answer: "
                         f"t = {shown or 'none'})")
    return int(step), int(at[step]), f"the query at t = {step}"
