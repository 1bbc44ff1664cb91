"""Evaluate a task checkpoint at many lengths: for induction heads, the Mamba paper's Table 11 (E.1).

    python -m training.eval --checkpoint checkpoints/induction-2layer.safetensors \
        --lengths 64,128,256,512,1024,2048,4096,8192,16384,32768,65536,131072,262144,524288,1048576 \
        --samples 256 --long-samples 16
    python -m training.eval --checkpoint ... --json             # JSON instead of a markdown table
    python -m training.eval --checkpoint ... --memory-channels  # which units hold the memory, and their Δ
    python -m training.eval --checkpoint mqar.safetensors --lengths 64,128,256,512 \
        --options '{"n_pairs": [4, 8, 16, 64]}'                 # MQAR at Zoology's (L, D) settings
    python -m training.eval --checkpoint ... --per-query        # accuracy per query index (marker j), and
                                                                # whose answer each miss gave

The task is the checkpoint's own (its `task` metadata; tasks/). Accuracy = the share of query
steps whose argmax is the answer (induction heads: one query, the last position), on fresh
sequences drawn with a fixed seed per length (seed + L). Every length runs on the CPU fast path:
no grad and only the last L - (first query) positions through the head, so sequences longer than
8192 tokens stream through the model in chunks and memory stays O(batch x chunk). Batches hold at
most `--tokens-per-batch` tokens per time chunk (2^17 by default: ~0.5-1 GB).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from model import MambaLM, load_checkpoint
from model.run import STREAM_CHUNK, run
from tasks import INDUCTION, TASKS, task_for
from tasks.measures import layer_ratios, memory_channels as select_memory_channels

PAPER_LENGTHS = [2 ** i for i in range(6, 21)]    # Table 11: 2^6 ... 2^20
DEFAULT_TOKENS_PER_BATCH = 1 << 17


@dataclass
class LengthResult:
    length: int
    samples: int          # sequences
    correct: int          # queries answered right
    queries: int = 0      # queries scored (induction heads: one per sequence); 0 = samples

    @property
    def accuracy(self) -> float:
        return self.correct / (self.queries or self.samples)


def query_logits(lm, tokens: torch.Tensor, queries: torch.Tensor, forward=None) -> torch.Tensor:
    """Logits at the query steps: tokens [B, L], queries [B, K] -> [B, K, V]; only those steps go
    through the head."""
    return (forward or lm)(tokens, positions=queries)


def task_batch(task, n: int, length: int, rng: np.random.Generator, options: Optional[dict] = None):
    try:
        return task.batch(n, length, rng=rng, **(options or {}))
    except TypeError as e:      # an option the generator does not take, or of the wrong type
        raise ValueError(f"task options {options} do not fit {task.name}'s generator: {e}") from None


def batch_size_for(length: int, samples: int, tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH) -> int:
    """Sequences per batch: `tokens_per_batch` tokens per time chunk (long inputs stream in chunks)."""
    return max(1, min(samples, tokens_per_batch // min(length, STREAM_CHUNK)))


def _predictions(lm: MambaLM, length: int, samples: int, seed: int, tokens_per_batch: int,
                 bar: Optional[tqdm], task, options: Optional[dict], forward=None):
    """Yields (answers [b, K], argmax at the queries [b, K]) over `samples` fresh sequences of the task
    (numpy's generator seeded with `seed`; `options` go to task.batch), batch by batch; `forward`
    replaces lm's call as in query_logits."""
    batch = batch_size_for(length, samples, tokens_per_batch)
    rng = np.random.default_rng(seed)
    for s in range(0, samples, batch):
        b = task_batch(task, min(batch, samples - s), length, rng, options)
        tokens = torch.from_numpy(b.tokens).to(lm.device)                   # [b, L]
        logits = query_logits(lm, tokens, torch.from_numpy(b.queries).to(lm.device), forward)   # [b, K, V]
        yield b.answers, logits.argmax(-1).cpu().numpy()
        if bar is not None:
            bar.update(tokens.numel())


@torch.no_grad()
def count_correct(lm: MambaLM, length: int, samples: int, seed: int,
                  tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH, bar: Optional[tqdm] = None,
                  task=INDUCTION, options: Optional[dict] = None) -> tuple[int, int]:
    """(queries answered right, queries) over `samples` fresh sequences of the task (numpy's
    generator seeded with `seed`; `options` go to task.batch). Right = the argmax at a query step
    is its answer (tasks.score's definition; induction heads: the memory token at the last step)."""
    correct = total = 0
    for answers, pred in _predictions(lm, length, samples, seed, tokens_per_batch, bar, task, options):
        correct += int((pred == answers).sum())
        total += answers.size
    return correct, total


@dataclass
class QueryBreakdown:
    """Where in a sequence the misses fall. Query j is the j-th query step in time order (selective
    copying: the j-th marker, whose answer is the j-th data token in context order; MQAR: the j-th
    query, any pair). A miss whose prediction is another query's answer in the same sequence read
    the wrong memory: `earlier[d]` counts those whose nearest query with that answer is j - d,
    `later[d]` those at j + d, `both[d]` those with one at each (a token stored twice); `unstored`
    the misses that gave no answer of the sequence."""
    length: int
    samples: int
    correct: np.ndarray     # [K] right answers at query j
    earlier: np.ndarray     # [K] misses that gave the answer of query j - d (nearest), by d (index 0 unused)
    later: np.ndarray       # [K] ... of query j + d
    both: np.ndarray        # [K] ... of both j - d and j + d
    unstored: int

    @property
    def accuracy(self) -> np.ndarray:
        return self.correct / self.samples

    @property
    def misses(self) -> int:
        return int(self.earlier.sum() + self.later.sum() + self.both.sum()) + self.unstored


@torch.no_grad()
def query_breakdown(lm: MambaLM, length: int, samples: int, seed: int, task=INDUCTION,
                    options: Optional[dict] = None, tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
                    forward=None) -> QueryBreakdown:
    """Accuracy per query index and, per miss, whose answer it gave (the same sequences as
    count_correct with the same seed and tokens_per_batch); `forward` replaces lm's call."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    was = lm.training
    lm.eval()
    correct = side = None
    unstored = 0
    for answers, pred in _predictions(lm, length, samples, seed, tokens_per_batch, None, task, options, forward):
        K = answers.shape[1]
        if correct is None:
            correct, side = np.zeros(K, dtype=np.int64), np.zeros((3, K), dtype=np.int64)
        ok = pred == answers                                                  # [b, K]
        correct += ok.sum(0)
        for i, j in zip(*np.nonzero(~ok)):
            offsets = np.flatnonzero(answers[i] == pred[i, j]) - j            # never 0: a miss
            if offsets.size == 0:
                unstored += 1
                continue
            d = int(np.abs(offsets).min())
            side[(-d in offsets) + 2 * (d in offsets) - 1, d] += 1           # 0 earlier, 1 later, 2 both
    lm.train(was)
    return QueryBreakdown(length, samples, correct, *side, unstored)


def breakdown_table(b: QueryBreakdown) -> str:
    """Accuracy per query index, then whose answers the misses gave."""
    K = b.correct.size
    rows = [f"Per query at L = {b.length} ({b.samples} sequences):", "",
            "| query | correct | accuracy |", "|---:|---:|---:|"]
    rows += [f"| {j + 1} | {int(b.correct[j])} | {100 * b.accuracy[j]:.1f}% |" for j in range(K)]
    rows += ["", f"Misses: {b.misses}. A miss at query j that gave the answer of query j - d (earlier), "
             f"j + d (later) or both (nearest d); {b.unstored} gave no answer of the sequence:", "",
             "| d | earlier | later | both |", "|---:|---:|---:|---:|"]
    rows += [f"| {d} | {int(b.earlier[d])} | {int(b.later[d])} | {int(b.both[d])} |"
             for d in range(1, K) if b.earlier[d] or b.later[d] or b.both[d]]
    return "\n".join(rows)


def sample_plan(lengths: Sequence[int], samples: int, long_samples: Optional[int] = None,
                long_from: int = 1 << 17) -> list[tuple[int, int]]:
    """(L, sequences) per length: `long_samples` (default `samples`) from `long_from` on."""
    plan = [(L, samples if long_samples is None or L < long_from else long_samples) for L in lengths]
    for L, n in plan:
        if L < 3 or n < 1:
            raise ValueError(f"length {L} must be >= 3 and samples {n} >= 1")
    return plan


def evaluate(lm: MambaLM, lengths: Sequence[int], samples: int, long_samples: Optional[int] = None,
             long_from: int = 1 << 17, seed: int = 0, tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
             progress: bool = True, task=INDUCTION, options: Optional[dict] = None) -> list[LengthResult]:
    """Accuracy at each length; `long_samples` sequences (default `samples`) from `long_from` on."""
    plan = sample_plan(lengths, samples, long_samples, long_from)
    was = lm.training
    lm.eval()
    bar = tqdm(total=sum(L * n for L, n in plan), unit="tok", unit_scale=True, disable=not progress,
               dynamic_ncols=True, mininterval=1.0)
    results = []
    for L, n in plan:
        bar.set_postfix(L=L, refresh=False)
        right, queries = count_correct(lm, L, n, seed + L, tokens_per_batch, bar, task, options)
        results.append(LengthResult(L, n, right, queries))
    bar.close()
    lm.train(was)
    return results


def markdown_table(results: Sequence[LengthResult]) -> str:
    """One row per length; a `queries` column when a sequence holds more than one query."""
    multi = any(r.queries and r.queries != r.samples for r in results)
    head = "| L | log2 L | samples | " + ("queries | " if multi else "") + "correct | accuracy |"
    rows = [head, "|" + "---:|" * (head.count("|") - 1)]
    for r in results:
        q = f"{r.queries} | " if multi else ""
        rows.append(f"| {r.length} | {math.log2(r.length):g} | {r.samples} | {q}{r.correct} | "
                    f"{100 * r.accuracy:.1f}% |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# diagnosis: which channels hold the memory token, and how fast they forget over filler

@torch.no_grad()
def memory_channels(lm: MambaLM, length: int = 1024, samples: int = 8, seed: int = 7,
                    min_ratio: float = 100.0) -> list[dict]:
    """Per layer, the units (channels, or heads of Mamba-2) whose Δ ratio (tasks/measures.py: the
    write window's max over the batch-mean Δ / the median filler Δ after it) exceeds `min_ratio`,
    on `samples` sequences with the trigger at 0 (memory at 1, filler after). For each: Δ at the
    write, the mean filler Δ (the mean, not the median: a stored value decays like
    exp(-|A|·ΣΔ_t) = exp(-L·mean(Δ)·|A|)), min |A| of the unit and the forgetting rate
    mean(Δ_filler)·min|A| per token."""
    b = INDUCTION.batch(samples, length, seed=seed, trigger_pos=0)
    tr = run(lm, torch.from_numpy(b.tokens).to(lm.device), include=("delta",))
    deltas = [r["delta"].double().cpu().numpy() for r in tr.records]         # [B, L, U] per layer
    ratios = layer_ratios(deltas, INDUCTION.positions(b.tokens[0]), lm.config.d_conv)
    out = []
    for li, r in enumerate(ratios):
        A = lm.backbone.layers[li].mixer.A.detach().abs().cpu().numpy()      # [U, N] or [U]
        a_min = A.reshape(A.shape[0], -1).min(-1)
        for d in select_memory_channels(r.ratio, k=r.ratio.shape[0], min_ratio=min_ratio):
            out.append({"layer": li, "channel": d, "delta_memory": float(r.write[d]),
                        "delta_filler": float(r.filler_mean[d]), "ratio": float(r.ratio[d]),
                        "a_min": float(a_min[d]), "forget_per_token": float(r.filler_mean[d] * a_min[d])})
    return out


def main(argv=None):
    from kernels.cpu_memory import keep_freed_memory
    keep_freed_memory()
    p = argparse.ArgumentParser(description="A task model's accuracy per length (for induction heads: the "
                                "Mamba paper's Table 11). The task is the checkpoint's own.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint file or model directory")
    p.add_argument("--lengths", default=",".join(map(str, PAPER_LENGTHS)),
                   help="comma-separated sequence lengths (selective copying: the context n_ctx)")
    p.add_argument("--options", default="",
                   help='task options as JSON, e.g. \'{"n_pairs": [4, 8, 16, 64]}\' for MQAR; a list is '
                        "taken per length, aligned with --lengths")
    p.add_argument("--samples", type=int, default=256, help="sequences per length")
    p.add_argument("--long-samples", type=int, default=None,
                   help="sequences per length from --long-from on (default: --samples)")
    p.add_argument("--long-from", type=int, default=1 << 17, help="the first length that uses --long-samples")
    p.add_argument("--seed", type=int, default=0, help="length L uses generator seed seed + L")
    p.add_argument("--tokens-per-batch", type=int, default=DEFAULT_TOKENS_PER_BATCH,
                   help="tokens per batch and time chunk (memory ~ 4 KiB x this)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    p.add_argument("--memory-channels", action="store_true",
                   help="also list the channels that hold the memory token and their filler Δ")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--per-query", action="store_true",
                   help="also, per length: accuracy at each query index (selective copying: each marker) "
                        "and whose answer each miss gave (the query d earlier or later; same sequences)")
    args = p.parse_args(argv)
    try:
        lengths = [int(v) for v in args.lengths.split(",") if v]
    except ValueError:
        p.error(f"--lengths must be comma-separated integers, got {args.lengths!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        options = json.loads(args.options) if args.options else {}
        assert isinstance(options, dict)
    except (json.JSONDecodeError, AssertionError):
        p.error(f"--options must be a JSON object, got {args.options!r}")
    for k, v in options.items():
        if isinstance(v, list) and len(v) != len(lengths):
            p.error(f"--options {k} has {len(v)} values for {len(lengths)} lengths")
    try:
        plan = sample_plan(lengths, args.samples, args.long_samples, args.long_from)
        lm = load_checkpoint(args.checkpoint)
    except ValueError as e:     # CheckpointError is one
        p.error(str(e))
    task = task_for(lm.task)
    if task is None:
        p.error(f"{args.checkpoint} has no known task in its metadata (task={lm.task!r}); "
                f"known: {', '.join(TASKS)}")
    if args.memory_channels and task is not INDUCTION:
        p.error("--memory-channels is defined for induction heads only")
    results, breakdowns = [], []
    for i, (L, n) in enumerate(plan):
        opts = {k: (v[i] if isinstance(v, list) else v) for k, v in options.items()}
        try:    # a length or option the task cannot generate: its generator's message, no traceback
            if args.per_query:      # the same sequences, scored per query (one pass, no progress bar)
                b = query_breakdown(lm, L, n, args.seed + L, task, opts, args.tokens_per_batch)
                breakdowns.append(b)
                results.append(LengthResult(L, n, int(b.correct.sum()), b.correct.size * n))
            else:
                results += evaluate(lm, [L], n, seed=args.seed, tokens_per_batch=args.tokens_per_batch,
                                    progress=not args.no_progress, task=task, options=opts)
        except ValueError as e:
            p.error(f"length {L}: {e}")
    chans = memory_channels(lm) if args.memory_channels else None
    if args.json:
        doc = {"checkpoint": args.checkpoint, "sha256": lm.checkpoint_sha256, "seed": args.seed,
               "task": task.name, "options": options,
               "results": [{"length": r.length, "samples": r.samples, "queries": r.queries or r.samples,
                            "correct": r.correct, "accuracy": r.accuracy} for r in results]}
        if chans is not None:
            doc["memory_channels"] = chans
        if breakdowns:
            doc["per_query"] = [{"length": b.length, "samples": b.samples, "correct": b.correct.tolist(),
                                 "misses_earlier": b.earlier.tolist(), "misses_later": b.later.tolist(),
                                 "misses_both": b.both.tolist(), "misses_unstored": b.unstored}
                                for b in breakdowns]
        print(json.dumps(doc, indent=2))
        return
    print(markdown_table(results))
    for b in breakdowns:
        print("\n" + breakdown_table(b))
    if chans is not None:
        print("\n| layer | unit | Δ write (max) | Δ filler (mean) | ratio | min abs(A) | Δ_filler·min abs(A) |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for c in chans:
            print(f"| {c['layer'] + 1} | {c['channel']} | {c['delta_memory']:.3g} | {c['delta_filler']:.3g} | "
                  f"{c['ratio']:.2g} | {c['a_min']:.3g} | {c['forget_per_token']:.2g} |")


if __name__ == "__main__":
    main()
