"""The Mechanism tab's analysis side: checkpoints by name, the query prediction, Δ ratios, and the
hidden attention / interventions of one sequence on one checkpoint (numpy out; charts in viz/).

    from analysis.compare import load_named, query_summary, run_intervention
    lm = load_named("checkpoints", "analytic-2layer.safetensors")
    query_summary(lm, tokens)             # top token, p(M), Δ ratio [n_layer, D]

Checkpoints are the `*.safetensors` files in one folder, loaded lazily once each and then shared
read-only (eval mode, never mutated): no per-user state. A name outside that folder's listing is
refused, so a request cannot name an arbitrary path. The task (which step writes M, which token M
is) comes from the checkpoint's task metadata (`tasks.task_for`; `task_of`): induction heads for our
task-less 17-token files, None for a plain language model, which has no write position (no M, no Δ
ratio, no memory channels: the functions here say so or skip those parts). The Δ ratio and the
memory channels are tasks/measures.py's.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from model import load_checkpoint, trace
from model.interventions import AblateSSM, ClampDelta, ZeroState
from tasks import INDUCTION, IdTask, Task, task_for
from tasks.measures import layer_ratios
from tasks.measures import memory_channels as select_memory_channels

from .analytic import MEMORY_CHANNELS, MEMORY_LAYER
from .hidden_attention import MAX_LEN, hidden_attention_for

# the mean over channels computes every channel's [L, L] α̃, work ~ D * L^2: the blocked computation
# (hidden_attention.py) measured 0.4-0.7 s at L = 512 and 6.2 s at L = 2048 for D = 128 on one busy
# core, so the cap is that much work: L <= 2048 at 128 channels, ~590 at 1536, ~400 at 3072
MEAN_MAX_WORK = 128 * 2048 ** 2


def mean_max_len(n: int) -> int:
    """The longest sequence whose mean over n units stays within MEAN_MAX_WORK (and MAX_LEN)."""
    return int(min(MAX_LEN, (MEAN_MAX_WORK / max(n, 1)) ** 0.5))


MEAN_MAX_LEN = mean_max_len(128)           # the 2-layer task models' 128 channels
N_MEMORY_CHANNELS = len(MEMORY_CHANNELS)   # "memory channels" = this many top Δ-ratio channels (16 = |content vocab|)
MEMORY_HEAD_SHARE = 8                      # Mamba-2: 1 memory head per 8 heads (16 / 128, the channels' share)
_CACHE: dict = {}
_LOCK = threading.Lock()


def list_checkpoints(folder: Path) -> list:
    """File names of the *.safetensors checkpoints in `folder`, sorted."""
    return sorted(p.name for p in Path(folder).glob("*.safetensors"))


def load_named(folder: Path, name: str, device="cpu"):
    """The checkpoint `name` in `folder`, loaded once (then cached, read-only)."""
    names = list_checkpoints(folder)
    if name not in names:
        raise ValueError(f"unknown checkpoint {name!r}; choose one of {', '.join(names) or '(none found)'}")
    key = (str(Path(folder).resolve()), name, str(device))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_checkpoint(Path(folder) / name, device=device).eval()
        return _CACHE[key]


def unit_name(lm) -> str:
    """What one index of the model's per-layer records is: "channel" (Mamba-1) or "head" (Mamba-2)."""
    return lm.backbone.layers[0].mixer.unit


def n_units(lm) -> int:
    """Units per layer: D channels (Mamba-1) or H heads (Mamba-2); the range of every channel id here."""
    return lm.backbone.layers[0].mixer.n_units


