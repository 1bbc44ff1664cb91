"""Checkpoints: one safetensors file, mamba_ssm's state-dict keys, the config in the metadata.

File layout
    tensors   backbone.embedding.weight [V, d_model], backbone.layers.{i}.norm.weight,
              backbone.layers.{i}.mixer.{in_proj,conv1d,x_proj,dt_proj,out_proj}.{weight,bias},
              backbone.layers.{i}.mixer.{A_log,D}, backbone.norm_f.weight
              (lm_head.weight is omitted: it is tied to the embedding)
    metadata  config        mamba_ssm MambaConfig JSON (`MambaConfig(**json.loads(...))` works there)
              norm_epsilon  RMSNorm eps (not a MambaConfig field in mamba_ssm)
              task          optional JSON describing the task the model was trained on
              format        "mambascope-checkpoint/1"
For HF transformers' MambaForCausalLM, rename backbone.embedding -> backbone.embeddings.

Loading never unpickles: a torch.save / pickle file is recognised by its first bytes and refused.
Every problem raises CheckpointError with a message naming the file and what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open

from .config import NORM_EPSILON_DEFAULT, MambaConfig
from .mamba import MambaLM
from .safetensors_io import write_safetensors

FORMAT = "mambascope-checkpoint/1"
MAX_HEADER_BYTES = 100 << 20    # safetensors' own limit is 100 MB
HF_EMBEDDING_KEY = "backbone.embeddings.weight"
EMBEDDING_KEY = "backbone.embedding.weight"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(lm: MambaLM, path, task: Optional[dict] = None, extra: Optional[dict] = None) -> str:
    """Write `lm` to `path` (safetensors). Returns the file's sha256."""
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in lm.state_dict().items()
          if k != "lm_head.weight"}
    meta = {"format": FORMAT, "config": json.dumps(lm.config.to_mamba_ssm_dict()),
            "norm_epsilon": repr(float(lm.config.norm_epsilon))}
    if task is not None:
        meta["task"] = json.dumps(task)
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(sd, path, meta)   # byte-deterministic: same weights + metadata, same sha256
    return file_sha256(path)


def _refuse_non_safetensors(path: Path):
    """Recognise pickles and zip archives (torch.save) by their first bytes; never open them."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path}: this is a zip archive (a torch.save file?); only safetensors "
                              "checkpoints are loaded, pickled files are refused")
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in (2, 3, 4, 5):
        raise CheckpointError(f"{path}: this is a pickle file; only safetensors checkpoints are loaded, "
                              "pickled files are refused (convert it with safetensors.torch.save_file)")
    if size < 8:
        raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, too short for a header)")
    (n,) = struct.unpack("<Q", head)
    if n > min(size - 8, MAX_HEADER_BYTES):
        raise CheckpointError(f"{path}: not a safetensors file (header length {n} does not fit a "
                              f"{size}-byte file)")


def read_metadata(path) -> dict:
    """The safetensors metadata of a checkpoint (config, task, ...), validated as far as the header."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    _refuse_non_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def _config_from_metadata(path, meta: dict) -> MambaConfig:
    if "config" not in meta:
        raise CheckpointError(f"{path}: no 'config' in the safetensors metadata; is this a Mamba checkpoint?")
    try:
        raw = json.loads(meta["config"])
        eps = float(meta.get("norm_epsilon", NORM_EPSILON_DEFAULT))
        return MambaConfig.from_mamba_ssm_dict(raw, norm_epsilon=eps)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid config metadata ({e})") from e


def load_checkpoint(path, device="cpu") -> MambaLM:
    """Read, validate and build the model. Extra facts land on the model:
    lm.task (dict or None), lm.checkpoint_sha256, lm.checkpoint_path."""
    path = Path(path)
    meta = read_metadata(path)
    cfg = _config_from_metadata(path, meta)
    with torch.device("meta"):
        expected = {k: v for k, v in MambaLM(cfg).state_dict().items() if k != "lm_head.weight"}
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                tensors[EMBEDDING_KEY if k == HF_EMBEDDING_KEY else k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: could not read tensors ({e})") from e
    lm_head = tensors.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: missing key {missing[0]}{more}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected key {unexpected[0]} for a {cfg.n_layer}-layer model")
    for k, want in expected.items():
        t = tensors[k]
        if tuple(t.shape) != tuple(want.shape):
            raise CheckpointError(f"{path}: shape of {k} is {tuple(t.shape)}, expected {tuple(want.shape)} "
                                  f"from the config")
        if not t.is_floating_point():
            raise CheckpointError(f"{path}: dtype of {k} is {t.dtype}, expected a floating-point type")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: {k} contains NaN or infinite values")
    if lm_head is not None and not torch.equal(lm_head.float(), tensors[EMBEDDING_KEY].float()):
        raise CheckpointError(f"{path}: lm_head.weight differs from the embedding, but the model ties them")
    try:
        task = json.loads(meta["task"]) if "task" in meta else None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid task metadata ({e})") from e
    lm = MambaLM(cfg, device=device)
    sd = {k: v.float() for k, v in tensors.items()}
    sd["lm_head.weight"] = sd[EMBEDDING_KEY]
    lm.load_state_dict(sd, strict=True)
    lm.eval()
    lm.task = task
    lm.checkpoint_sha256 = file_sha256(path)
    lm.checkpoint_path = str(path)
    lm.checkpoint_metadata = meta
    return lm
