"""mambascope: edit an induction-heads sequence and see Δ, hidden-state norms and predictions of
a 2-layer Mamba per layer and timestep; compare checkpoints, patch activations, read the logit
lens; export the trace, or any chart as a figure; share the view as a link.

    python app.py                                   # serves on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT
    python app.py --checkpoint runs/s0/best.safetensors
    MAMBASCOPE_CHECKPOINT=... python app.py

This file is layout and wiring: it loads the model once (ui/common.py), lays out the four tabs
(`build_ui`) and connects widgets to the adapters in ui/ (one module per tab), whose parameters
mirror the widgets one to one. Every endpoint takes its inputs raw (`preprocess=False`): the
adapters check each value themselves and answer bad ones with a message naming the field.
Every event runs in one of two lanes (ui/limits.py): heavy (model runs, charts, files: one shared
concurrency limit) or light (the numpy edits and links).
"""
from __future__ import annotations

import argparse
import os
import sys

import gradio as gr

from tasks import MAX_LEN
from tasks import induction as ind
from ui import common, explore, export, figure, lens, limits, mechanism, memory, patching, permalink, storage
from viz import charts, tables
from viz.frames import MAX_BINS_DEFAULT, MAX_BINS_LIMIT

# Gradio centres a plot in its box: a dashboard wider than the box lost its left edge (the
# channel axis, the title) out of reach; left-aligned, the overflow scrolls instead
CSS = ".altair { align-items: flex-start !important; overflow-x: auto; }"
# Gradio's run history saves every run's inputs and outputs in the browser's localStorage: 1.6 MB
# per mamba-130m view (the store holds ~5 MB) and 0.1-0.2 s of the page's main thread per run.
# The permalinks are this app's history.
RUN_HISTORY = False
# the "copy link" button's second step: the server's query string -> this page's address + it, copied
COPY_LINK_JS = """(query) => {
  const url = window.location.origin + window.location.pathname + query;
  if (navigator.clipboard) navigator.clipboard.writeText(url).catch(() => {});
  return url;
}"""
INTRO = """# mambascope
A 2-layer Mamba on the **induction-heads** task (Mamba paper §4.1.2): a sequence `… S M … S`
asks the model to recall the memory token **M** that followed the first trigger **S**.
Edit the sequence and watch Δ (how much each channel writes), the hidden-state norms and the
predictions, per layer and timestep. Drag across any time chart to highlight a range in all of them."""


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None,
                   help=f"safetensors checkpoint (default: ${common.CHECKPOINT_ENV}, else "
                        f"{common.DEFAULT_CHECKPOINT.name})")
    return p.parse_args(argv)


def wire(event, fn, inputs, outputs, api_name=None, lane=limits.HEAVY):
    """One event -> one adapter, inputs raw (the adapters check them); api_name None = not an API
    endpoint. lane: limits.HEAVY (the one shared concurrency limit of all model work) or
    limits.LIGHT (the numpy edits, on their own)."""
    kw = {"api_name": api_name} if api_name else {"api_visibility": "private"}
    fn = limits.heavy(fn) if lane == limits.HEAVY else fn
    outs = outputs if isinstance(outputs, list) else [outputs]
    texts = [o for o in outs if isinstance(o, gr.Markdown)]
    if texts and any(isinstance(o, gr.Plot) for o in outs):
        # a timer on the text outputs: Gradio's full overlay (also when on the text alone) kept
        # chromium at ~0.5 core for the whole run; mamba-130m view, click -> charts 4.15 -> 3.04 s
        kw["show_progress_on"] = texts
        kw["show_progress"] = "minimal"
    return event(fn, inputs, outputs, preprocess=False, **kw, **limits.event_kwargs(lane))