def n_memory_units(lm) -> int:
    """How many top-Δ-ratio units are a layer's memory units (module docstring says why)."""
    if unit_name(lm) == "channel":
        return N_MEMORY_CHANNELS
    return max(1, n_units(lm) // MEMORY_HEAD_SHARE)


def task_of(lm_or_trace) -> Optional[Task]:
    """The task of a model (its `task` metadata) or of a Trace (meta["task"]), as ui.common's loader
    reads it: when neither names a known task, induction heads for a 17-token model (our task-less
    files, a freshly initialised MambaLM(MambaConfig())), else None: a plain language model (a model
    directory, a tokenizer, any other vocabulary), whose steps all predict the next token."""
    if hasattr(lm_or_trace, "meta"):                                   # a Trace
        meta = lm_or_trace.meta or {}
        task, vocab, plain = meta.get("task"), (meta.get("config") or {}).get("vocab_size"), False
    else:
        task, vocab = getattr(lm_or_trace, "task", None), lm_or_trace.config.vocab_size
        path = getattr(lm_or_trace, "checkpoint_path", None)
        plain = getattr(lm_or_trace, "text_task", None) is not None or bool(path and Path(path).is_dir())
    found = task_for(task)
    if found is not None:
        return found
    return INDUCTION if vocab == INDUCTION.vocab_size and not plain else None


def task_or_next_token(lm) -> Task:
    """task_of(lm), or for a plain LM the next-token task over its vocabulary (its tokenizer's
    TextTask when it has one, else tasks.IdTask): what patching and the logit lens read there."""
    return task_of(lm) or getattr(lm, "text_task", None) or IdTask(lm.config.vocab_size)


@dataclass(frozen=True)
class QueryPrediction:
    top: int                     # argmax token at the last position (16 = S)
    p_top: float
    memory: Optional[int]        # M, or None when the sequence writes nothing (no S M pair)
    p_memory: Optional[float]    # p(M) at the last position
    p_memory_t: Optional[np.ndarray]   # [L] p(M) at every step


def prediction(tr) -> QueryPrediction:
    """The prediction at the last position (the query) of a Trace; a plain LM's has no M."""
    task = task_of(tr)
    write = None if task is None else task.positions(tr.tokens).first_write
    m = None if write is None else int(tr.tokens[write])
    if tr.probs is None:          # a 50k-vocabulary trace keeps the top-k only; a plain LM writes no M
        return QueryPrediction(int(tr.top_k_ids[-1, 0]), float(tr.top_k_probs[-1, 0]), None, None, None)
    last = tr.probs[-1]                                               # [V]
    top = int(np.argmax(last))
    return QueryPrediction(top, float(last[top]), m, None if m is None else float(last[m]),
                           None if m is None else tr.probs[:, m].astype(np.float64))


def delta_ratios(tr, d_conv: int) -> Optional[np.ndarray]:
    """The Δ ratio of tasks/measures.py (max Δ over the write window of the first write / median Δ
    over the filler after it) of every layer and unit: [n_layer, U]; None without a write and filler
    (and for a plain LM, which has no write position)."""
    task = task_of(tr)
    if task is None:
        return None
    ratios = layer_ratios([lt.delta for lt in tr.layers], task.positions(tr.tokens), d_conv)
    return None if ratios is None else np.stack([r.ratio for r in ratios])


def query_summary(lm, tokens: np.ndarray):
    """(QueryPrediction, Δ ratio [n_layer, U] or None) for one sequence (U = n_units(lm))."""
    tr = trace(lm, tokens, include=("delta",))
    return prediction(tr), delta_ratios(tr, lm.config.d_conv)


def memory_channels(lm, tokens: np.ndarray, layer: int) -> list:
    """The n_memory_units(lm) units (channels or heads) of `layer` with the largest Δ ratio, sorted by
    index (for the closed-form model these are its memory channels 0..15 of layer 2)."""
    if task_of(lm) is None:
        raise ValueError(f"'memory {unit_name(lm)}s' are the top Δ-ratio {unit_name(lm)}s at a task's write "
                         f"position; this checkpoint is a plain language model (no task): give {unit_name(lm)} ids")
    _, ratio = query_summary(lm, tokens)
    if ratio is None:
        raise ValueError(f"'memory {unit_name(lm)}s' needs a trigger S followed by a memory token M and filler "
                         "after it")
    return sorted(select_memory_channels(ratio[layer], k=n_memory_units(lm)))


def memory_channel_pairs(ratio: np.ndarray, min_ratio: float = 100.0, k: int = N_MEMORY_CHANNELS) -> list:
    """[(layer, unit)] of the memory units in every layer (at most k per layer -- pass
    n_memory_units(lm) for a Mamba-2 model -- each with a Δ ratio above min_ratio): the highlight of
    viz.mechanism.delta_ratio_chart. ratio: [n_layer, U]."""
    return [(li, c) for li, r in enumerate(np.asarray(ratio))
            for c in select_memory_channels(r, k=k, min_ratio=min_ratio)]


def parse_channels(text: str, n_channels: int, unit: str = "channel") -> list:
    """'3, 7 88' -> [3, 7, 88]; each id checked against 0..n_channels-1 (n_units(lm); unit names
    them in the messages: unit_name(lm))."""
    parts = [p for p in text.replace(",", " ").split()]
    if not parts:
        raise ValueError(f"give at least one {unit} (e.g. '3, 7, 88') or choose 'memory {unit}s'")
    out = []
    for p in parts:
        if not re.fullmatch(r"[0-9]{1,9}", p):              # ASCII digits; no huge numbers echoed
            shown = p if len(p) <= 20 else p[:20] + "…"
            raise ValueError(f"{unit} {shown!r} is not a whole number in range (write e.g. '3, 7, 88')")
        c = int(p)
        if not 0 <= c < n_channels:
            raise ValueError(f"{unit} {c} is out of range 0..{n_channels - 1}")
        out.append(c)
    return sorted(set(out))


def attention_map(lm, tokens: np.ndarray, layer: int, channel: Optional[int]) -> np.ndarray:
    """α̃ of one channel (Mamba-2: one head's SSD mask), or mean |α̃| over the units (channel None): [L, L]."""
    if len(tokens) > MAX_LEN:
        raise ValueError(f"hidden attention needs a sequence of at most {MAX_LEN} tokens, got {len(tokens)}")
    n_layer, D, unit = lm.config.n_layer, n_units(lm), unit_name(lm)
    if not 0 <= layer < n_layer:
        raise ValueError(f"layer {layer + 1} is out of range 1..{n_layer}")
    if channel is not None and not 0 <= channel < D:
        raise ValueError(f"{unit} {channel} is out of range 0..{D - 1}")
    if channel is None:
        cap = mean_max_len(D)
        if len(tokens) > cap:
            raise ValueError(f"the mean over {unit}s is limited to {cap} tokens (it computes all {D} "
                             f"{unit}s' [L, L] maps), got {len(tokens)}: choose one {unit} or a shorter sequence")
        return hidden_attention_for(lm, tokens, layer, reduce="abs_mean")
    return hidden_attention_for(lm, tokens, layer, channels=[channel])[0]


INTERVENTIONS = ("clamp Δ", "zero state", "ablate layer SSM output")


def make_intervention(kind: str, layer: int, channels: Sequence[int], t: int, t_end: Optional[int],
                      value: float, length: int):
    """One intervention from the widgets' values. t is checked against 0..length-1; clamp Δ and
    ablate act on steps [t, t_end) (t_end None = t + 1); zero state zeroes h before step t."""
    if not 0 <= t < length:
        raise ValueError(f"timestep {t} is out of range 0..{length - 1}")
    end = t + 1 if t_end is None else t_end
    if not t < end <= length:
        raise ValueError(f"'until t' {end} must be in {t + 1}..{length} (after the timestep {t})")
    if kind == "clamp Δ":
        return ClampDelta(layer, tuple(channels), from_t=t, value=float(value), to_t=end)
    if kind == "zero state":
        if t == 0:
            raise ValueError("zero state at t = 0 does nothing (h starts at 0); choose t >= 1")
        return ZeroState(layer, tuple(channels), t)
    if kind == "ablate layer SSM output":
        return AblateSSM(layer, from_t=t, to_t=end)
    raise ValueError(f"unknown intervention {kind!r}; choose one of {', '.join(INTERVENTIONS)}")


def run_intervention(lm, tokens: np.ndarray, intervention):
    """(before, after) QueryPrediction of one sequence without / with the intervention. Only the
    logits are needed, so nothing per layer is recorded."""
    before = trace(lm, tokens, include=())
    after = trace(lm, tokens, include=(), interventions=[intervention])
    return prediction(before), prediction(after)


__all__ = ["list_checkpoints", "load_named", "QueryPrediction", "prediction", "delta_ratios", "query_summary",
           "memory_channels", "memory_channel_pairs", "parse_channels", "attention_map", "MEAN_MAX_LEN", "mean_max_len",
           "INTERVENTIONS", "make_intervention", "run_intervention", "MEMORY_LAYER", "task_of", "task_or_next_token",
           "unit_name", "n_units", "n_memory_units"]
