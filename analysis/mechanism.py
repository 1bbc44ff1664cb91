"""How does a 2-layer Mamba keep one token over a million steps? Measurements on every checkpoint.

    python -m analysis.mechanism                 # every checkpoints/*.safetensors -> docs/mechanism.md
    python -m analysis.mechanism --long-max-log2 16 --long-seqs 4     # a quicker run
    python -m viz.figures docs/mechanism/figures.json                 # then its figures (PNG)

The question (state-spaces/mamba issue thread, kept in shared/context): Δ is a linear function of
its input, yet the model ignores up to 2^20 intervening tokens. The conjecture: layer 1 builds
"the trigger has been seen"; in layer 2, once the memory token M is written, Δ goes to ~0 on the
part of the state that holds it, so later tokens neither decay nor overwrite it.

What is measured, per checkpoint (sequences from tasks.INDUCTION.batch; the trigger S at a fixed
position P = 32 so that one time index means "the memory token" in every sequence; M at P+1):
1. Δ selectivity (measure.py): per layer and channel, tasks/measures.py's Δ ratio over the batch:
   the largest batch-mean Δ over the write window P+1 .. P+d_conv (the steps at which M is still
   in the layer's conv window: a layer may write one step after M, the trained model does) / the
   median Δ over the filler after the window up to the query. Δ at M itself is reported too.
2. Which channels carry M (probes.py): a ridge least-squares probe from one channel's state
   h[d, :] (R^16) to the one-hot M, fit on `probe_train` sequences and scored on `probe_test`
   others, at several distances after the write. A channel can hold part of a code (the closed
   form's channel m holds only "M == m"), so channels are ranked by that accuracy and a joint probe
   on the top-k channels of each layer decides the memory layer; its memory channels are
   tasks.measures.memory_channels of that layer's Δ ratio (at most `max_memory_channels`, each
   above `min_ratio`).
3. Out to 2^20 (stream.py): `long_seqs` sequences [S, M, filler...]; at distances 2^4, 2^6, ... the
   memory channels' state is compared with h(0), the state just after the write window (retained
   fraction ρ = <h(τ), h(0)> / |h(0)|^2, cosine), and a query S is answered (accuracy at length τ + 3).
4. Hidden attention (hidden_attention.py) of the memory channels at the query: the share of
   |α̃[L-1, j] u_j| that comes from the write window.
5. Interventions (causal.py, model.interventions): Δ clamped to 0 over the write window on the
   memory channels vs on as many random channels of the same layer; Δ clamped to 0 on the memory
   channels for every filler step after the write (at 2^freeze_log2 tokens: does freezing them alone
   restore extrapolation?); the memory channels' state zeroed or patched from a sequence with
   another M; each layer's mixer output ablated.
6. Horizon: predicted 1/(Δ_filler·|A|_eff) per memory channel (Δ_filler = mean filler Δ, since the
   decay over L steps is exp(-|A| Σ Δ); |A|_eff = Σ_n |A[d,n]| h_n^2 / Σ_n h_n^2 over the written
   state) vs measured (ρ crossing 1/e; accuracy crossing 90%).
7. Similarity of the trained and closed-form mechanisms: not CKA (two models that both encode M
   have similar representations whatever mechanism keeps it), but the conjecture's own claims
   measured on both -- memory layer, number of memory channels, Δ at the write and over the filler,
   α̃ share on the memory token, and whether Δ-clamps at the write break it.
The report (report.py) writes the Markdown and the figures' data (figures.json); viz/figures.py
draws them (analysis/ does not import viz/).
"""
from __future__ import annotations

import argparse
import inspect
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from model import load_checkpoint
from tasks import INDUCTION

from . import cache
from .compare import task_of
from .measure import measure_checkpoint
from .report import load_analytic_eval, write_report


