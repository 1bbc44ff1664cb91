"""What every tab's adapters share: the device, the model loaded once, bad input turned into a
specific gr.Error, and the coercion of raw widget values.

Every endpoint runs with `preprocess=False` (app.py): an adapter receives the JSON a client sent,
not Gradio's conversion of it (which fails with a generic error on None in a checkbox group,
NaN in a whole-number field, or echoes a 200k-character unknown choice). The coercers here are
the only door: each names the field and the rule, and shows at most SHOWN_CHARS of the input.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Optional, Sequence

import gradio as gr
import numpy as np
import torch

from kernels import resolve_backend
from kernels.cpu_memory import keep_freed_memory
from model import CheckpointError, MambaConfig, MambaLM, load_checkpoint
from model.trace import WATCH_MAX, bytes_per_step, keeps_full
from tasks import INDUCTION, MAX_LEN, IdTask, Task, TokenError, task_for

from .limits import HEAVY_CONCURRENCY, available_cores, limit_arenas, share_cores

try:                                     # Hugging Face ZeroGPU: the GPU is lent per decorated call
    import spaces
except ImportError:
    spaces = None

# ---------------------------------------------------------------- settings (one block)
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "induction-2layer.safetensors"
CHECKPOINT_ENV = "MAMBASCOPE_CHECKPOINT"
THREADS_ENV = "MAMBASCOPE_THREADS"       # torch threads per request, fixed (default: the cores shared)
FRESH_SEED = 0                           # the untrained fallback model is reproducible
CONCURRENCY = HEAVY_CONCURRENCY          # model runs at once, all heavy endpoints together (ui/limits.py)
SHOWN_CHARS = 60                         # of the user's input, at most, in an error message
MESSAGE_CHARS = 600                      # a whole error message, at most (a last guard)
INT64 = (-(1 << 63), (1 << 63) - 1)      # whole numbers end up in int64 arrays
# A request's trace may keep this many bytes of what grows with its length (model.trace.bytes_per_step):
# per layer Δ and the state norm [L, U] fp32 (what the charts draw), the token, top-k and p(next). The
# logits [L, V] no longer count: a trace reduces them per block of model.run.HEAD_ROWS steps (51 MB at
# V = 50,280, at any L), and the rest of the forward is bounded by a chunk (model.run.CHUNK_ELEMS). The
# cap was 2^28 / V tokens for the logits alone (5,338 at V = 50,280), the records on top (mamba-130m
# at 5,338: 1.5 GiB more, 2.8b: 13 GiB more). 2 GiB for everything keeps the two heavy requests that
# run at once (HEAVY_CONCURRENCY) near 5 GiB with their chunks, plus the weights: 7,278 tokens for
# 24 layers x 1536 channels (mamba-130m: peak RSS 3.5 GB there, 2.6 GB over the loaded model; the old
# code took 8.0 GB at that length), 819 for 64 x 5120 (2.8b), MAX_LEN for our 2-layer models.
TRACE_MAX_BYTES = 1 << 31
CHART_QUANTITIES = ("delta", "state_norm")    # what a view's trace records (exports may take all)
ZERO_GPU = spaces is not None and bool(os.environ.get("SPACES_ZERO_GPU"))
DEVICE = torch.device("cuda" if (torch.cuda.is_available() or ZERO_GPU) else "cpu")


def configure_cpu() -> None:
    """Server setup on CPU (once, at start): the cores shared among the heavy requests running
    (ui/limits.share_cores: a lone request gets all of them; with CONCURRENCY requests on few cores
    more threads than cores oversubscribe them: a 16k trace took 2.6 s with 1 thread vs 55 s with
    2 beside other work), or THREADS_ENV threads per request where the machine runs other work
    too; freed activations kept in the process between requests, and few malloc arenas so that an
    idle server can hand the memory back (ui/limits.py)."""
    limit_arenas()
    if DEVICE.type == "cpu":
        cores = available_cores()
        fixed = os.environ.get(THREADS_ENV, "").strip()
        per_request = int(fixed) if fixed.isdigit() and int(fixed) > 0 else 0
        torch.set_num_threads(per_request or max(1, cores // CONCURRENCY))
        share_cores(0 if per_request else cores)
        keep_freed_memory()


# ---------------------------------------------------------------- the model, loaded once
@dataclass(frozen=True)
class Loaded:
    lm: Optional[MambaLM]      # None when an explicitly requested checkpoint could not be loaded
    label: str                 # short, for chart titles and file metadata
    status: str                # Markdown banner
    error: Optional[str]       # why lm is None
    task: Task = INDUCTION     # what the tokens mean (the checkpoint's task; induction heads by default)
    path: Optional[Path] = None   # the checkpoint file the model came from (None: untrained or failed)

    @property
    def config(self) -> MambaConfig:
        """The loaded model's config (the default config when none is loaded): sizes for the widgets."""
        return self.lm.config if self.lm is not None else MambaConfig()


