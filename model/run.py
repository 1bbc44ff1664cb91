"""The one forward-with-records path and the one chunk loop.

    res = run(lm, tokens)                                  # tokens [B, L] -> RunResult
    res = run(lm, tokens, [ZeroState(1, [3], t=40)], include=("delta",), snapshots=[9, 99])
    res.logits [B, L, V]; res.records[i]["delta"] [B, L, D]; res.snapshots[99][i].ssm [B, D, N]
    run(lm, tokens, head=reduce)           # reduce(logits [B, rows, V'], t0) per row block; res.logits None

A sequence runs through `lm.forward_chunk` in time chunks of at most `chunk_len` tokens, carrying
every layer's LayerState from one chunk to the next, so memory grows with the chunk, not with L.
The chunks are also cut where the caller needs a boundary: before the step t of a state edit
(ZeroState, PatchState: the state is edited between chunks) and after each snapshot step. Δ and
output edits (ClampDelta, AblateSSM) run inside a chunk through MixerHooks.

The logits [B, L, V] are the one output that grows with L * V (at V = 50,280, 201 KB per token:
1 GiB at 5,338 tokens). A caller that keeps less of them (top-k, p(next token), a loss) passes a
`head` reducer instead: lm_head then runs on head_rows steps at a time and each block goes straight
to the reducer, so the head's memory is one block, however long the sequence.

lm.forward (long no-grad inputs), model.trace and the analysis all run through here: no other
module loops over chunks. With no interventions and no extra cuts the result is bit-identical to
`lm(tokens)`; a different cut (another chunk_len, a snapshot) computes the same function and
agrees to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .interventions import STATE_EDITS, PatchState, chunk_hooks, state_edits, validate
from .records import RecordSpec

# tokens per time chunk: a chunk's activations stay small (~1k floats per token and layer for the
# 2-layer model: ~32 MiB per layer at 8192) while the per-chunk overhead (Python, launches) is amortised
STREAM_CHUNK = 8192
# a chunk's per-layer activations ([l, D] arrays, ~10 of them) and, when records are asked for, every
# layer's records of the chunk (alive until its last layer is done: a second copy of the trace's) grow
# with l * D. This many elements per [l, D] keeps the 2-layer models (D = 128) at STREAM_CHUNK and
# bounds a wider model's chunk: mamba-130m (D = 1536) 682 tokens. Its trace of Δ and state norms at
# L = 7,278 (bench/lm_rss.py --trace, 2 busy cores): peak RSS 5.2 GB in one 8,192 chunk, 4.2 GB in
# 1,365-token chunks, 3.5 GB in 682-token chunks; time x1.1 (1,365) and x1.2-1.3 (682) of one chunk
CHUNK_ELEMS = STREAM_CHUNK * 128
MIN_CHUNK = 256               # shorter chunks: the per-chunk, per-layer overhead would dominate
# steps per lm_head block when a head reducer is given: a block's logits [B, 256, V] are 51 MB at
# V = 50,280 (fp32), and 256 rows keep the head's matmul efficient
HEAD_ROWS = 256


@dataclass
class RunResult:
    logits: Optional[Tensor]               # [B, L or num_last_tokens, V]; None when a head reducer took them
    final_states: list                     # [LayerState] * n_layer, after the last step
    records: Optional[list]                # None, or per layer {name: [B, L, ...]} (include, + "states")
    snapshots: dict                        # {t: [LayerState] * n_layer}, each layer's state just after step t


def default_chunk_len(lm) -> int:
    """Tokens per chunk for lm: STREAM_CHUNK, fewer for a wide model (CHUNK_ELEMS), at least MIN_CHUNK."""
    return max(MIN_CHUNK, min(STREAM_CHUNK, CHUNK_ELEMS // lm.config.d_inner))


def chunks(L: int, chunk_len: int, cuts: Sequence[int] = ()) -> Iterator[tuple[int, int]]:
    """The spans [s, e) that cover 0..L: at most chunk_len long, starting at every multiple of
    chunk_len and at every cut in 0 < cut < L."""
    bounds = sorted({0, L} | set(range(0, L, chunk_len)) | {int(c) for c in cuts if 0 < c < L})
    yield from zip(bounds[:-1], bounds[1:])


@torch.no_grad()
def run(lm, tokens: Tensor, interventions: Sequence = (), *, include: Sequence[str] = (), states: bool = False,
        num_last_tokens: int = 0, snapshots: Sequence[int] = (), backend: Optional[str] = None,
        chunk_len: Optional[int] = None, initial_states: Optional[list] = None,
        head: Optional[Callable[[Tensor, int], None]] = None, head_rows: int = HEAD_ROWS) -> RunResult:
    """Run tokens [B, L] through lm with interventions, recording what is asked for.

    interventions: ClampDelta / ZeroState / PatchState / AblateSSM (model.interventions).
    include: names from model.RECORDABLE (or a mixer's own, model.records.MIXER_SPECIFIC) to record
    per layer, each [B, L, ...]; () = no records (records is None) unless states=True, which
    records h_t [B, L, *state shape] as "states" (large).
    num_last_tokens: > 0 keeps only the last logits rows (the chunks before still run for their states).
    snapshots: steps t whose every-layer LayerState (just after step t) is returned.
    chunk_len: tokens per chunk (default: default_chunk_len(lm), STREAM_CHUNK for narrow models).
    initial_states: [LayerState] * n_layer, each [B, ...], entering the first token (None = zero):
    continues a run from one of its snapshots; steps and times above are then counted from the
    first token given here.
    head: a reducer called as head(logits [B, rows, V'], t0) for the logits of steps t0..t0+rows-1
    (the kept ones), at most head_rows steps at a time and in order; the logits are then not kept
    (RunResult.logits is None). V' is lm_head's padded vocabulary: the reducer slices [..., :V].
    """
    lm._check_tokens(tokens)
    batch, L = tokens.shape
    chunk_len = chunk_len or default_chunk_len(lm)
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    if head_rows < 1:
        raise ValueError(f"head_rows must be >= 1, got {head_rows}")
    spec = RecordSpec(tuple(include), states) if include or states else None
    interventions = list(interventions)
    validate(lm, interventions, L)
    snaps = sorted({int(t) for t in snapshots})
    for t in snaps:
        if not 0 <= t < L:
            raise ValueError(f"snapshot step {t} is out of range 0..{L - 1}")
    n_layer = lm.config.n_layer
    if initial_states is not None and (len(initial_states) != n_layer or any(
            st.ssm.shape[0] != batch for st in initial_states)):
        raise ValueError(f"initial_states: one LayerState per layer ({n_layer}) with batch {batch}")
    if initial_states is not None and any(isinstance(iv, PatchState) for iv in interventions):
        raise ValueError("PatchState runs its source from step 0; it cannot continue from initial_states")
    sources = {id(iv): _source_state(lm, iv, batch, backend, chunk_len) for iv in interventions
               if isinstance(iv, PatchState) and iv.t > 0}
    edit_steps = [iv.t for iv in interventions if isinstance(iv, STATE_EDITS)]
    snap_at = {t + 1: t for t in snaps}            # a snapshot after step t is the state entering t + 1

    cur, logits, records, out_snaps = initial_states, [], None, {}
    for s, e in chunks(L, chunk_len, [*edit_steps, *snap_at]):
        if cur is not None:   # without initial_states the state entering step 0 is zero, and so is a source's
            cur = state_edits(interventions, s, cur, sources)
        n = e - s
        # with num_last_tokens, a chunk with nothing to keep still runs for its states; its one
        # logit row is dropped
        keep = n if num_last_tokens <= 0 else min(n, max(0, e - (L - num_last_tokens)))
        lg, cur, recs = lm.forward_chunk(tokens[:, s:e], cur, num_last_tokens=0 if keep == n else max(keep, 1),
                                         spec=spec, backend=backend, hooks=chunk_hooks(interventions, n_layer, s, n),
                                         head=head is None)
        if keep and head is None:
            logits.append(lg)                                            # [B, keep, V']
        elif keep:                    # lg: the kept steps' final hidden [B, keep, d_model], steps e-keep..e-1
            for r in range(0, keep, head_rows):
                head(lm.lm_head(lg[:, r:r + head_rows]), e - keep + r)
        if recs is not None:
            records = records or [{} for _ in range(n_layer)]
            for i, rec in enumerate(recs):
                for k, a in rec.items():
                    # filled in place: a list of chunks and a concatenation would hold the records twice
                    if k not in records[i]:
                        records[i][k] = a.new_empty((batch, L, *a.shape[2:]))
                    records[i][k][:, s:e] = a
        if e in snap_at:
            out_snaps[snap_at[e]] = list(cur)
    # one chunk (every sequence up to the chunk length): its logits as they are; a cat would copy
    # [B, L, V] once more (44 ms of mamba-130m's 1.5 s forward at L = 512)
    whole = None if head is not None else logits[0] if len(logits) == 1 else torch.cat(logits, dim=1)
    return RunResult(logits=whole, final_states=cur, records=records, snapshots=out_snaps)


def _source_state(lm, iv: PatchState, batch: int, backend, chunk_len: int) -> Tensor:
    """h of iv.layer just before step iv.t (t > 0) in a clean run of iv.source_tokens: [B, ...]."""
    src = torch.as_tensor(np.asarray(iv.source_tokens), dtype=torch.long, device=lm.device)
    src = src[None] if src.dim() == 1 else src                          # [b, L']
    if src.shape[0] not in (1, batch):
        raise ValueError(f"PatchState: source_tokens batch {src.shape[0]} does not match {batch}")
    h = run(lm, src[:, :iv.t], num_last_tokens=1, backend=backend, chunk_len=chunk_len).final_states[iv.layer].ssm
    return h.expand(batch, *h.shape[1:])


__all__ = ["run", "RunResult", "chunks", "default_chunk_len", "STREAM_CHUNK", "HEAD_ROWS"]