def build_ui() -> gr.Blocks:
    first = ind.PRESETS["Paper setup (L=256)"]
    cfg = common.MODEL.config                  # the loaded model's sizes (the default config without one)
    layer_names = common.layer_names(cfg.n_layer)
    task_ui = common.MODEL.lm is None or not common.is_plain_lm()     # a plain LM: no task controls
    induction_ui = task_ui and common.MODEL.task.name == ind.NAME     # the induction generator and edits
    mech_parts = mechanism.task_parts()
    vocab = common.MODEL.task.vocab_size
    other_task = {"selective_copying": "Tokens (data 0–15, _ = noise, ? = marker; spaces or commas)",
                  "mqar": "Tokens (keys 1–4095, values 4096–8191, _ = filler; spaces or commas)"}
    text_label = (other_task.get(common.MODEL.task.name, "Tokens (0–15, S = trigger 16; spaces or commas)")
                  if task_ui else
                  f"Text (tokenised by the model's tokenizer.json; at most {common.length_cap():,} tokens)"
                  if common.MODEL.task.name == "text" else f"Token ids 0..{vocab - 1} (spaces or commas)")
    with gr.Blocks(title="mambascope", delete_cache=(storage.MAX_AGE_S, storage.MAX_AGE_S)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(common.MODEL.status, elem_id="model-status")
        with gr.Row(equal_height=True):
            copy_link = gr.Button("Copy link to this view", elem_id="copy-link", scale=0, min_width=220)
            link_box = gr.Textbox(show_label=False, placeholder="the link appears here (and in the clipboard)",
                                  elem_id="permalink", max_lines=1, scale=4)
        link_note = gr.Markdown(elem_id="link-note")
        tab_box = gr.Textbox("explore", visible=False)          # the selected tab, for the link
        with gr.Tabs() as tabs:
            with gr.Tab("Explore", id="explore") as tab_explore:
                # the controls above the dashboard, not beside it: at 1280 px a side column left the
                # dashboard ~880 px for its ~1,030 (the Δ-ratio column was cut off)
                with gr.Row():
                    with gr.Column(scale=3):
                        text = gr.Textbox(label=text_label, lines=6,
                                          max_lines=12, elem_id="tokens", value=explore.first_text())
                    with gr.Column(scale=2, min_width=320):
                        run = gr.Button("Run", variant="primary", elem_id="run")
                        preset = gr.Dropdown(explore.preset_names() if task_ui else list(ind.PRESETS), value=None,
                                             label="Presets", elem_id="preset", visible=task_ui)
                        preset_note = gr.Markdown()
                        with gr.Accordion("Generate", open=False, visible=induction_ui, elem_id="generate-box"):
                            length = gr.Number(first.length, label=f"length (3..{MAX_LEN})", precision=0)
                            trig = gr.Number(-1, label="trigger position (-1 = random)", precision=0)
                            mem = gr.Number(-1, label="memory token (-1 = random)", precision=0)
                            seed = gr.Number(0, label="seed", precision=0)
                            n_trig = gr.Radio([0, 1, 2], value=1, label="triggers before the query")
                            excl = gr.Checkbox(False, label="filler excludes M")
                            every = gr.Number(0, label="also plant M in the filler every k steps (0 = off)",
                                              precision=0)
                            gen = gr.Button("Generate", elem_id="generate")
                        with gr.Accordion("Quick edits", open=True, visible=induction_ui, elem_id="quick-edits"):
                            with gr.Row():
                                new_mem = gr.Number(0, label="memory token (0..15)", precision=0)
                                set_mem = gr.Button("Set M", elem_id="set-memory")
                            with gr.Row():
                                new_pos = gr.Number(10, label="trigger position", precision=0)
                                move = gr.Button("Move S M", elem_id="move-trigger")
                with gr.Column():
                    with gr.Row():
                        sort = gr.Radio(list(explore.SORTS), value="index", label="channel order")
                        bins = gr.Slider(16, MAX_BINS_LIMIT, value=MAX_BINS_DEFAULT, step=16,
                                         label="max time bins")
                        stat = gr.Radio(list(explore.BIN_STATS), value="max", label="binned heatmaps show")
                    with gr.Row():
                        t_from = gr.Number(None, label="window from t", precision=0)
                        t_to = gr.Number(None, label="window to t (exclusive; 0 = the end)", precision=0)
                        layers = gr.CheckboxGroup(layer_names, value=explore.default_layers(),
                                                  label=f"layers (at most {explore.MAX_LAYERS_SHOWN})")
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
                        gr.Markdown("A **figure** for a paper: any chart of any tab, as PNG (at the DPI below) "
                                    "or SVG, with a caption naming the model's sha256, the sequence and the "
                                    "binning. It is computed from the widgets as they are now.")
                        with gr.Row():
                            fig_of = gr.Dropdown(list(figure.CHARTS), value=figure.CHARTS[0], label="figure of",
                                                 elem_id="figure-of")
                            fig_fmt = gr.Radio(list(figure.FORMATS), value="png", label="format",
                                               elem_id="figure-format")
                            fig_dpi = gr.Number(300, label="dpi (PNG, 36..600)", elem_id="figure-dpi")
                            b_fig = gr.Button("Figure", elem_id="export-figure")
                        out_file = gr.File(label="download", elem_id="export-file")

            with gr.Tab("Mechanism", id="mechanism") as tab_mechanism:
                ck_names = mechanism.checkpoint_names()
                ck_first, ck_second = mechanism.default_pair()
                gr.Markdown("The sequence of the **Explore** tab on checkpoints from `checkpoints/` (and the model "
                            "this app was started with): the prediction at the query and the Δ ratio (max Δ over "
                            "the write window / median Δ over the filler after it) side by side, the hidden "
                            "attention α̃ of a layer, and interventions.")
                gr.Markdown(mech_parts["note"], visible=bool(mech_parts["note"]), elem_id="mech-lm-note")
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
                        att_layer = gr.Dropdown(layer_names, value=layer_names[-1], allow_custom_value=True,
                                                label="layer")
                        att_ch = gr.Dropdown([mechanism.MEAN_CHANNELS] + [str(c) for c in range(cfg.d_inner)],
                                             value=mechanism.MEAN_CHANNELS, allow_custom_value=True, label="channel")
                        att_btn = gr.Button("Show hidden attention", elem_id="mech-run-attention")
                    att_plot = gr.Plot(show_label=False, elem_id="mech-attention")
                with gr.Accordion("Interventions (on the checkpoint chosen above)", open=True):
                    with gr.Row():
                        iv_kind = gr.Radio(list(mechanism.compare.INTERVENTIONS),
                                           value=mechanism.compare.INTERVENTIONS[0], label="type")
                        iv_layer = gr.Dropdown(layer_names, value=layer_names[-1], allow_custom_value=True,
                                               label="layer")
                        iv_ch = gr.Textbox(mech_parts["channels"], label=mech_parts["channels_label"],
                                           elem_id="mech-channels")
                    with gr.Row():
                        iv_t = gr.Number(None, label=mech_parts["t_label"], precision=0, elem_id="mech-t")
                        iv_until = gr.Number(None, label="until t (exclusive; empty = t + 1)", precision=0)
                        iv_value = gr.Number(0.0, label="clamp Δ to (0..1000)")
                        iv_btn = gr.Button("Run intervention", elem_id="mech-run-intervention")
                    iv_md = gr.Markdown(elem_id="mech-intervention-summary")
                    iv_plot = gr.Plot(show_label=False, elem_id="mech-intervention")

            with gr.Tab("Patching", id="patching") as tab_patching:
                gr.Markdown("The **Explore** tab's sequence (clean) beside a corrupted copy, on the app's model: "
                            "how Δ, the state norms and p(target) differ, and **activation patching**: restore one "
                            "activation of the clean run (the state h_t, Δ_t or a layer's output at t) in the "
                            "corrupted run, for every layer and step, and read p(clean target) at the query. "
                            f"Up to {patching.patching.PATCH_MAX_LEN:,} tokens; at most "
                            f"{patching.patching.MAX_POSITIONS} steps are patched (an even grid and the write "
                            "window beyond).")
                with gr.Row():
                    corrupted = gr.Textbox(label="corrupted sequence (as long as the clean one)", lines=3,
                                           max_lines=8, elem_id="corrupted")
                    with gr.Column(min_width=260, visible=induction_ui, elem_id="corrupt-induction"):
                        with gr.Row():
                            c_mem = gr.Number(0, label="memory token", precision=0, min_width=100)
                            c_mem_btn = gr.Button("Corrupt: set M", elem_id="corrupt-memory")
                        with gr.Row():
                            c_pos = gr.Number(10, label="trigger position", precision=0, min_width=100)
                            c_pos_btn = gr.Button("Corrupt: move S M", elem_id="corrupt-trigger")
                    with gr.Column(min_width=260, visible=not induction_ui, elem_id="corrupt-any"):
                        ce_kind = gr.Dropdown(patching.edit_kinds(), value=patching.edit_kinds()[0],
                                              label="corrupt the clean sequence", elem_id="corrupt-kind")
                        with gr.Row():
                            ce_a = gr.Number(1, label="a", precision=0, min_width=80)
                            ce_b = gr.Number(0, label="b", precision=0, min_width=80)
                            ce_btn = gr.Button("Corrupt", elem_id="corrupt-edit")
                with gr.Row():
                    p_kind = gr.Radio(list(patching.KINDS), value=list(patching.KINDS)[0], label="restore",
                                      elem_id="patch-kind")
                    p_step = gr.Textbox("", label="read after step t (empty = chosen, see the summary)",
                                        max_lines=1, elem_id="patch-step")
                    p_btn = gr.Button("Run patching", variant="primary", elem_id="run-patching")
                p_md = gr.Markdown(elem_id="patching-summary")
                p_heat = gr.Plot(show_label=False, elem_id="patching-heatmap")
                p_diff = gr.Plot(show_label=False, elem_id="patching-differences")

            with gr.Tab("Memories", id="memories", visible=task_ui) as tab_memories:
                gr.Markdown("The **Explore** tab's sequence as many memories (selective copying's data tokens, "
                            "MQAR's values, induction heads' M): given Δ the scan is linear, so each write's exact "
                            "part of a layer's state is known at every step. When is each memory written, how much "
                            "of it is left when it is recalled, which channels (heads) hold it, and what does "
                            "clamping one write's Δ to 0 cost each memory?")
                with gr.Row():
                    mm_layer = gr.Dropdown(layer_names, value=layer_names[-1], label="layer", elem_id="memory-layer")
                    mm_view = gr.Radio(list(memory.UNIT_VIEWS), value=list(memory.UNIT_VIEWS)[0],
                                       label="per unit at the recall", elem_id="memory-view")
                    mm_btn = gr.Button("Show the memories", variant="primary", elem_id="run-memories")
                mm_md = gr.Markdown(elem_id="memory-summary")
                mm_ret = gr.Plot(show_label=False, elem_id="memory-retention")
                mm_hold = gr.Plot(show_label=False, elem_id="memory-holders")
                with gr.Row():
                    mm_win = gr.Number(1, label=f"clamp window (steps from the write, 1..{4 * cfg.d_conv})",
                                       precision=0, elem_id="clamp-window")
                    mm_clamp = gr.Button("Clamp each write in turn", elem_id="run-clamp")
                mm_cmd = gr.Markdown(elem_id="clamp-summary")
                mm_cplot = gr.Plot(show_label=False, elem_id="clamp-chart")
                with gr.Row(visible=bool(memory.edit_kinds())):
                    ed_kind = gr.Dropdown(memory.edit_kinds(), value=(memory.edit_kinds() or [None])[0],
                                          label="edit the sequence", elem_id="task-edit")
                    ed_a = gr.Number(1, label="a", precision=0)
                    ed_b = gr.Number(0, label="b", precision=0)
                    ed_btn = gr.Button("Apply the edit", elem_id="apply-edit")

            with gr.Tab("Logit lens", id="lens") as tab_lens:
                gr.Markdown("The **Explore** tab's sequence on the app's model: the residual stream after each "
                            "layer, read out through the final norm and the head (the logit lens). Where along the "
                            "depth does the answer first become the top-1 prediction?")
                with gr.Row():
                    top_k = gr.Number(3, label=f"top-k (1..{lens.TOP_K_MAX})", precision=0, elem_id="lens-k")
                    lens_step = gr.Textbox("", label="read at step t (empty = chosen, see the summary)",
                                           max_lines=1, elem_id="lens-step")
                    lens_btn = gr.Button("Show the logit lens", variant="primary", elem_id="run-lens")
                lens_md = gr.Markdown(elem_id="lens-summary")
                lens_plot = gr.Plot(show_label=False, elem_id="lens-chart")

        view_in = [text, sort, bins, t_from, t_to, layers, stat]
        view_out = [plot, info]
        gen_widgets = [length, trig, mem, seed, n_trig, excl, every]
        light = limits.LIGHT
        wire(run.click, explore.show_plot, view_in, view_out, "run")
        wire(text.submit, explore.show_plot, view_in, view_out)
        # .input, not .change: a link being restored sets these too, and must redraw once, not per widget
        for w in (sort, bins, stat, layers):
            wire(w.input, explore.show_plot, view_in, view_out)
        for w in (t_from, t_to):
            wire(w.submit, explore.show_plot, view_in, view_out)
        for edit in (wire(gen.click, explore.generate, gen_widgets, text, "generate", light),
                     wire(preset.input, explore.apply_preset, preset, gen_widgets + [text, preset_note], "preset",
                          light),
                     wire(set_mem.click, explore.set_memory, [text, new_mem], text, "set_memory", light),
                     wire(move.click, explore.move_trigger, [text, new_pos], text, "move_trigger", light)):
            wire(edit.success, explore.show_plot, view_in, view_out)      # every edit re-runs the view
        wire(b_st.click, export.export_safetensors, text, out_file, "export_safetensors")
        wire(b_csv.click, export.export_csv, [text, t_from, t_to, all_q], out_file, "export_csv")
        wire(b_html.click, export.export_html, view_in, out_file, "export_html")
        # links: the page's own query string on load (then the view), "copy link", and /open_link for programs
        link_outputs = [text, *gen_widgets, sort, bins, t_from, t_to, layers, stat, ck_a, ck_b, tab_box, tabs,
                        p_step, lens_step, link_note]
        link_in = [text, *gen_widgets, sort, bins, t_from, t_to, layers, stat, ck_a, ck_b, tab_box, p_step, lens_step]
        wire(wire(demo.load, permalink.restore, None, link_outputs, lane=light).then,
             explore.show_plot, view_in, view_out)
        wire(copy_link.click, permalink.link, link_in, link_box, "permalink", light).success(
            None, link_box, link_box, js=COPY_LINK_JS)
        query_box = gr.Textbox(visible=False)
        wire(query_box.submit, permalink.open_link, query_box, link_outputs, "open_link", light)
        for tab, name in ((tab_explore, "explore"), (tab_mechanism, "mechanism"), (tab_patching, "patching"),
                          (tab_memories, "memories"), (tab_lens, "lens")):
            tab.select(None, None, tab_box, js=f"() => {name!r}")
        wire(b_fig.click, figure.export_figure,
             [fig_of, fig_fmt, fig_dpi, text, *gen_widgets, sort, bins, t_from, t_to, layers, stat, ck_a, ck_b,
              att_layer, att_ch, iv_kind, iv_layer, iv_ch, iv_t, iv_until, iv_value, corrupted, p_kind, top_k,
              p_step, lens_step],
             out_file, "figure")
        wire(c_mem_btn.click, patching.corrupt_memory, [text, c_mem], corrupted, "corrupt_memory", light)
        wire(c_pos_btn.click, patching.corrupt_trigger, [text, c_pos], corrupted, "corrupt_trigger", light)
        wire(ce_btn.click, patching.corrupt_edit, [text, ce_kind, ce_a, ce_b], corrupted, "corrupt_edit", light)
        wire(p_btn.click, patching.run_patching, [text, corrupted, p_kind, p_step], [p_md, p_diff, p_heat],
             "patching")
        wire(lens_btn.click, lens.show_lens, [text, top_k, lens_step], [lens_md, lens_plot], "logit_lens")
        wire(mm_btn.click, memory.show_memories, [text, mm_layer, mm_view], [mm_md, mm_ret, mm_hold], "memories")
        wire(mm_clamp.click, memory.show_clamp, [text, mm_layer, mm_win], [mm_cmd, mm_cplot], "clamp_writes")
        wire(wire(ed_btn.click, memory.apply_edit, [text, ed_kind, ed_a, ed_b], text, "task_edit", light).success,
             explore.show_plot, view_in, view_out)
        wire(cmp_btn.click, mechanism.compare_checkpoints, [text, ck_a, ck_b], [cmp_md, cmp_a, cmp_b], "compare")
        wire(att_btn.click, mechanism.show_attention, [text, ck_a, att_layer, att_ch], att_plot, "hidden_attention")
        wire(iv_btn.click, mechanism.intervene, [text, ck_a, iv_kind, iv_layer, iv_ch, iv_t, iv_until, iv_value],
             [iv_md, iv_plot], "intervene")
    demo.queue(default_concurrency_limit=limits.HEAVY_CONCURRENCY, max_size=limits.MAX_QUEUE)
    limits.limit_per_client(demo)
    return demo


charts.fast_construction()       # no schema validation per chart object (tests validate the specs)
common.configure_cpu()
ARGS = parse_args(sys.argv[1:] if __name__ == "__main__" else [])
MODEL = common.start(ARGS.checkpoint or os.environ.get(common.CHECKPOINT_ENV) or None)
demo = build_ui()

if __name__ == "__main__":
    # host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
    demo.launch(css=CSS, app_kwargs=limits.app_kwargs(), run_history=RUN_HISTORY)