@dataclass
class Settings:
    checkpoints: str = "checkpoints"        # folder: every *.safetensors in it is measured
    out: str = "docs/mechanism.md"          # the report (Markdown)
    fig_dir: str = "docs/mechanism"         # figures.json, cached results and the rendered figures
    trigger_pos: int = 32                   # P: S at P, M at P+1 in the short sequences
    length: int = 256                       # L of the short sequences (the training length)
    distances: tuple = (0, 1, 3, 8, 32, 128, 200)   # probe distances τ after M (P+1+τ <= L-2), comma-separated
    probe_train: int = 512                  # sequences the probes are fit on
    probe_test: int = 256                   # other sequences they are scored on
    ridge: float = 1e-3                     # probe ridge λ (times the number of training sequences)
    min_ratio: float = 100.0                # memory channels: Δ ratio above this
    max_memory_channels: int = 48           # memory channels: at most this many (largest ratio first)
    delta_seqs: int = 64                    # sequences of the Δ-selectivity batch
    attn_seqs: int = 16                     # of those, sequences whose hidden attention is measured
    interv_seqs: int = 128                  # sequences per intervention
    freeze_log2: int = 14                   # the freeze test runs at length 2^this
    freeze_seqs: int = 16                   # sequences of the freeze tests
    long_seqs: int = 8                      # sequences streamed out to 2^long_max_log2
    long_max_log2: int = 20                 # the longest distance after the write, log2
    long_stop_after: int = 2                # stop streaming once this many distances in a row are forgotten
    seed: int = 0                           # every batch is drawn from seed + a fixed offset (analysis/runs.py)
    threads: int = 1                        # torch threads (1 is fastest on a shared 2-core machine)

    def __post_init__(self):
        P, L = self.trigger_pos, self.length
        if not 0 <= P <= L - 3:
            raise ValueError(f"trigger_pos {P} is out of range 0..{L - 3} for length {L}")
        if not self.distances or min(self.distances) < 0 or P + 1 + max(self.distances) > L - 2:
            raise ValueError(f"probe distances must be in 0..{L - 3 - P} (P+1+τ <= L-2 for P = {P}, L = {L}), "
                             f"got {list(self.distances)}")


def _field_comments() -> dict:
    """{field: its comment in Settings' source}: the dataclass is the one place flags are described."""
    out = {}
    for line in inspect.getsource(Settings).splitlines():
        code, _, comment = line.strip().partition("#")
        if ":" in code and "=" in code and comment:
            out[code.split(":")[0].strip()] = comment.strip()
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    helps = _field_comments()
    for f in fields(Settings):
        flag, h = "--" + f.name.replace("_", "-"), helps[f.name].replace("%", "%%")
        if f.type == "tuple":               # annotations are strings (from __future__ import annotations)
            ap.add_argument(flag, default=",".join(map(str, f.default)), help=h)
        else:
            ap.add_argument(flag, type={"int": int, "float": float, "str": str}[f.type], default=f.default, help=h)
    ap.add_argument("--only", default="", help="comma-separated checkpoint stems to include (default: all)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse <fig-dir>/results-<stem>.json when the checkpoint sha256 and settings match")
    return ap


def parse_args(argv=None) -> tuple:
    """argv -> (Settings, only: [stem], reuse)."""
    a = vars(parser().parse_args(argv))
    only = [s for s in a.pop("only").split(",") if s]
    reuse = a.pop("reuse")
    try:
        a["distances"] = tuple(int(x) for x in str(a["distances"]).split(","))
    except ValueError:
        raise SystemExit(f"--distances must be comma-separated whole numbers, got {a['distances']!r}") from None
    try:
        return Settings(**a), only, reuse
    except ValueError as e:
        raise SystemExit(f"analysis.mechanism: {e}") from None


def checkpoint_paths(cfg: Settings, only=()) -> list:
    """The checkpoints to measure, the closed form last (so the trained ones lead every table)."""
    paths = sorted(p for p in Path(cfg.checkpoints).glob("*.safetensors") if not only or p.stem in only)
    if not paths:
        raise SystemExit(f"no checkpoints in {cfg.checkpoints}/ (python -m analysis.analytic writes one)")
    induction = []
    for p in paths:        # the memory-task models have their own study (analysis.memory_report)
        task = task_of(load_checkpoint(p))
        if task is INDUCTION:
            induction.append(p)
            continue
        kind = (f"a {task.name} model (its study: python -m analysis.memory_report)" if task
                else "a plain language model (no task to study)")
        if only:
            raise SystemExit(f"{p}: the mechanism study is for induction heads; this checkpoint is {kind}")
        print(f"{p.stem}: skipped, {kind}")
    if not induction:
        raise SystemExit(f"no induction-heads checkpoints in {cfg.checkpoints}/")
    return sorted(induction, key=lambda p: (p.stem.startswith("analytic"), p.stem))


def main(argv=None):
    cfg, only, reuse = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    results, reused = [], []
    for p in checkpoint_paths(cfg, only):
        stored = Path(cfg.fig_dir) / f"results-{p.stem}.json"
        r = cache.load(stored, p, cfg) if reuse else None
        if r is None:
            r = measure_checkpoint(p, cfg)
            cache.save(stored, r, cfg)
        else:
            print(f"{p.stem}: reusing {stored} (same file sha256 and settings)")
            reused.append(p.stem)
        results.append(r)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    write_report(results, cfg, time.time() - t0, load_analytic_eval(cfg), command, reused)
    print(f"wrote {cfg.out} and {cfg.fig_dir}/figures.json in {time.time() - t0:.0f} s; "
          f"draw the figures with: python -m viz.figures {cfg.fig_dir}/figures.json")


if __name__ == "__main__":
    main()
