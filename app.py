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
from kernels.cpu_memory import keep_freed_memory
from model import CheckpointError, MambaConfig, MambaLM, compare, load_checkpoint
from model.data import induction_batch
from viz import charts, mechanism, sequences, summary, tables
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
CHECKPOINT_DIR = ROOT / "checkpoints"    # the Mechanism tab offers every *.safetensors in here
ATTENTION_MAX_BINS = 96                  # hidden attention <= 96 x 96 cells: the lower triangle's 4,656
                                         # rects stay under Altair's 5,000-row limit for DataFrames
MEAN_CHANNELS = "mean over channels"     # channel choice: mean |α̃| over all channels
MEMORY_CHANNELS = "memory channels"      # channel text: the 16 top-Δ-ratio channels of the layer
ZERO_GPU = spaces is not None and bool(os.environ.get("SPACES_ZERO_GPU"))
DEVICE = torch.device("cuda" if (torch.cuda.is_available() or ZERO_GPU) else "cpu")
if DEVICE.type == "cpu":
    # one intra-op thread per request: with CONCURRENCY requests on few cores, more threads
    # oversubscribe them (measured: a 16k trace 2.6 s with 1 thread vs 55 s with 2 under load)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // CONCURRENCY))
    keep_freed_memory()                  # no page faults for each request's activations


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


# ---------------------------------------------------------------- adapters: the Mechanism tab
# These run the checkpoints chosen in the tab (model/compare.py loads each once), not MODEL.
# Their dropdowns allow custom values so that a bad name reaches our check and its message
# (Gradio's own choices check logs a traceback).
def _plot(chart) -> PlotData:
    return PlotData(type="altair", plot=charts.spec_json(chart))


def _layer(choice: str) -> int:
    """'layer 2' -> 1."""
    try:
        return int(str(choice).split()[-1]) - 1
    except (ValueError, IndexError):
        raise ValueError(f"unknown layer {choice!r}; choose e.g. 'layer 1'") from None


def _ratio_note(ratio: Optional[np.ndarray]) -> str:
    if ratio is None:
        return "no S M pair: no Δ ratio"
    return " · ".join(f"layer {i + 1}: max Δ ratio {r.max():.3g} (ch {int(r.argmax())})" for i, r in enumerate(ratio))


@user_errors
def compare_checkpoints(tokens_text: str, checkpoint_a: str, checkpoint_b: str):
    """The same sequence on two checkpoints: (Markdown table, Δ-ratio chart A, Δ-ratio chart B)."""
    tokens = _tokens(tokens_text)
    rows, plots = [], []
    for name in (checkpoint_a, checkpoint_b):
        lm = compare.load_named(CHECKPOINT_DIR, name, DEVICE)
        pred, ratio = compare.query_summary(lm, tokens)
        rows.append((name, pred.top, pred.p_top, pred.memory, pred.p_memory, _ratio_note(ratio)))
        plots.append(None if ratio is None else _plot(mechanism.delta_ratio_chart(ratio, label=name)))
    return mechanism.prediction_markdown(rows), plots[0], plots[1]


def _channel(choice) -> Optional[int]:
    if choice is None or str(choice).strip() == MEAN_CHANNELS:
        return None
    try:
        return int(str(choice).strip())
    except ValueError:
        raise ValueError(f"channel {choice!r} is not a whole number or {MEAN_CHANNELS!r}") from None


@user_errors
def show_attention(tokens_text: str, checkpoint: str, layer: str, channel: str) -> PlotData:
    """Hidden attention α̃ of one layer (one channel or mean |α̃|), binned to ATTENTION_MAX_BINS."""
    tokens = _tokens(tokens_text)
    lm = compare.load_named(CHECKPOINT_DIR, checkpoint, DEVICE)
    ch = _channel(channel)
    alpha = compare.attention_map(lm, tokens, _layer(layer), ch)
    what = MEAN_CHANNELS + " of |α̃|" if ch is None else f"channel {ch}"
    return _plot(mechanism.hidden_attention_chart(alpha, tokens=tokens, max_bins=ATTENTION_MAX_BINS,
                                                  title=f"{checkpoint}: layer {_layer(layer) + 1}, {what}"))


@user_errors
def intervene(tokens_text: str, checkpoint: str, kind: str, layer: str, channels_text: str,
              timestep: Optional[float], until: Optional[float], value: float):
    """Query prediction before vs after one intervention: (Markdown table, p(M)-over-t chart).
    timestep empty = the write position (the memory token M after the first S)."""
    tokens = _tokens(tokens_text)
    lm = compare.load_named(CHECKPOINT_DIR, checkpoint, DEVICE)
    li = _layer(layer)
    if not 0 <= li < lm.config.n_layer:
        raise ValueError(f"layer {li + 1} is out of range 1..{lm.config.n_layer}")
    if timestep is None or timestep == "":
        write = sequences.task_positions(tokens).memory_pos
        if not write:
            raise ValueError("give a timestep: the sequence has no S M pair whose write position to default to")
        t = write[0]
    else:
        t = _int(timestep, "timestep")
    channels = ()
    if kind != "ablate layer SSM output":
        channels = (compare.memory_channels(lm, tokens, li) if channels_text.strip().lower() == MEMORY_CHANNELS
                    else compare.parse_channels(channels_text, lm.config.d_inner))
    iv = compare.make_intervention(kind, li, channels, t, None if until in (None, "") else _int(until, "until t"),
                                   value, len(tokens))
    before, after = compare.run_intervention(lm, tokens, iv)
    where = f"layer {li + 1}, t = {t}" + (f", channels {', '.join(map(str, channels))}" if channels else "")
    md = mechanism.prediction_markdown([("before", before.top, before.p_top, before.memory, before.p_memory, ""),
                                        ("after", after.top, after.p_top, after.memory, after.p_memory,
                                         f"{kind} ({where})")])
    chart = None if before.p_memory_t is None else _plot(mechanism.p_memory_chart(
        before.p_memory_t, after.p_memory_t, title=f"p(M) before vs after {kind}, {where}"))
    return md, chart


