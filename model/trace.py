"""Activation traces: everything the app draws and researchers export, for one sequence.

    tr = lm.trace(tokens)                 # tokens: [L] ints (list, numpy or tensor); = trace(lm, tokens)
    tr.layers[1].delta                    # [L, U] Δ, layer 2 (U units: channels or heads)
    tr.save("run.safetensors"); Trace.load("run.safetensors")
    trace(lm, tokens, interventions=[ClampDelta(0, [3], from_t=10)])   # the edited run, same format

A trace is model.run.run on one sequence with every record asked for, turned into numpy; the
logits go block by block to NextTokens (run's head reducer), so unless the full [L, V] is kept
the trace's memory grows with L * (records + k), never with L * V.

Arrays are numpy (viz/ consumes numpy and never imports torch). Per layer i, U is the axis of
the mixer's units, named in meta["units"]: "channel" for Mamba-1 (U = D channels), "head" for
Mamba-2 (U = H heads of P channels; Δ, A and the decay are one scalar per head there).

    field       Mamba-1        Mamba-2          what                                hook name
    ssm_input   [L, D]         [L, D]           x (u): conv + SiLU output, the      hook_ssm_input
                                                scan's input (Mamba-2: channel h*P+p)
    delta       [L, D]         [L, H]           Δ after dt bias, softplus, limit    hook_delta
    decay       -              [L, H]           exp(Δ A), the factor a head's       hook_decay
                                                state keeps per step (ours)
    B, C        [L, N]         [L, G, N]        input-dependent B, C (per group)    hook_B, hook_C
    state_norm  [L, D]         [L, H]           ||h_t[d, :]||_2 / ||h_t[head]||_F   hook_state_norm (ours)
    ssm_output  [L, D]         [L, D]           y + D x, before the silu(z) gate    hook_ssm_output
    resid_post  [L, d_model]   [L, d_model]     residual stream after block i       hook_resid_post
    states      [L, D, N]      [L, H, P, N]     h_t, only when asked, under a cap   hook_h
and for the model, tokens [L] and the next-token distribution at every step:
    logits, probs   [L, V]    the full distribution (hook_logits, hook_probs): only when kept
                              (full_probs; by default when V <= FULL_PROBS_MAX_VOCAB), else None
    top_k_ids       [L, k]    the k most probable next tokens, most probable first (hook_top_k_ids)
    top_k_probs     [L, k]    their probabilities (hook_top_k_probs)
    p_next          [L]       p(the actual next token tokens[t+1]); NaN at the last step (hook_p_next)
    logp_next       [L]       its log-probability, -loss per token; NaN at the last step (hook_logp_next)
    watch_ids       [m]       ids whose p is kept at every step, when asked (trace(watch=); hook_watch_ids)
    watch_probs     [L, m]    p(next token = watch_ids[j]) (hook_watch_probs)
At a 50k vocabulary the full distribution is what makes a trace large (L=512: 2 x 100 MB), and the
views of a language model need only the top-k and p(next); a task model (17 tokens) keeps it all.
In the safetensors file the keys are MambaLens / TransformerLens hook names: blocks.{i}.hook_delta.
(TransformerLens's Mamba-2 bridge hooks module boundaries only -- mixer.hook_in_proj, hook_conv,
hook_inner_norm, hook_ssm_out -- and names none of these quantities, so MambaLens's names are
kept for both mixers; docs/mamba2.md maps the two.)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from kernels import resolve_backend

from . import __version__
from .interventions import describe
from .records import MIXER_SPECIFIC, RECORDABLE
from .run import HEAD_ROWS as RUN_HEAD_ROWS
from .run import run
from .safetensors_io import write_safetensors

TRACE_FORMAT = "mambascope-trace/1"
DEFAULT_MAX_STATE_ELEMS = 1 << 24   # full states: 64 MiB of fp32 over all layers unless raised
FULL_PROBS_MAX_VOCAB = 1024         # up to this vocabulary the full [L, V] distribution is kept by default
TOP_K_DEFAULT = 10                  # next-token candidates kept per step
HEAD_ROWS = RUN_HEAD_ROWS           # softmax / top-k over this many steps at a time (model.run's head block)
# model-level arrays -> hook names (the full distribution's two may be absent)
MODEL_FIELDS = {"logits": "hook_logits", "probs": "hook_probs", "top_k_ids": "hook_top_k_ids",
                "top_k_probs": "hook_top_k_probs", "p_next": "hook_p_next", "logp_next": "hook_logp_next",
                "watch_ids": "hook_watch_ids", "watch_probs": "hook_watch_probs"}
WATCH_MAX = 256                     # token ids whose p a trace may keep at every step (trace(watch=))
# attribute -> MambaLens hook name: every mixer's records, then the mixer-specific ones (decay)
LAYER_FIELDS = {name: f"hook_{name}" for name in RECORDABLE + MIXER_SPECIFIC}
STATES_HOOK = "hook_h"
# what each mixer records by default (a Mamba-1 layer has no decay record: its A is [D, N])
DEFAULT_FIELDS = {"Mamba1": RECORDABLE, "Mamba2": RECORDABLE + ("decay",)}


@dataclass
class LayerTrace:
    """One layer's recordings; a quantity left out of `trace(include=...)` (or that the mixer
    does not have) is None. Shapes: Mamba-1 / Mamba-2 (module docstring)."""
    ssm_input: Optional[np.ndarray] = None    # [L, D]
    delta: Optional[np.ndarray] = None        # [L, D] / [L, H]
    B: Optional[np.ndarray] = None            # [L, N] / [L, G, N]
    C: Optional[np.ndarray] = None            # [L, N] / [L, G, N]
    state_norm: Optional[np.ndarray] = None   # [L, D] / [L, H]
    ssm_output: Optional[np.ndarray] = None   # [L, D]
    resid_post: Optional[np.ndarray] = None   # [L, d_model]
    states: Optional[np.ndarray] = None       # [L, D, N] / [L, H, P, N]
    decay: Optional[np.ndarray] = None        # Mamba-2 only: [L, H], exp(Δ A)


@dataclass
class Trace:
    tokens: np.ndarray                  # [L] int64
    layers: list                        # [LayerTrace] * n_layer
    logits: Optional[np.ndarray]        # [L, V] or None (not kept: module docstring)
    probs: Optional[np.ndarray]         # [L, V] or None
    # config, norm_epsilon, checkpoint (file name), checkpoint_sha256, backend, version, task,
    # units, top_k, full_probs, and interventions when the run was edited
    meta: dict = field(default_factory=dict)
    top_k_ids: Optional[np.ndarray] = None      # [L, k] int64, most probable first
    top_k_probs: Optional[np.ndarray] = None    # [L, k] float32
    p_next: Optional[np.ndarray] = None         # [L] float32, NaN at the last step
    logp_next: Optional[np.ndarray] = None      # [L] float32, NaN at the last step
    watch_ids: Optional[np.ndarray] = None      # [m] int64: the ids of trace(watch=...), sorted
    watch_probs: Optional[np.ndarray] = None    # [L, m] float32: p(next token = watch_ids[j]) at every step

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def units(self) -> str:
        """What the per-layer arrays' second axis indexes: "channel" (Mamba-1) or "head" (Mamba-2)."""
        return self.meta.get("units", "channel")      # traces before the field were all Mamba-1

    def to_tensors(self) -> dict:
        out = {"tokens": self.tokens}
        out.update({hook: getattr(self, a) for a, hook in MODEL_FIELDS.items() if getattr(self, a) is not None})
        for i, lt in enumerate(self.layers):
            for attr, hook in {**LAYER_FIELDS, "states": STATES_HOOK}.items():
                if getattr(lt, attr) is not None:
                    out[f"blocks.{i}.{hook}"] = getattr(lt, attr)
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    def save(self, path) -> None:
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.meta.items()}
        meta["format"] = TRACE_FORMAT
        meta["n_layer"] = str(len(self.layers))
        write_safetensors(self.to_tensors(), path, meta)

    @classmethod
    def load(cls, path) -> "Trace":
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = dict(f.metadata() or {})
                if meta.get("format") != TRACE_FORMAT:
                    raise ValueError(f"{path}: not a mambascope trace (format={meta.get('format')!r})")
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path}: not a readable safetensors trace ({e})") from e
        n_layer = int(meta.pop("n_layer"))
        meta.pop("format")
        layers = []
        for i in range(n_layer):
            hooks = {**LAYER_FIELDS, "states": STATES_HOOK}
            layers.append(LayerTrace(**{a: arrays.get(f"blocks.{i}.{h}") for a, h in hooks.items()}))
        meta = {k: _maybe_json(v) for k, v in meta.items()}
        if "checkpoint_path" in meta:    # older traces stored the absolute path: keep only the name
            meta.setdefault("checkpoint", Path(meta.pop("checkpoint_path")).name)
        return cls(tokens=arrays["tokens"], layers=layers, meta=meta,
                   **{a: arrays.get(hook) for a, hook in MODEL_FIELDS.items()})


