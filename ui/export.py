"""Exports: the Export accordion's adapters (one file per request) and the batch CLI.

    python -m ui.export --n 100 --length 256 --out out/traces                  # generated
    python -m ui.export --sequences seqs.txt --formats safetensors,csv --out out/t
    python -m ui.export --n 8 --length 16384 --checkpoint runs/s0/best.safetensors
    python -m ui.export --n 2 --formats safetensors --figure png --dpi 300 --out out/figs

Formats: the trace as safetensors (every array, MambaLens keys, metadata; `Trace.load` reads it),
a tidy gzipped CSV (viz/tables.py), the charts as one offline HTML page (viz/charts.py); with
--figure png|svg also the dashboard as a figure for a paper (viz/figure.py: vl-convert, a caption
naming the checkpoint sha256, the sequence and the binning; --dpi for the PNG).

CLI: --sequences is a text file with one sequence per line in the app's format ('3 7 1 S 9 ...';
blank lines and lines starting with # are skipped). Without it, --n sequences come from the
generator flags (sequence i uses seed --seed + i). Files are named seq{i:05d}.{safetensors,csv.gz,
html}; settings.json beside them records the command's settings and the checkpoint's sha256.
A progress bar (tqdm) counts sequences.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from tasks import INDUCTION, TokenError
from tasks import induction as ind
from viz import charts, figure, tables
from viz.frames import MAX_BINS_DEFAULT, TraceView, clamp_window

from . import common, explore, storage
from .common import user_errors

FORMATS = ("safetensors", "csv", "html")


@user_errors
def export_safetensors(tokens_text: str) -> str:
    tr, view, _ = explore.trace_view(tokens_text, include=None)
    tr.meta["label"] = common.MODEL.label
    if view.is_lm:        # the decoded tokens travel with a plain LM's trace (its tokenizer may not)
        tr.meta["token_labels"] = view.task.token_labels(tr.tokens).tolist()
    return str(storage.store(f"trace-L{view.length}.safetensors", tr.save))


@user_errors
def export_csv(tokens_text: str, t_from: Optional[float], t_to: Optional[float], all_quantities: bool) -> str:
    t_from = common.whole(t_from, "window from t", optional=True)
    t_to = common.whole(t_to, "window to t", optional=True)
    everything = common.flag(all_quantities, "CSV: all quantities")
    lm = common.is_plain_lm()
    quantities = ((tables.LM_ALL_QUANTITIES if everything else tables.LM_DEFAULT_QUANTITIES) if lm else
                  tables.ALL_QUANTITIES if everything else tables.DEFAULT_QUANTITIES)
    tr, view, _ = explore.trace_view(tokens_text, include=None if everything else explore.VIEW_QUANTITIES)
    t0, t1 = clamp_window(view.length, t_from, t_to)
    labels = view.task.token_labels if lm else None        # a plain LM's CSV carries the decoded tokens
    return str(storage.store(f"trace-L{view.length}-t{t0}-{t1 - 1}.csv.gz",
                             lambda path: tables.write_tidy_csv(tr, path, quantities, t_from=t0, t_to=t1,
                                                                labels=labels)))


@user_errors
def export_html(tokens_text: str, channel_sort: str, max_bins: float, t_from: Optional[float],
                t_to: Optional[float], layers: list, bin_stat: str) -> str:
    chart, _ = explore.chart_of(tokens_text, channel_sort, max_bins, t_from, t_to, layers, bin_stat)
    html = charts.chart_html(chart)
    return str(storage.store(f"charts-L{len(common.tokens(tokens_text))}.html",
                             lambda path: path.write_text(html, encoding="utf-8")))


# ---------------------------------------------------------------- the batch CLI
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ui.export",
                                description="Batch export: traces of many sequences as safetensors, tidy CSV and/or "
                                            "chart HTML.")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--checkpoint", default=None,
                   help=f"safetensors checkpoint (default ${common.CHECKPOINT_ENV}, else an untrained seed-0 model "
                        "with a warning)")
    p.add_argument("--sequences", default=None, help="file with one sequence per line ('3 7 1 S 9 ...'; # comments)")
    p.add_argument("--formats", default="safetensors", help=f"comma-separated subset of {','.join(FORMATS)}")
    g = p.add_argument_group("generator (when --sequences is not given)")
    g.add_argument("--n", type=int, default=10, help="number of sequences")
    g.add_argument("--length", type=int, default=256, help="tokens per sequence (3..65536)")
    g.add_argument("--seed", type=int, default=0, help="sequence i uses seed + i")
    g.add_argument("--trigger-pos", type=int, default=-1, help="position of the first trigger S; -1 = random")
    g.add_argument("--memory", type=int, default=-1, help="the memory token M (0..15); -1 = random")
    g.add_argument("--n-triggers", type=int, default=1, choices=(0, 1, 2),
                   help="trigger/memory pairs before the final query S")
    g.add_argument("--filler-excludes-memory", action="store_true", help="the filler never holds M")
    g.add_argument("--memory-in-filler-every", type=int, default=0,
                   help="also plant M at about one filler position in k (0 = off)")
    c = p.add_argument_group("csv / html")
    c.add_argument("--csv-all-quantities", action="store_true", help="u, y, B, C, residual and logits too")
    c.add_argument("--csv-max-rows", type=int, default=tables.CSV_MAX_ROWS,
                   help="refuse (error) a CSV over this many rows; raise it deliberately for long runs")
    c.add_argument("--max-bins", type=int, default=MAX_BINS_DEFAULT, help="time bins of the HTML charts")
    c.add_argument("--sort", choices=("index", "ratio"), default="index", help="channel order in the charts")
    f = p.add_argument_group("figure")
    f.add_argument("--figure", choices=("png", "svg"), default=None,
                   help="also write the dashboard as a captioned figure, seq{i}.png or .svg (vl-convert)")
    f.add_argument("--dpi", type=float, default=300, help="PNG resolution in dots per inch (36..600)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in args.formats if f not in FORMATS]
    if bad or not args.formats:
        p.error(f"--formats: unknown format {bad[0] if bad else '(none)'}; choose from {', '.join(FORMATS)}")
    lo, hi = figure.DPI_RANGE
    if not lo <= args.dpi <= hi:
        p.error(f"--dpi {args.dpi:g} is out of range {lo}..{hi}")
    return args


def read_sequences(path, task=INDUCTION) -> list:
    """One sequence per line (blank lines and # comments skipped) -> [int64 [L]]."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            out.append(task.parse(line))
        except TokenError as e:
            raise TokenError(f"{path} line {n}: {e}") from e
    if not out:
        raise TokenError(f"{path}: no sequences in it")
    return out


def figure_caption(lm, label: str, tokens, args, generator) -> list:
    """The CLI figure's caption: model and sha256, the sequence, the binning."""
    L = len(tokens)
    w = -(-L // args.max_bins)
    if generator is not None:
        settings = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in asdict(generator).items())
        seq = f"L = {L:,}, generated ({settings})"
    else:
        seq = f"L = {L:,}, from {Path(args.sequences).name}"
    sha = (getattr(lm, "checkpoint_sha256", None) or "unsaved")[:12]
    return [f"model {label}, sha256 {sha}", seq,
            ("per timestep" if w == 1 else f"time binned by {w} steps (heatmaps: max per bin)") +
            ("; channels sorted by Δ ratio" if args.sort == "ratio" else "; channels by index")]


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from model import CheckpointError, MambaConfig, MambaLM, load_checkpoint
    from tasks import task_for

    charts.fast_construction()
    path = args.checkpoint or os.environ.get(common.CHECKPOINT_ENV)
    try:
        if path:
            lm, label = load_checkpoint(path), Path(path).stem
        else:
            print("warning: no --checkpoint: exporting an untrained model (MambaLM(MambaConfig()), seed 0)",
                  file=sys.stderr)
            torch.manual_seed(0)
            lm, label = MambaLM(MambaConfig()).eval(), "untrained model (seed 0)"
        task = common.task_of_model(lm, Path(path)) if path else task_for(lm.task) or INDUCTION
        if args.sequences:
            seqs = read_sequences(args.sequences, task)
        elif common.is_plain_lm(task):
            raise ValueError("this checkpoint is a plain language model: give its texts with --sequences "
                             "(the generator makes induction-heads sequences)")
        else:
            gens = [ind.Generator(length=args.length, trigger_pos=args.trigger_pos, memory=args.memory,
                                  seed=args.seed + i, n_triggers=args.n_triggers,
                                  filler_excludes_memory=args.filler_excludes_memory,
                                  memory_in_filler_every=args.memory_in_filler_every) for i in range(args.n)]
            seqs = [INDUCTION.realize(g) for g in gens]
    except (CheckpointError, ValueError) as e:          # TokenError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(vars(args))
    settings.update(checkpoint_sha256=getattr(lm, "checkpoint_sha256", None) or "unsaved", n_sequences=len(seqs),
                    generator=None if args.sequences else asdict(gens[0]) | {"seed": f"{args.seed} + i"})
    (out / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    quantities = tables.ALL_QUANTITIES if args.csv_all_quantities else tables.DEFAULT_QUANTITIES
    for i, tokens in enumerate(tqdm(seqs, desc="traces", unit="seq")):
        tr = lm.trace(tokens)
        stem = out / f"seq{i:05d}"
        try:
            if "safetensors" in args.formats:
                tr.save(stem.with_suffix(".safetensors"))
            if "csv" in args.formats:
                lm_q = common.is_plain_lm(task)
                tables.write_tidy_csv(tr, stem.with_suffix(".csv.gz"),
                                      (tables.LM_ALL_QUANTITIES if args.csv_all_quantities else
                                       tables.LM_DEFAULT_QUANTITIES) if lm_q else quantities,
                                      max_rows=args.csv_max_rows, labels=task.token_labels if lm_q else None)
            if "html" in args.formats or args.figure:
                view = TraceView.from_trace(tr, task, label=label)
                chart = charts.dashboard(view, sort=args.sort, max_bins=args.max_bins)
            if "html" in args.formats:
                stem.with_suffix(".html").write_text(charts.chart_html(chart), encoding="utf-8")
            if args.figure:
                fig = figure.captioned(chart, figure_caption(lm, label, tokens, args, None if args.sequences
                                                             else gens[i]))
                if args.figure == "svg":
                    stem.with_suffix(".svg").write_text(figure.to_svg(fig), encoding="utf-8")
                else:
                    stem.with_suffix(".png").write_bytes(figure.to_png(fig, args.dpi))
        except ValueError as e:
            print(f"error: sequence {i}: {e}", file=sys.stderr)
            return 2
    print(f"wrote {len(seqs)} traces ({', '.join(args.formats)}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
