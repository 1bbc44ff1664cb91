"""Batch export: traces of many sequences, as safetensors, tidy CSV and/or chart HTML.

    python -m viz.export --n 100 --length 256 --out out/traces                  # generated
    python -m viz.export --sequences seqs.txt --formats safetensors,csv --out out/t
    python -m viz.export --n 8 --length 16384 --checkpoint runs/s0/best.safetensors

--sequences: a text file with one sequence per line in the app's format ('3 7 1 S 9 ...';
blank lines and lines starting with # are skipped). Without it, --n sequences come from the
generator flags (sequence i uses seed --seed + i). Files are named seq{i:05d}.{safetensors,csv.gz,
html}; settings.json beside them records the command's settings and the checkpoint's sha256.
A progress bar (tqdm) counts sequences.

This is the one module in viz/ that imports the model (it is an entry point, like app.py); the
chart, frame and table modules it uses stay torch-free.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from . import charts, sequences, tables
from .frames import MAX_BINS_DEFAULT, TraceView

FORMATS = ("safetensors", "csv", "html")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m viz.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--checkpoint", default=None,
                   help="safetensors checkpoint (default $MAMBASCOPE_CHECKPOINT, else an untrained seed-0 model "
                        "with a warning)")
    p.add_argument("--sequences", default=None, help="file with one sequence per line")
    p.add_argument("--formats", default="safetensors", help=f"comma-separated subset of {','.join(FORMATS)}")
    g = p.add_argument_group("generator (when --sequences is not given)")
    g.add_argument("--n", type=int, default=10, help="number of sequences")
    g.add_argument("--length", type=int, default=256)
    g.add_argument("--seed", type=int, default=0, help="sequence i uses seed + i")
    g.add_argument("--trigger-pos", type=int, default=-1, help="-1 = random")
    g.add_argument("--memory", type=int, default=-1, help="-1 = random")
    g.add_argument("--n-triggers", type=int, default=1, choices=(0, 1, 2))
    g.add_argument("--filler-excludes-memory", action="store_true")
    g.add_argument("--memory-in-filler-every", type=int, default=0)
    c = p.add_argument_group("csv / html")
    c.add_argument("--csv-all-quantities", action="store_true", help="u, y, B, C, residual and logits too")
    c.add_argument("--csv-max-rows", type=int, default=tables.CSV_MAX_ROWS,
                   help="refuse (error) a CSV over this many rows; raise it deliberately for long runs")
    c.add_argument("--max-bins", type=int, default=MAX_BINS_DEFAULT, help="time bins of the HTML charts")
    c.add_argument("--sort", choices=("index", "ratio"), default="index", help="channel order in the charts")
    args = p.parse_args(argv)
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in args.formats if f not in FORMATS]
    if bad or not args.formats:
        p.error(f"--formats: unknown format {bad[0] if bad else '(none)'}; choose from {', '.join(FORMATS)}")
    return args


def read_sequences(path, vocab_size: int) -> list:
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            out.append(sequences.parse_tokens(line, vocab_size=vocab_size))
        except sequences.TokenError as e:
            raise sequences.TokenError(f"{path} line {n}: {e}") from e
    if not out:
        raise sequences.TokenError(f"{path}: no sequences in it")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch                                        # the model only from here on

    from model import CheckpointError, MambaConfig, MambaLM, load_checkpoint
    from model.data import induction_batch

    charts.fast_construction()
    path = args.checkpoint or os.environ.get("MAMBASCOPE_CHECKPOINT")
    try:
        if path:
            lm, label = load_checkpoint(path), Path(path).stem
        else:
            print("warning: no --checkpoint: exporting an untrained model (MambaLM(MambaConfig()), seed 0)",
                  file=sys.stderr)
            torch.manual_seed(0)
            lm, label = MambaLM(MambaConfig()).eval(), "untrained model (seed 0)"
        if args.sequences:
            seqs = read_sequences(args.sequences, lm.config.vocab_size)
        else:
            gens = [sequences.Generator(length=args.length, trigger_pos=args.trigger_pos, memory=args.memory,
                                        seed=args.seed + i, n_triggers=args.n_triggers,
                                        filler_excludes_memory=args.filler_excludes_memory,
                                        memory_in_filler_every=args.memory_in_filler_every) for i in range(args.n)]
            seqs = [sequences.realize(g, induction_batch) for g in gens]
    except (CheckpointError, ValueError) as e:          # TokenError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items()}
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
                tables.write_tidy_csv(tr, stem.with_suffix(".csv.gz"), quantities, max_rows=args.csv_max_rows)
            if "html" in args.formats:
                chart = charts.dashboard(TraceView.from_trace(tr, label=label), sort=args.sort,
                                         max_bins=args.max_bins)
                stem.with_suffix(".html").write_text(charts.chart_html(chart), encoding="utf-8")
        except ValueError as e:
            print(f"error: sequence {i}: {e}", file=sys.stderr)
            return 2
    print(f"wrote {len(seqs)} traces ({', '.join(args.formats)}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