def load_model(requested: Optional[str], default: Path = DEFAULT_CHECKPOINT) -> Loaded:
    """`requested` (flag or env var) must load; the `default` checkpoint may be absent (it is
    being trained): then a seeded, freshly initialised model, and the banner says so."""
    backend = resolve_backend(None, DEVICE)
    path = Path(requested) if requested else Path(default)
    try:
        lm = load_checkpoint(path, device=DEVICE)
    except CheckpointError as e:
        if requested:
            print(f"mambascope: {e}", file=sys.stderr)
            return Loaded(None, "no model", f"❌ **Could not load the requested checkpoint.** {e}", str(e))
        torch.manual_seed(FRESH_SEED)
        lm = MambaLM(MambaConfig(), device=DEVICE).eval()
        why = "not found" if not path.exists() else f"unreadable ({e})"
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        return Loaded(lm, f"untrained model (seed {FRESH_SEED})",
                      f"⚠️ **Untrained model.** `{shown}` is {why}, so this is a freshly initialised "
                      f"`MambaLM(MambaConfig())` (seed {FRESH_SEED}): its predictions are at chance. Pass "
                      f"`--checkpoint PATH` or set `{CHECKPOINT_ENV}`. Scan backend: `{backend}` on `{DEVICE.type}`.",
                      None)
    task = task_of_model(lm, path)
    if task.vocab_size > lm.config.vocab_size:
        e = f"{path.name}: vocabulary of {lm.config.vocab_size} tokens; its task {task.name} needs {task.vocab_size}"
        return Loaded(None, "no model", f"❌ **Could not use the requested checkpoint.** {e}", e)
    meta = lm.task or {}
    mixture = meta.get("train_lengths") or ()          # a mixture of contexts, one drawn per batch
    at = f"{', '.join(map(str, mixture))} (mixed)" if len(mixture) > 1 else meta.get("train_len")
    trained = f", trained on {meta.get('name', '?')} at L = {at}" if at is not None else ""
    if isinstance(task, IdTask):
        trained = (", a plain language model: " + ("text in, through its tokenizer.json" if task.name == "text"
                                                   else f"token ids 0..{lm.config.vocab_size - 1} in (no tokenizer.json)")
                   + f", up to {length_cap(lm):,} tokens")
    return Loaded(lm, f"{path.stem} ({lm.checkpoint_sha256[:8]})",
                  f"**Model** `{path.name}` · sha256 `{lm.checkpoint_sha256[:12]}…`{trained} · "
                  f"{lm.config.n_layer} layers, d_model {lm.config.d_model} · scan backend `{backend}` "
                  f"on `{DEVICE.type}`", None, task, path)


def task_of_model(lm: MambaLM, path: Path) -> Task:
    """What the tokens of a loaded model mean: the task its metadata names; else a plain LM (a
    model directory, or a file whose vocabulary is not induction heads'), with text in through its
    tokenizer (lm.text_task) or ids in; else (our task-less 17-token files) induction heads."""
    task = task_for(lm.task)
    if task is not None:
        return task
    if getattr(lm, "text_task", None) is not None:
        return lm.text_task
    if Path(path).is_dir() or lm.config.vocab_size != INDUCTION.vocab_size:
        ids = IdTask(lm.config.vocab_size)
        ids.hint = " (this model has no tokenizer.json, so it takes ids, not text)"
        return ids
    return INDUCTION


def is_plain_lm(task: Optional[Task] = None) -> bool:
    """A plain language model (next-token views, no task controls): the app's model by default."""
    return isinstance(MODEL.task if task is None else task, IdTask)