_NO_MODEL_NEEDED = {"generate", "apply_preset", "set_memory", "move_trigger", "compare_checkpoints",
                    "show_attention", "intervene"}


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

            with gr.Tab("Mechanism", id="mechanism"):
                ck_names = compare.list_checkpoints(CHECKPOINT_DIR)
                ck_first = DEFAULT_CHECKPOINT.name if DEFAULT_CHECKPOINT.name in ck_names else (ck_names or [None])[0]
                ck_second = next((n for n in ck_names if n.startswith("analytic")), ck_first)
                gr.Markdown("The sequence of the **Explore** tab on checkpoints from `checkpoints/`: the "
                            "prediction at the query and the Δ ratio (Δ at the memory token / median Δ elsewhere) "
                            "side by side, the hidden attention α̃ of a layer, and interventions.")
                with gr.Row():
                    ck_a = gr.Dropdown(ck_names, value=ck_first, label="checkpoint", allow_custom_value=True,
                                       elem_id="mech-checkpoint")
                    ck_b = gr.Dropdown(ck_names, value=ck_second, label="compare with", allow_custom_value=True,
                                       elem_id="mech-compare")
                    cmp_btn = gr.Button("Compare", variant="primary", elem_id="mech-run-compare")
                cmp_md = gr.Markdown(elem_id="mech-compare-summary")
                with gr.Row():
                    cmp_a = gr.Plot(show_label=False, elem_id="mech-ratio-a")
                    cmp_b = gr.Plot(show_label=False, elem_id="mech-ratio-b")
                with gr.Accordion("Hidden attention α̃ (sequences up to 2048 tokens)", open=True):
                    with gr.Row():
                        att_layer = gr.Dropdown([f"layer {i + 1}" for i in range(N_LAYER)], value=f"layer {N_LAYER}",
                                                allow_custom_value=True, label="layer")
                        att_ch = gr.Dropdown([MEAN_CHANNELS] + [str(c) for c in range(MambaConfig().d_inner)],
                                             value=MEAN_CHANNELS, allow_custom_value=True, label="channel")
                        att_btn = gr.Button("Show hidden attention", elem_id="mech-run-attention")
                    att_plot = gr.Plot(show_label=False, elem_id="mech-attention")
                with gr.Accordion("Interventions (on the checkpoint chosen above)", open=True):
                    with gr.Row():
                        iv_kind = gr.Radio(list(compare.INTERVENTIONS), value=compare.INTERVENTIONS[0], label="type")
                        iv_layer = gr.Dropdown([f"layer {i + 1}" for i in range(N_LAYER)], value=f"layer {N_LAYER}",
                                               allow_custom_value=True, label="layer")
                        iv_ch = gr.Textbox(MEMORY_CHANNELS, label=f"channels ('3, 7, 88' or '{MEMORY_CHANNELS}')")
                    with gr.Row():
                        iv_t = gr.Number(None, label="timestep t (empty = the write position, M after S)",
                                         precision=0)
                        iv_until = gr.Number(None, label="until t (exclusive; empty = t + 1)", precision=0)
                        iv_value = gr.Number(0.0, label="clamp Δ to")
                        iv_btn = gr.Button("Run intervention", elem_id="mech-run-intervention")
                    iv_md = gr.Markdown(elem_id="mech-intervention-summary")
                    iv_plot = gr.Plot(show_label=False, elem_id="mech-intervention")

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
        cmp_btn.click(compare_checkpoints, [text, ck_a, ck_b], [cmp_md, cmp_a, cmp_b], api_name="compare")
        att_btn.click(show_attention, [text, ck_a, att_layer, att_ch], att_plot, api_name="hidden_attention")
        iv_btn.click(intervene, [text, ck_a, iv_kind, iv_layer, iv_ch, iv_t, iv_until, iv_value], [iv_md, iv_plot],
                     api_name="intervene")
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=MAX_QUEUE)
    return demo


demo = build_ui()

# Gradio centres a plot in its box: a dashboard wider than the box lost its left edge (the
# channel axis, the title) out of reach; left-aligned, the overflow scrolls instead
CSS = ".altair { align-items: flex-start !important; overflow-x: auto; }"

if __name__ == "__main__":
    demo.launch(css=CSS)  # host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
