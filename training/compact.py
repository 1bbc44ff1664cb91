"""Store a checkpoint's embedding in fp16, so that a shipped file stays under 10 MiB.

    python -m training.compact runs/mqar-w256-hard/snap-N.safetensors checkpoints/mqar-2layer.safetensors

Why: this repository is also the app's Hugging Face Space, and the Hub refuses a pushed file over
10 MiB unless it is stored with git-lfs (tests/test_compact.py checks every tracked file). At
V = 8,192 the tied embedding [V, d_model] is most of an MQAR model (d_model 256: 8.4 of 11.9 MB in
fp32); in fp16 the file is 7.7 MB. Only the embedding: the layers are small, and their A_log, Δ and
D set decays that compound over the sequence, so their rounding is not worth a megabyte.

fp16, not bf16: the embedding's entries are O(0.01–1), well inside fp16's range, where fp16 keeps
3 more mantissa bits. The loader upcasts to the model's dtype (fp32 by default), so nothing else
changes. Before writing, the tool runs both models on a batch of the checkpoint's task (or random
tokens) and refuses the result if an argmax changes (other than between near-tied logits) or a logit
moves by more than `--tol` of the logits' range; it prints what it measured.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from model import CheckpointError, load_checkpoint
from model.checkpoint import EMBEDDING_KEY, _read_tensors, file_sha256, read_metadata
from model.safetensors_io import write_safetensors
from tasks import task_for


class CompactError(ValueError):
    pass


def compact_tensors(tensors: dict) -> dict:
    """The same tensors with the embedding [V, d_model] in fp16 (refused where a value overflows)."""
    if EMBEDDING_KEY not in tensors:
        raise CompactError(f"no {EMBEDDING_KEY} in the file: not one of our checkpoints")
    emb = tensors[EMBEDDING_KEY]
    half = emb.to(torch.float16)
    if not torch.isfinite(half).all():
        raise CompactError(f"the embedding's largest entry {emb.abs().max().item():.3g} overflows fp16")
    return {**tensors, EMBEDDING_KEY: half}


def _probe_tokens(lm, seed: int = 0) -> torch.Tensor:
    """[B, L] tokens of the task the file names (its default options), random ids for a plain LM."""
    task = task_for(lm.task)
    if task is not None:
        return torch.as_tensor(task.batch(4, 256, seed=seed).tokens)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, lm.config.vocab_size, (4, 256), generator=g)


def compare(src: Path, dst: Path) -> dict:
    """Logits of the two files on the same tokens: the largest change relative to the logits' range,
    and the positions whose argmax moved, split into ties (the original's top two logits closer
    than twice the largest change: either answer is the model's) and real changes."""
    a, b = load_checkpoint(src).eval(), load_checkpoint(dst).eval()
    tokens = _probe_tokens(a)
    with torch.no_grad():
        la, lb = a(tokens), b(tokens)                              # [B, L, V]
    change = (la - lb).abs().max().item()
    top2 = la.topk(2, dim=-1).values                               # [B, L, 2]
    moved = la.argmax(-1) != lb.argmax(-1)                         # [B, L]
    tie = (top2[..., 0] - top2[..., 1]) <= 2 * change
    return {"max_change": change / (la.amax(-1) - la.amin(-1)).amax().item(),
            "ties_moved": int((moved & tie).sum()), "argmax_changed": int((moved & ~tie).sum()),
            "positions": int(tokens.numel())}


def compact(src, dst, tol: float = 1e-3) -> dict:
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise CompactError("write to a new file: the input is what the result is checked against")
    if not dst.parent.is_dir():
        raise CompactError(f"cannot write {dst}: the folder {dst.parent} does not exist")
    if src.is_dir():
        raise CompactError(f"{src} is a model directory; compact works on one of our .safetensors files")
    meta = read_metadata(src)                                      # refuses pickles and non-safetensors
    tensors = _read_tensors(src)
    meta = {**meta, "embedding_dtype": "fp16",
            "compacted_from": json.dumps({"file": src.name, "sha256": file_sha256(src)})}
    tmp = dst.with_name(dst.name + ".check")
    write_safetensors(compact_tensors(tensors), tmp, meta)
    try:
        got = compare(src, tmp)
        if got["argmax_changed"] or got["max_change"] > tol:
            raise CompactError(f"fp16 embedding changed the model: {got}")
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return {**got, "bytes_before": src.stat().st_size, "bytes_after": dst.stat().st_size,
            "sha256": file_sha256(dst)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--tol", type=float, default=1e-3, help="largest logit change allowed, as a fraction of the logits' range")
    a = p.parse_args(argv)
    try:
        r = compact(a.src, a.dst, a.tol)
    except (CompactError, CheckpointError, OSError) as e:     # OSError: unwritable destination
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.dst}: {r['bytes_before']:,} -> {r['bytes_after']:,} bytes; largest logit change "
          f"{r['max_change']:.2e} of the range; argmax moved at {r['ties_moved']} near-ties and "
          f"{r['argmax_changed']} other positions of {r['positions']:,}; sha256 {r['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