def length_cap(lm: Optional[MambaLM] = None, include: Optional[tuple] = CHART_QUANTITIES) -> int:
    """The longest sequence a request may trace: MAX_LEN, or less where its trace (per-layer
    `include`, None = every quantity: an export) would keep over TRACE_MAX_BYTES. lm: the app's model."""
    lm = MODEL.lm if lm is None else lm
    return MAX_LEN if lm is None else min(MAX_LEN, TRACE_MAX_BYTES // bytes_per_step(lm, include))


MODEL = Loaded(None, "no model", "", "the app has not loaded a model yet")


def start(requested: Optional[str]) -> Loaded:
    """Load the app's model (once, at start) for every adapter."""
    global MODEL
    MODEL = load_model(requested)
    return MODEL


def model() -> MambaLM:
    """The app's model, or a user error saying why there is none."""
    if MODEL.lm is None:
        raise ValueError(f"no model is loaded: {MODEL.error}")
    return MODEL.lm


def _gpu(fn):
    """@spaces.GPU when the package is there (it does nothing outside a ZeroGPU Space)."""
    return spaces.GPU(fn) if spaces is not None else fn


@_gpu
def run_trace(tokens: np.ndarray, include: Optional[tuple] = None):
    """The one model call of the Explore tab: a Trace of numpy (CPU) arrays (backend: triton on
    CUDA, else the CPU kernels). include: the per-layer quantities to keep (None = all; the charts
    need only Δ and the norms, which at L = 2^16 is ~130 MB instead of ~400 MB). A task model whose
    trace keeps only the top-k (MQAR: 8,192 tokens) also keeps p of its targets at every step: a
    query's target is not the next token there."""
    lm, kw = model(), {}
    if not is_plain_lm() and not keeps_full(lm.config.vocab_size, None):
        targets = sorted({t for _, t in MODEL.task.positions(tokens).scored})
        if len(targets) > WATCH_MAX:        # [L, V] instead would be 4 GB at L = 65,536, V = 8,192
            raise ValueError(f"the sequence asks for {len(targets):,} different answers; the app keeps the "
                             f"probability of at most {WATCH_MAX} of them at every step (fewer pairs or queries)")
        kw = {"watch": targets}
    return lm.trace(tokens, include=include, **kw)


def backend_note() -> str:
    return f"{resolve_backend(None, DEVICE)} on {DEVICE.type}"


# ---------------------------------------------------------------- errors
def shown(x, n: int = SHOWN_CHARS) -> str:
    """The user's value as an error message shows it: repr, cut at n characters."""
    s = repr(x) if isinstance(x, str) else str(x)
    return s if len(s) <= n else s[:n] + "…"


def user_errors(fn):
    """Bad input becomes a gr.Error with its specific message (never a stack trace, in the page
    or in the server log); the inputs, the user's text among them, stay as they were. The
    widgets carry no minimum/maximum: every limit is checked behind this, with our messages."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, CheckpointError) as e:      # TokenError is a ValueError
            msg = str(e)
            msg = msg if len(msg) <= MESSAGE_CHARS else msg[:MESSAGE_CHARS] + "…"
            raise gr.Error(msg, print_exception=False) from e
    return wrapper


# ---------------------------------------------------------------- widget values -> typed values
def _bound(v: int, field: str, lo: Optional[int], hi: Optional[int]) -> int:
    lo = INT64[0] if lo is None else lo
    hi = INT64[1] if hi is None else hi
    if not lo <= v <= hi:
        top = "2^63-1" if hi == INT64[1] else str(hi)
        bottom = "-2^63" if lo == INT64[0] else str(lo)
        raise ValueError(f"{field} {shown(v)} is out of range {bottom}..{top}")
    return v


def whole(x, field: str, lo: Optional[int] = None, hi: Optional[int] = None, optional: bool = False) -> Optional[int]:
    """A whole-number widget's value (int, or a float with no fraction) -> int in [lo, hi]
    (default: int64's range); None (an empty box) -> None where `optional`, else an error."""
    if x is None or (optional and isinstance(x, str) and not x.strip()):
        if optional:
            return None
        raise ValueError(f"{field} is empty: give a whole number")
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise ValueError(f"{field} must be a whole number, got {shown(x)}")
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(x):
            raise ValueError(f"{field} must be a finite whole number, got {x}")
        if not float(x).is_integer():
            raise ValueError(f"{field} must be a whole number, got {shown(x)}")
    return _bound(int(x), field, lo, hi)


def optional_whole(x, field: str, lo: Optional[int] = None, hi: Optional[int] = None) -> Optional[int]:
    """A text box that takes an optional whole number (a browser's empty number box sends 0, which
    cannot mean "not given"): None or blank -> None; ASCII digits (with a leading -) or a whole
    number -> int in [lo, hi]."""
    if isinstance(x, str):
        s = x.strip()
        if not s:
            return None
        body = s[1:] if s.startswith("-") else s
        if not (body.isascii() and body.isdigit()) or len(body) > 18:
            raise ValueError(f"{field} must be a whole number or empty, got {shown(x)}")
        x = int(s)
    return whole(x, field, lo, hi, optional=True)


def number(x, field: str, lo: float, hi: float) -> float:
    """A number widget's value -> a finite float in [lo, hi]."""
    if x is None:
        raise ValueError(f"{field} is empty: give a number")
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise ValueError(f"{field} must be a number, got {shown(x)}")
    if not math.isfinite(float(x)) or not lo <= float(x) <= hi:
        raise ValueError(f"{field} {shown(x)} is out of range {lo:g}..{hi:g}")
    return float(x)


def choice(x, field: str, options: Sequence[str]) -> str:
    """One of `options` (a radio button or a dropdown), compared as text."""
    if not isinstance(x, (str, int, float)) or isinstance(x, bool) or str(x) not in [str(o) for o in options]:
        raise ValueError(f"unknown {field} {shown(x)}; choose one of {', '.join(map(repr, map(str, options)))}")
    return str(x)


def choices(x, field: str, options: Sequence[str]) -> list:
    """A checkbox group's value: a list of distinct `options` (possibly empty)."""
    if x is None:
        return []
    if not isinstance(x, (list, tuple)):
        raise ValueError(f"{field} must be a list of choices, got {shown(x)}")
    return sorted({choice(v, field, options) for v in x}, key=list(map(str, options)).index)


def flag(x, field: str) -> bool:
    """A checkbox's value: true or false."""
    if not isinstance(x, bool):
        raise ValueError(f"{field} must be true or false, got {shown(x)}")
    return x


def text(x, field: str) -> str:
    """A text box's value: text (None = empty)."""
    if x is None:
        return ""
    if not isinstance(x, str):
        raise ValueError(f"{field} must be text, got {type(x).__name__}")
    return x


def tokens(x, include: Optional[tuple] = CHART_QUANTITIES) -> np.ndarray:
    """The token text box -> int64 [L] ids in the loaded task's vocabulary (tasks' parser: its
    errors name the token and show at most 20 characters of it), at most length_cap(include=) of
    them: include is what the request's trace records per layer (None: every quantity)."""
    cap = length_cap(include=include)
    try:
        return MODEL.task.parse(text(x, "the sequence"), max_len=cap)
    except TokenError as e:
        if cap < MAX_LEN and "over the cap" in str(e):      # say why a large model's cap is lower
            what = "every quantity of" if include is None else "Δ and the state norm of"
            raise TokenError(f"{e} (the cap for a model this size: a trace of {what} its "
                             f"{MODEL.config.n_layer} layers keeps {bytes_per_step(MODEL.lm, include) / 1024:,.0f} KB "
                             f"per token, at most {TRACE_MAX_BYTES / 2**30:g} GiB)") from None
        raise


def layer_names(n_layer: int) -> list:
    return [f"layer {i + 1}" for i in range(n_layer)]


def layer_index(x, n_layer: int, field: str = "layer") -> int:
    """'layer 2' -> 1, checked against n_layer."""
    s = x if isinstance(x, str) else None
    parts = s.split() if s is not None else []
    if len(parts) != 2 or parts[0] != "layer" or not parts[1].isascii() or not parts[1].isdigit() \
            or len(parts[1]) > 6:
        raise ValueError(f"unknown {field} {shown(x)}; choose e.g. 'layer 1'")
    i = int(parts[1])
    if not 1 <= i <= n_layer:
        raise ValueError(f"{field} {i} is out of range 1..{n_layer}")
    return i - 1
