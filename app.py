"""mambascope: edit an induction-heads sequence and see Δ, hidden-state norms and predictions of
a 2-layer Mamba per layer and timestep; export the trace.

    python app.py                                   # serves on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT
    python app.py --checkpoint runs/s0/best.safetensors
    MAMBASCOPE_CHECKPOINT=... python app.py

This file is wiring: it loads the model once, lays out the UI (`build_ui`) and connects widgets
to adapter functions whose typed parameters mirror the widgets one to one. Sequences, charts
and tables live in viz/ (numpy in, Altair / files out); the model in model/.
A view is a pure function of the widgets: every edit re-runs the model (8 ms at L=256), so no
trace is kept between calls and nothing mutable is shared between users.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Optional

import gradio as gr
import numpy as np
import torch
from gradio.components.plot import PlotData

from kernels import resolve_backend
from model import CheckpointError, MambaConfig, MambaLM, load_checkpoint
from model.data import induction_batch
from viz import charts, sequences, summary, tables
from viz.frames import MAX_BINS_DEFAULT, MAX_BINS_LIMIT, TraceView, clamp_window, time_bins

try:                                     # Hugging Face ZeroGPU: the GPU is lent per decorated call
    import spaces
except ImportError:
    spaces = None

# ---------------------------------------------------------------- settings (one block)
ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "induction-2layer.safetensors"
CHECKPOINT_ENV = "MAMBASCOPE_CHECKPOINT"
FRESH_SEED = 0                           # the untrained fallback model is reproducible
CONCURRENCY = 2                          # model runs at once (2 CPU cores on the free Space tier)
MAX_QUEUE = 64                           # requests waiting beyond that are refused, not piled up
EXPORT_MAX_AGE_S = 3600                  # exported files are removed after an hour
VIEW_QUANTITIES = ("delta", "state_norm")   # what the charts draw (exports take everything)
ZERO_GPU = spaces is not None and bool(os.environ.get("SPACES_ZERO_GPU"))
DEVICE = torch.device("cuda" if (torch.cuda.is_available() or ZERO_GPU) else "cpu")
if DEVICE.type == "cpu":
    # one intra-op thread per request: with CONCURRENCY requests on few cores, more threads
    # oversubscribe them (measured: a 16k trace 2.6 s with 1 thread vs 55 s with 2 under load)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // CONCURRENCY))


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None,
                   help=f"safetensors checkpoint (default: ${CHECKPOINT_ENV}, else {DEFAULT_CHECKPOINT.name})")
    return p.parse_args(argv)


# ---------------------------------------------------------------- the model, loaded once
@dataclass(frozen=True)
class Loaded:
    lm: Optional[MambaLM]      # None when an explicitly requested checkpoint could not be loaded
    label: str                 # short, for chart titles and file metadata
    status: str                # Markdown banner
    error: Optional[str]       # why lm is None


def load_model(requested: Optional[str]) -> Loaded:
    """`requested` (flag or env var) must load; the default checkpoint may be absent (it is being
    trained): then a seeded, freshly initialised model, and the banner says so."""
    backend = resolve_backend(None, DEVICE)
    path = Path(requested) if requested else DEFAULT_CHECKPOINT
    try:
        lm = load_checkpoint(path, device=DEVICE)
    except CheckpointError as e:
        if requested:
            print(f"mambascope: {e}", file=sys.stderr)
            return Loaded(None, "no model", f"❌ **Could not load the requested checkpoint.** {e}", str(e))
        torch.manual_seed(FRESH_SEED)
        lm = MambaLM(MambaConfig(), device=DEVICE).eval()
        why = "not found" if not path.exists() else f"unreadable ({e})"
        return Loaded(lm, f"untrained model (seed {FRESH_SEED})",
                      f"⚠️ **Untrained model.** `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}` "
                      f"is {why}, so this is a freshly initialised `MambaLM(MambaConfig())` (seed {FRESH_SEED}): "
                      f"its predictions are at chance. Pass `--checkpoint PATH` or set `{CHECKPOINT_ENV}`. "
                      f"Scan backend: `{backend}` on `{DEVICE.type}`.", None)
    task = lm.task or {}
    trained = f", trained on {task.get('name', '?')} at L = {task['train_len']}" if "train_len" in task else ""
    return Loaded(lm, f"{path.stem} ({lm.checkpoint_sha256[:8]})",
                  f"**Model** `{path.name}` · sha256 `{lm.checkpoint_sha256[:12]}…`{trained} · "
                  f"{lm.config.n_layer} layers, d_model {lm.config.d_model} · scan backend `{backend}` "
                  f"on `{DEVICE.type}`", None)


charts.fast_construction()       # no schema validation per chart object (tests validate the specs)
ARGS = parse_args(sys.argv[1:] if __name__ == "__main__" else [])
MODEL = load_model(ARGS.checkpoint or os.environ.get(CHECKPOINT_ENV) or None)
N_LAYER = MODEL.lm.config.n_layer if MODEL.lm is not None else MambaConfig().n_layer
VOCAB = MODEL.lm.config.vocab_size if MODEL.lm is not None else sequences.VOCAB
EXPORT_ROOT = Path(tempfile.gettempdir()) / "mambascope-exports"


def _gpu(fn):
    """@spaces.GPU when the package is there (it does nothing outside a ZeroGPU Space)."""
    return spaces.GPU(fn) if spaces is not None else fn


@_gpu
def run_trace(tokens: np.ndarray, include: Optional[tuple] = None):
    """The one model call: a Trace of numpy (CPU) arrays; backend None = triton on CUDA, else torch.
    include: the per-layer quantities to keep (None = all; the charts need only Δ and the norms,
    which at L = 2^16 is ~130 MB instead of ~400 MB)."""
    return MODEL.lm.trace(tokens, include=include)


# ---------------------------------------------------------------- adapters: widgets -> values
def user_errors(fn):
    """Bad input becomes a gr.Error with its specific message (never a stack trace); the inputs,
    the user's text among them, stay as they were. The widgets carry no minimum/maximum: every
    limit is checked behind this, with our messages (gr.Number's own check logs a traceback)."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        if MODEL.lm is None and fn.__name__ not in _NO_MODEL_NEEDED:
            raise gr.Error(f"no model is loaded: {MODEL.error}", print_exception=False)
        try:
            return fn(*args, **kwargs)
        except (ValueError, CheckpointError) as e:      # TokenError is a ValueError
            # the user's mistake, not the server's: no traceback in the server log either
            raise gr.Error(str(e), print_exception=False) from e
    return wrapper


def _tokens(text: str) -> np.ndarray:
    return sequences.parse_tokens(text, vocab_size=VOCAB)


def _int(x, name: str) -> int:
    if x is None or (isinstance(x, float) and not float(x).is_integer()):
        raise ValueError(f"{name} must be a whole number, got {x!r}")
    return int(x)


def _opt_int(x) -> Optional[int]:
    return None if x is None or x == "" else int(x)


def _layers(selected: list) -> list:
    if not selected:
        raise ValueError("choose at least one layer to show")
    return sorted(int(s.split()[-1]) - 1 for s in selected)


def _view(text: str, include: Optional[tuple] = VIEW_QUANTITIES):
    tokens = _tokens(text)
    t = time.perf_counter()
    tr = run_trace(tokens, include)
    return tr, TraceView.from_trace(tr, label=MODEL.label), time.perf_counter() - t


@user_errors
def show(tokens_text: str, channel_sort: str, max_bins: float, t_from: Optional[float], t_to: Optional[float],
         layers: list, bin_stat: str):
    """The whole view: (compound chart, summary Markdown)."""
    _, view, seconds = _view(tokens_text)
    bins_n = _int(max_bins, "time bins")
    chart = charts.dashboard(view, sort="ratio" if channel_sort.startswith("Δ") else "index", max_bins=bins_n,
                             t_from=_opt_int(t_from), t_to=_opt_int(t_to), layers=_layers(layers), stat=bin_stat)
    width = time_bins(*clamp_window(view.length, _opt_int(t_from), _opt_int(t_to)), bins_n).width
    note = f"<br><small>model run: {seconds * 1000:.0f} ms ({resolve_backend(None, DEVICE)} on {DEVICE.type})</small>"
    return chart, summary.describe(view, width) + note


def show_plot(tokens_text: str, channel_sort: str, max_bins: float, t_from: Optional[float],
              t_to: Optional[float], layers: list, bin_stat: str):
    """`show` for gr.Plot: the spec serialised here without a second schema validation (gr.Plot
    would call chart.to_json(), which re-validates: ~0.5 s per trace; tests validate the specs)."""
    chart, text = show(tokens_text, channel_sort, max_bins, t_from, t_to, layers, bin_stat)
    return PlotData(type="altair", plot=charts.spec_json(chart)), text


@user_errors
def generate(length: float, trigger_pos: float, memory: float, seed: float, n_triggers: float,
             filler_excludes_memory: bool, memory_in_filler_every: float) -> str:
    g = sequences.Generator(length=_int(length, "length"), trigger_pos=_int(trigger_pos, "trigger position"),
                            memory=_int(memory, "memory token"), seed=_int(seed, "seed"),
                            n_triggers=_int(n_triggers, "number of triggers"),
                            filler_excludes_memory=bool(filler_excludes_memory),
                            memory_in_filler_every=_int(memory_in_filler_every, "M in filler every"))
    return sequences.format_tokens(sequences.realize(g, induction_batch))


@user_errors
def apply_preset(name: str):
    """A preset fills the generator widgets and the text box (then the view re-runs)."""
    if name not in sequences.PRESETS:
        raise ValueError(f"unknown preset {name!r}")
    g = sequences.PRESETS[name]
    text = sequences.format_tokens(sequences.realize(g, induction_batch))
    return (g.length, g.trigger_pos, g.memory, g.seed, g.n_triggers, g.filler_excludes_memory,
            g.memory_in_filler_every, text, sequences.PRESET_NOTES[name])


@user_errors
def set_memory(tokens_text: str, memory: float) -> str:
    return sequences.format_tokens(sequences.set_memory_token(_tokens(tokens_text), _int(memory, "memory token")))


@user_errors
def move_trigger(tokens_text: str, position: float) -> str:
    return sequences.format_tokens(sequences.move_trigger(_tokens(tokens_text), _int(position, "trigger position")))


def _export_path(name: str) -> Path:
    """A fresh folder per export (no two users share a file); folders older than an hour go."""
    EXPORT_ROOT.mkdir(exist_ok=True)
    now = time.time()
    for old in EXPORT_ROOT.iterdir():
        try:
            if now - old.stat().st_mtime > EXPORT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:          # another request removed it first
            pass
    d = EXPORT_ROOT / uuid.uuid4().hex
    d.mkdir()
    return d / name


@user_errors
def export_safetensors(tokens_text: str) -> str:
    tr, view, _ = _view(tokens_text, include=None)
    tr.meta["label"] = MODEL.label
    path = _export_path(f"trace-L{view.length}.safetensors")
    tr.save(path)
    return str(path)


@user_errors
def export_csv(tokens_text: str, t_from: Optional[float], t_to: Optional[float], all_quantities: bool) -> str:
    quantities = tables.ALL_QUANTITIES if all_quantities else tables.DEFAULT_QUANTITIES
    tr, view, _ = _view(tokens_text, include=None if all_quantities else VIEW_QUANTITIES)
    t0, t1 = clamp_window(view.length, _opt_int(t_from), _opt_int(t_to))
    path = _export_path(f"trace-L{view.length}-t{t0}-{t1 - 1}.csv.gz")
    tables.write_tidy_csv(tr, path, quantities, t_from=t0, t_to=t1)
    return str(path)


@user_errors
def export_html(tokens_text: str, channel_sort: str, max_bins: float, t_from: Optional[float],
                t_to: Optional[float], layers: list, bin_stat: str) -> str:
    chart, _ = show.__wrapped__(tokens_text, channel_sort, max_bins, t_from, t_to, layers, bin_stat)
    path = _export_path(f"charts-L{len(_tokens(tokens_text))}.html")
    path.write_text(charts.chart_html(chart), encoding="utf-8")
    return str(path)


_NO_MODEL_NEEDED = {"generate", "apply_preset", "set_memory", "move_trigger"}


# ---------------------------------------------------------------- layout
INTRO = """# mambascope
A 2-layer Mamba on the **induction-heads** task (Mamba paper §4.1.2): a sequence `… S M … S`
asks the model to recall the memory token **M** that followed the first trigger **S**.
Edit the sequence and watch Δ (how much each channel writes), the hidden-state norms and the
predictions, per layer and timestep. Drag across any time chart to highlight a range in all of them."""


def build_ui() -> gr.Blocks:
    first = sequences.PRESETS["Paper setup (L=256)"]
    with gr.Blocks(title="mambascope", delete_cache=(EXPORT_MAX_AGE_S, EXPORT_MAX_AGE_S)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(MODEL.status, elem_id="model-status")
        with gr.Tabs():
            with gr.Tab("Explore", id="explore"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=320):
                        text = gr.Textbox(label="Tokens (0–15, S = trigger 16; spaces or commas)", lines=6,
                                          max_lines=12, elem_id="tokens",
                                          value=sequences.format_tokens(sequences.realize(first, induction_batch)))
                        run = gr.Button("Run", variant="primary", elem_id="run")
                        preset = gr.Dropdown(list(sequences.PRESETS), value=None, label="Presets", elem_id="preset")
                        preset_note = gr.Markdown()
                        with gr.Accordion("Generate", open=False):
                            length = gr.Number(first.length, label=f"length (3..{sequences.MAX_LEN})", precision=0)
                            trig = gr.Number(-1, label="trigger position (-1 = random)", precision=0)
                            mem = gr.Number(-1, label="memory token (-1 = random)", precision=0)
                            seed = gr.Number(0, label="seed", precision=0)
                            n_trig = gr.Radio([0, 1, 2], value=1, label="triggers before the query")
                            excl = gr.Checkbox(False, label="filler excludes M")
                            every = gr.Number(0, label="also plant M in the filler every k steps (0 = off)",
                                              precision=0)
                            gen = gr.Button("Generate", elem_id="generate")
                        with gr.Accordion("Quick edits", open=True):
                            with gr.Row():
                                new_mem = gr.Number(0, label="memory token (0..15)", precision=0)
                                set_mem = gr.Button("Set M", elem_id="set-memory")
                            with gr.Row():
                                new_pos = gr.Number(10, label="trigger position", precision=0)
                                move = gr.Button("Move S M", elem_id="move-trigger")
                    with gr.Column(scale=3):
                        with gr.Row():
                            sort = gr.Radio(["index", "Δ ratio"], value="index", label="channel order")
                            bins = gr.Slider(16, MAX_BINS_LIMIT, value=MAX_BINS_DEFAULT, step=16,
                                             label="max time bins")
                            stat = gr.Radio(["max", "mean"], value="max", label="binned heatmaps show")
                        with gr.Row():
                            t_from = gr.Number(None, label="window from t", precision=0)
                            t_to = gr.Number(None, label="window to t (exclusive; 0 = the end)", precision=0)
                            layers = gr.CheckboxGroup([f"layer {i + 1}" for i in range(N_LAYER)],
                                                      value=[f"layer {i + 1}" for i in range(N_LAYER)],
                                                      label="layers")
                        info = gr.Markdown(elem_id="summary")
                        plot = gr.Plot(label="trace", show_label=False, elem_id="charts")
                        with gr.Accordion("Export", open=False):
                            gr.Markdown(
                                "The **safetensors** trace holds every array (MambaLens keys, `Trace.load`) and the "
                                "metadata (config, checkpoint sha256, tokens). The **CSV** is tidy "
                                "(layer, t, channel, quantity, value), gzipped, for the window above; at most "
                                f"{tables.CSV_MAX_ROWS:,} rows, otherwise it says so and writes nothing. The "
                                "**HTML** page holds all the charts as shown.")
                            all_q = gr.Checkbox(False, label="CSV: all quantities (u, y, B, C, residual, logits)")
                            with gr.Row():
                                b_st = gr.Button("Trace (.safetensors)", elem_id="export-safetensors")
                                b_csv = gr.Button("Tidy CSV (.csv.gz)", elem_id="export-csv")
                                b_html = gr.Button("Charts (.html)", elem_id="export-html")
                            out_file = gr.File(label="download", elem_id="export-file")

        view_in = [text, sort, bins, t_from, t_to, layers, stat]
        view_out = [plot, info]
        gen_widgets = [length, trig, mem, seed, n_trig, excl, every]
        run.click(show_plot, view_in, view_out, api_name="run")
        text.submit(show_plot, view_in, view_out, api_name=False)
        for w in (sort, bins, stat, layers):
            w.change(show_plot, view_in, view_out, api_name=False)
        for w in (t_from, t_to):
            w.submit(show_plot, view_in, view_out, api_name=False)
        gen.click(generate, gen_widgets, text, api_name="generate").success(
            show_plot, view_in, view_out, api_name=False)
        preset.input(apply_preset, preset, gen_widgets + [text, preset_note], api_name="preset").success(
            show_plot, view_in, view_out, api_name=False)
        set_mem.click(set_memory, [text, new_mem], text, api_name="set_memory").success(
            show_plot, view_in, view_out, api_name=False)
        move.click(move_trigger, [text, new_pos], text, api_name="move_trigger").success(
            show_plot, view_in, view_out, api_name=False)
        b_st.click(export_safetensors, text, out_file, api_name="export_safetensors")
        b_csv.click(export_csv, [text, t_from, t_to, all_q], out_file, api_name="export_csv")
        b_html.click(export_html, view_in, out_file, api_name="export_html")
        demo.load(show_plot, view_in, view_out, api_name=False)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=MAX_QUEUE)
    return demo


demo = build_ui()

if __name__ == "__main__":
    demo.launch()        # host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