def _maybe_json(s: str):
    try:
        return json.loads(s)
    except (json.JSONDecodeError, TypeError):
        return s


def as_token_tensor(tokens, device="cpu") -> torch.Tensor:
    """[L] or [1, L] tokens (list, numpy, tensor) -> LongTensor [1, L]."""
    t = torch.as_tensor(np.asarray(tokens) if not torch.is_tensor(tokens) else tokens)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise ValueError(f"trace takes one sequence of shape [L] or [1, L], got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"tokens must be integers, got {t.dtype}")
    return t.to(device=device, dtype=torch.long)[None]


@torch.no_grad()
def trace(lm, tokens: Sequence[int], *, include: Optional[Sequence[str]] = None, full_states: bool = False,
          max_state_elems: int = DEFAULT_MAX_STATE_ELEMS, interventions: Sequence = (),
          backend: Optional[str] = None, chunk_len: Optional[int] = None, top_k: int = TOP_K_DEFAULT,
          full_probs: Optional[bool] = None, watch: Sequence[int] = ()) -> Trace:
    """Run `lm` on one sequence ([L] or [1, L]) and record every layer (module docstring for shapes).

    include: which per-layer quantities to keep (default: everything the mixer records,
    DEFAULT_FIELDS); the others are None. E.g. include=("state_norm",) traces 2^20 tokens in
    ~1 GiB instead of ~4.5 GiB. "decay" is Mamba-2's only (a Mamba-1 model refuses it).
    full_states: also keep h_t for every step, refused above `max_state_elems` floats in total
    (L * D * N * n_layer, D = H * P for Mamba-2); raise the cap explicitly if you have the memory.
    interventions: edits (model.interventions) applied during the run; meta["interventions"]
    then describes them. backend, chunk_len: as model.run.run.
    top_k: next-token candidates kept per step (at most V); full_probs: also keep logits and probs
    [L, V] (None: when V <= FULL_PROBS_MAX_VOCAB). p(next) and its log are always kept.
    watch: token ids (at most WATCH_MAX) whose p(next token = id) is kept at every step (watch_ids,
    watch_probs [L, m]): a task's targets when the full distribution is not kept (MQAR's values at
    V = 8,192: a query's target is not the next token).
    """
    include = DEFAULT_FIELDS[lm.config.layer] if include is None else tuple(include)
    unknown = set(include) - set(LAYER_FIELDS)
    if unknown:
        raise ValueError(f"unknown trace quantities {sorted(unknown)}; choose from {list(LAYER_FIELDS)}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a whole number >= 1, got {top_k!r}")
    interventions = list(interventions)
    ids = as_token_tensor(tokens, lm.device)                         # [1, L]
    cfg = lm.config
    watch = sorted({int(w) for w in watch})
    if len(watch) > WATCH_MAX or any(not 0 <= w < cfg.vocab_size for w in watch):
        raise ValueError(f"watch takes at most {WATCH_MAX} token ids in 0..{cfg.vocab_size - 1}")
    L = ids.shape[1]
    if full_states:
        need = L * cfg.d_inner * cfg.d_state * cfg.n_layer
        if need > max_state_elems:
            raise ValueError(f"full states for L={L} need {need:,} floats ({need * 4 / 2**20:.0f} MiB), "
                             f"over the cap of {max_state_elems:,}; pass max_state_elems={need} to allow it")
    was_training = lm.training
    lm.eval()
    full = keeps_full(cfg.vocab_size, full_probs)
    nxt = NextTokens(ids[0], cfg.vocab_size, min(int(top_k), cfg.vocab_size), full, watch)
    try:
        # kept whole, the logits come one chunk at a time: lm_head on a chunk, as lm(tokens) computes them
        res = run(lm, ids, interventions, include=include, states=full_states, backend=backend,
                  chunk_len=chunk_len, head=nxt, head_rows=L if full else HEAD_ROWS)
    finally:
        lm.train(was_training)
    np32 = lambda a: a[0].float().cpu().numpy()                      # noqa: E731  [1, L, ...] -> [L, ...]
    recs = res.records or [{} for _ in range(cfg.n_layer)]
    layers = [LayerTrace(**{a: np32(r[a]) if a in r else None for a in (*LAYER_FIELDS, "states")}) for r in recs]
    head = nxt.result()
    path = getattr(lm, "checkpoint_path", None)
    meta = {"config": cfg.to_mamba_ssm_dict(), "norm_epsilon": cfg.norm_epsilon,
            "checkpoint_sha256": getattr(lm, "checkpoint_sha256", None) or "unsaved",
            # the file name only: an exported trace must not carry the server's paths
            "checkpoint": Path(path).name if path else "",
            "backend": resolve_backend(backend, lm.device), "version": __version__,
            "task": getattr(lm, "task", None) or {}, "units": lm.backbone.layers[0].mixer.unit,
            "top_k": int(head["top_k_ids"].shape[1]), "full_probs": full}
    if interventions:
        meta["interventions"] = [describe(iv) for iv in interventions]
    return Trace(tokens=ids[0].cpu().numpy(), layers=layers, meta=meta, **head)


def keeps_full(vocab_size: int, full_probs: Optional[bool]) -> bool:
    """Whether a trace keeps the whole [L, V] distribution: as asked, else for a small vocabulary."""
    return vocab_size <= FULL_PROBS_MAX_VOCAB if full_probs is None else bool(full_probs)


class NextTokens:
    """The Trace's model-level arrays (module docstring), filled block by block as model.run hands
    over the logits (run(head=...)): a block [1, rows, V'] is reduced at once to top-k, p(next) and
    log p(next), so the head's memory is one block of HEAD_ROWS steps, not [L, V]. With `full` the
    whole logits and probs [L, V] are kept as well (asked for, or a small vocabulary).

        acc = NextTokens(ids, V, k, full); run(lm, ids[None], head=acc); acc.result() -> dict
    """

    def __init__(self, ids: torch.Tensor, vocab_size: int, k: int, full: bool, watch: Sequence[int] = ()):
        L = ids.shape[0]
        self.V, self.k = vocab_size, k
        self.watch = torch.as_tensor(list(watch), dtype=torch.long)     # [m] ids whose p is kept at every step
        self.watch_p = np.empty((L, len(watch)), np.float32) if len(watch) else None   # [L, m]
        self.nxt = torch.cat([ids[1:], ids[:1]])                         # [L] tokens[t+1] (last: a dummy)
        # filled in place: lists of blocks and a concatenation would hold every array twice
        self.top_ids = np.empty((L, k), np.int64)                        # [L, k]
        self.top_p = np.empty((L, k), np.float32)                        # [L, k]
        self.logp = np.empty(L, np.float32)                              # [L]
        self.logits = np.empty((L, vocab_size), np.float32) if full else None     # [L, V]
        self.probs = np.empty((L, vocab_size), np.float32) if full else None      # [L, V]

    def __call__(self, logits: torch.Tensor, t0: int) -> None:
        """logits [1, rows, V'] of steps t0..t0+rows-1 (V' >= V: the head's padded vocabulary)."""
        lg = logits[0, :, :self.V]                                       # [rows, V]
        if self.logits is not None:
            self.logits[t0:t0 + lg.shape[0]] = lg.float().cpu().numpy()
        for s in range(0, lg.shape[0], HEAD_ROWS):     # a whole chunk comes at once when `full`
            t = t0 + s
            lp = torch.log_softmax(lg[s:s + HEAD_ROWS].float(), -1)      # [rows, V]
            v, i = torch.topk(lp, self.k, dim=-1)                        # [rows, k] each, sorted
            rows = lp.shape[0]
            self.top_ids[t:t + rows] = i.cpu().numpy()
            self.top_p[t:t + rows] = v.exp().cpu().numpy()
            self.logp[t:t + rows] = lp.gather(1, self.nxt[t:t + rows, None].to(lp.device))[:, 0].cpu().numpy()
            if self.probs is not None:
                self.probs[t:t + rows] = lp.exp().cpu().numpy()
            if self.watch_p is not None:
                self.watch_p[t:t + rows] = lp[:, self.watch.to(lp.device)].exp().cpu().numpy()

    def result(self) -> dict:
        self.logp[-1] = np.nan                                           # nothing follows the last step
        return {"top_k_ids": self.top_ids, "top_k_probs": self.top_p, "logp_next": self.logp,
                "p_next": torch.from_numpy(self.logp).exp().numpy(), "logits": self.logits, "probs": self.probs,
                "watch_ids": self.watch.numpy() if self.watch_p is not None else None, "watch_probs": self.watch_p}


def next_token_summary(logits: torch.Tensor, ids: torch.Tensor, k: int, full: bool) -> dict:
    """logits [L, V] held whole, ids [L] -> the Trace's model-level arrays: what trace() computes
    from the logits per block, from logits a caller already has."""
    acc = NextTokens(ids, logits.shape[1], k, full)
    acc(logits[None], 0)
    return acc.result()


def record_widths(lm) -> dict:
    """Floats per step of each per-layer record (module docstring's table) for lm's mixer."""
    cfg, mixer = lm.config, lm.backbone.layers[0].mixer
    U, D, N, G = mixer.n_units, cfg.d_inner, cfg.d_state, getattr(mixer, "ngroups", 1)
    return {"ssm_input": D, "delta": U, "B": G * N, "C": G * N, "state_norm": U, "ssm_output": D,
            "resid_post": cfg.d_model, "decay": U, "states": D * N}


def bytes_per_step(lm, include: Optional[Sequence[str]] = None, top_k: int = TOP_K_DEFAULT,
                   full_probs: Optional[bool] = None, full_states: bool = False) -> int:
    """What trace(lm, tokens, include=..., ...) keeps per step, in bytes: the records (fp32, every
    layer), the token (int64) and the next-token arrays. Everything else a trace holds is bounded by a
    chunk (activations) or a head block (logits), so this times L is what grows with the sequence."""
    cfg = lm.config
    include = DEFAULT_FIELDS[cfg.layer] if include is None else tuple(include)
    widths = record_widths(lm)
    records = cfg.n_layer * (sum(widths[f] for f in include) + (widths["states"] if full_states else 0))
    full = keeps_full(cfg.vocab_size, full_probs)
    k = min(int(top_k), cfg.vocab_size)
    # records, logits + probs when full, top-k probs, p and log p (fp32); token and top-k ids (int64)
    return 4 * (records + (2 * cfg.vocab_size if full else 0) + k + 2) + 8 * (1 + k)
