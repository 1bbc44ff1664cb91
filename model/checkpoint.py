"""Checkpoints: our safetensors files, and the model directories of HF transformers and mamba_ssm.

Our file (what save_checkpoint writes)
    tensors   mamba_ssm's state-dict keys: backbone.embedding.weight [V, d_model],
              backbone.layers.{i}.norm.weight, backbone.layers.{i}.mixer.* (Mamba1: in_proj, conv1d,
              x_proj, dt_proj, A_log, D, out_proj; Mamba2: in_proj, conv1d, dt_bias, A_log, D,
              norm.weight, out_proj), backbone.norm_f.weight
              (lm_head.weight is omitted: it is tied to the embedding)
    metadata  config        mamba_ssm MambaConfig JSON (`MambaConfig(**json.loads(...))` works there;
                            ssm_cfg["layer"] says Mamba1 or Mamba2)
              norm_epsilon  RMSNorm eps (not a MambaConfig field in mamba_ssm)
              task          optional JSON describing the task the model was trained on
              format        "mambascope-checkpoint/1"
For HF transformers' MambaForCausalLM / Mamba2ForCausalLM, rename backbone.embedding -> backbone.embeddings.

A directory (load_checkpoint(dir); nothing is ever downloaded)
    HF transformers  config.json with architectures MambaForCausalLM or Mamba2ForCausalLM (what
                     save_pretrained writes); model.safetensors, or model.safetensors.index.json + shards
    mamba_ssm        config.json with d_model, n_layer, ssm_cfg (MambaLMHeadModel.save_pretrained's
                     config) + model.safetensors (or an index + shards)
    tokenizer.json   optional, either kind: the model then takes text (lm.text_task, model/tokenizer.py);
                     a tokenizer with more ids than the model's vocabulary is refused
Weights may be fp32, fp16 or bf16; `dtype` picks the model's (fp32 by default).

Loading never unpickles: a torch.save / pickle file is recognised by its first bytes and refused,
and so is a directory that has only pytorch_model.bin. Every problem raises CheckpointError with a
message naming the file and what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open

from .config import DEFAULTS, NORM_EPSILON_DEFAULT, MambaConfig
from .mamba import MambaLM
from .safetensors_io import write_safetensors
from .tokenizer import TokenizerError, load_tokenizer, text_task

FORMAT = "mambascope-checkpoint/1"
MAX_HEADER_BYTES = 100 << 20    # safetensors' own limit is 100 MB
HF_EMBEDDING_KEY = "backbone.embeddings.weight"
EMBEDDING_KEY = "backbone.embedding.weight"
HF_ARCHITECTURES = {"MambaForCausalLM": "Mamba1", "Mamba2ForCausalLM": "Mamba2"}
SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
# what HF transformers 5.x assumes for a key missing from config.json (configuration_mamba(2).py)
HF_MAMBA_DEFAULTS = {"state_size": 16, "conv_kernel": 4, "expand": 2, "time_step_rank": "auto",
                     "layer_norm_epsilon": 1e-5, "use_bias": False, "use_conv_bias": True,
                     "hidden_act": "silu", "residual_in_fp32": True, "tie_word_embeddings": True}
HF_MAMBA2_DEFAULTS = {"state_size": 128, "conv_kernel": 4, "expand": 2, "head_dim": 64, "n_groups": 8,
                      "chunk_size": 256, "layer_norm_epsilon": 1e-5, "use_bias": False, "use_conv_bias": True,
                      "hidden_act": "silu", "residual_in_fp32": True, "tie_word_embeddings": False,
                      "time_step_min": 0.001, "time_step_max": 0.1, "time_step_floor": 1e-4,
                      "time_step_limit": [0.0, math.inf]}
# mamba_ssm.models.config_mamba.MambaConfig's defaults, for keys its config.json leaves out
MAMBA_SSM_DEFAULTS = {"ssm_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "pad_vocab_size_multiple": 8,
                      "tie_embeddings": True}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason."""


def _directory_sha256(path: Path) -> str:
    """A model directory's identity: sha256 over "name sha256" lines of config.json and its weight files."""
    names = ["config.json", *sorted(p.name for p in _weight_files(path))]
    if (path / INDEX).exists():
        names.append(INDEX)
    lines = "".join(f"{n} {file_sha256(path / n)}\n" for n in sorted(names))
    return hashlib.sha256(lines.encode()).hexdigest()


def file_sha256(path) -> str:
    """sha256 of a checkpoint file; of a model directory, see _directory_sha256."""
    path = Path(path)
    if path.is_dir():
        return _directory_sha256(path)
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


# --- one safetensors file -------------------------------------------------------------------------

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
    """The safetensors metadata of a checkpoint file (config, task, ...), validated as far as the
    header; of a model directory, the same keys (format, config, norm_epsilon) from its config.json."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _directory_config(path)[1]
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


def _read_tensors(path: Path, keys=None) -> dict:
    """All tensors of one safetensors file (or those in `keys`), checked to be one first, copied into
    the process: safetensors' tensors are views of a memory map of the file, so a model built on them
    would read whatever the file holds later (a checkpoint overwritten in place while the app runs:
    other weights, or SIGBUS when the new file is shorter). One tensor mapped at a time keeps the peak
    at the weights plus one tensor."""
    _refuse_non_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys() if keys is None else keys)
        out = {}
        for k in names:
            with safe_open(str(path), framework="pt") as f:
                out[k] = f.get_tensor(k).clone()
        return out
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: could not read tensors ({e})") from e


def _tensor_names(path: Path) -> set:
    _refuse_non_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


# --- a model directory (HF transformers or mamba_ssm) --------------------------------------------

def _refuse_pickles(path: Path):
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{path}: has only pickled weights ({', '.join(pickles[:3])}); pickles are never loaded. "
            "Get safetensors instead: `huggingface-cli download REPO --include '*.safetensors' '*.json' "
            "--local-dir DIR` where the hub repo has them, or convert once where you trust the file: "
            "transformers' `AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, "
            "safe_serialization=True)`, or `safetensors.torch.save_file(torch.load(FILE), "
            "'model.safetensors')` for a mamba_ssm state dict")


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _shard_map(path: Path) -> dict:
    """model.safetensors.index.json -> {tensor name: shard file name}, names checked."""
    index = _read_json(path / INDEX)
    wmap = index.get("weight_map")
    if not isinstance(wmap, dict) or not wmap:
        raise CheckpointError(f"{path / INDEX}: no 'weight_map' (tensor name -> shard file)")
    for k, shard in wmap.items():
        # a shard name is a file in this directory: never a path that leaves it
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{path / INDEX}: shard {shard!r} of {k} is not a file name in {path}")
    return wmap


def _weight_files(path: Path) -> list:
    """The safetensors files that hold the weights: model.safetensors or the shards of its index."""
    if (path / SINGLE).exists():
        return [path / SINGLE]
    if (path / INDEX).exists():
        return [path / s for s in sorted(set(_shard_map(path).values()))]
    _refuse_pickles(path)
    others = sorted(p.name for p in path.glob("*.safetensors"))
    hint = f" (found {', '.join(others[:3])}; rename the file to {SINGLE})" if others else ""
    raise CheckpointError(f"{path}: no {SINGLE} or {INDEX}{hint}")


def _read_directory_tensors(path: Path) -> dict:
    """Every tensor of the directory; for shards, each must hold exactly what the index says."""
    if (path / SINGLE).exists():
        return _read_tensors(path / SINGLE)
    wmap = _shard_map(path)
    by_shard = {}
    for k, shard in wmap.items():
        by_shard.setdefault(shard, []).append(k)
    missing = sorted(s for s in by_shard if not (path / s).is_file())
    if missing:
        raise CheckpointError(f"{path}: missing shard {missing[0]} ({len(by_shard[missing[0]])} tensors "
                              f"listed for it in {INDEX}); {len(missing)} of {len(by_shard)} shards are missing")
    tensors = {}
    for shard, keys in sorted(by_shard.items()):
        held = _tensor_names(path / shard)
        absent = sorted(set(keys) - held)
        if absent:
            raise CheckpointError(f"{path}: mismatched shards: {INDEX} puts {absent[0]} in {shard}, "
                                  f"which does not hold it")
        extra = sorted(held - set(wmap))
        if extra:
            raise CheckpointError(f"{path}: mismatched shards: {shard} holds {extra[0]}, which {INDEX} "
                                  "does not list")
        tensors.update(_read_tensors(path / shard, keys))
    return tensors


def _finite_float(v):
    """HF 5.x writes inf as {"__float__": "Infinity"}; older configs as the JSON extension Infinity."""
    if isinstance(v, dict) and "__float__" in v:
        return float(v["__float__"])
    return float(v)


def _hf_settings(layer: str, raw: dict) -> dict:
    return {**(HF_MAMBA_DEFAULTS if layer == "Mamba1" else HF_MAMBA2_DEFAULTS), **raw}


def _hf_config(path: Path, raw: dict, layer: str) -> MambaConfig:
    """HF transformers' MambaConfig / Mamba2Config (config.json) -> ours, refusing what HF's model
    computes and ours does not."""
    d = _hf_settings(layer, raw)
    where = f"{path / 'config.json'}"
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        if key not in d:
            raise CheckpointError(f"{where}: missing {key!r}")
    if d["hidden_act"] != "silu":
        raise CheckpointError(f"{where}: hidden_act={d['hidden_act']!r}; only 'silu' (every Mamba model's) "
                              "is supported")
    hidden, expand = d["hidden_size"], d["expand"]
    if float(expand) != int(expand):
        raise CheckpointError(f"{where}: expand={expand} is not an integer")
    expand = int(expand)
    ssm = {"layer": layer, "d_state": d["state_size"], "d_conv": d["conv_kernel"], "expand": expand}
    if layer == "Mamba1":
        if d.get("intermediate_size", expand * hidden) != expand * hidden:
            raise CheckpointError(f"{where}: intermediate_size={d['intermediate_size']} is not expand * "
                                  f"hidden_size = {expand * hidden}")
        if d["use_bias"] or not d["use_conv_bias"]:
            raise CheckpointError(f"{where}: use_bias={d['use_bias']}, use_conv_bias={d['use_conv_bias']}; "
                                  "Mamba1 layers here have in/out_proj without bias and a conv with bias "
                                  "(mamba_ssm's and HF's defaults)")
        r = d["time_step_rank"]
        ssm["dt_rank"] = "auto" if r == "auto" else int(r)
    else:
        heads = expand * hidden // d["head_dim"] if (expand * hidden) % d["head_dim"] == 0 else None
        if "num_heads" in d and d["num_heads"] != heads:
            raise CheckpointError(f"{where}: num_heads={d['num_heads']} but expand * hidden_size / head_dim = "
                                  f"{expand} * {hidden} / {d['head_dim']}"
                                  + (f" = {heads}" if heads else " is not an integer"))
        lo, hi = d["time_step_limit"]
        # HF's Mamba2Mixer always gates before its norm and always has the norm, whatever
        # norm_before_gate / rms_norm say in config.json: these are its logits, so ours follow
        ssm.update(headdim=d["head_dim"], ngroups=d["n_groups"], chunk_size=d["chunk_size"],
                   dt_min=d["time_step_min"], dt_max=d["time_step_max"], dt_init_floor=d["time_step_floor"],
                   dt_limit=[_finite_float(lo), _finite_float(hi)], bias=bool(d["use_bias"]),
                   conv_bias=bool(d["use_conv_bias"]))
    # only what differs from mamba_ssm's defaults: a minimal ssm_cfg, and no inf in the config JSON
    # (dt_limit's default (0, inf) is not standard JSON for whoever reads a trace's metadata)
    ssm = {k: v for k, v in ssm.items() if k == "layer" or v != DEFAULTS[layer][k]}
    try:
        return MambaConfig(d_model=hidden, n_layer=d["num_hidden_layers"], vocab_size=d["vocab_size"],
                           ssm_cfg=ssm, norm_epsilon=float(d["layer_norm_epsilon"]),
                           residual_in_fp32=bool(d["residual_in_fp32"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from e


def _directory_config(path: Path):
    """-> (MambaConfig, metadata dict, whether config.json says the head is untied), from config.json."""
    if not (path / "config.json").exists():
        if any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir()):
            _refuse_pickles(path)
        raise CheckpointError(f"{path} is a directory without config.json: not a HF transformers or "
                              "mamba_ssm model directory (a checkpoint file is a .safetensors file)")
    raw = _read_json(path / "config.json")
    archs = raw.get("architectures") or []
    known = [a for a in archs if a in HF_ARCHITECTURES]
    untied = False
    if known:
        source = f"hf-transformers/{known[0]}"
        cfg = _hf_config(path, raw, HF_ARCHITECTURES[known[0]])
        untied = not _hf_settings(cfg.layer, raw)["tie_word_embeddings"]
    elif archs or ("model_type" in raw and "d_model" not in raw):
        what = archs or [raw["model_type"]]
        raise CheckpointError(f"{path / 'config.json'}: unknown architecture {what}; supported: "
                              f"{', '.join(HF_ARCHITECTURES)} (HF transformers) or a mamba_ssm config "
                              "(d_model, n_layer, ssm_cfg)")
    elif "d_model" in raw and "n_layer" in raw:
        source = "mamba_ssm"
        try:
            cfg = MambaConfig.from_mamba_ssm_dict({**MAMBA_SSM_DEFAULTS, **raw})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path / 'config.json'}: {e}") from e
    else:
        raise CheckpointError(f"{path / 'config.json'}: neither a HF transformers config (architectures) "
                              "nor a mamba_ssm one (d_model, n_layer)")
    meta = {"format": source, "config": json.dumps(cfg.to_mamba_ssm_dict()),
            "norm_epsilon": repr(float(cfg.norm_epsilon))}
    return cfg, meta, untied


def _read_directory(path: Path):
    """-> (MambaConfig, tensors as stored, metadata dict) for a HF or mamba_ssm directory."""
    cfg, meta, untied = _directory_config(path)
    _weight_files(path)                                  # refuses pickle-only directories by name
    tensors = _read_directory_tensors(path)
    if untied:
        # HF then keeps a separate lm_head; ours is the embedding, so only an equal copy will do
        head, emb = tensors.get("lm_head.weight"), tensors.get(HF_EMBEDDING_KEY)
        if head is None or emb is None or head.shape != emb.shape or not torch.equal(head.float(), emb.float()):
            raise CheckpointError(f"{path / 'config.json'}: tie_word_embeddings=false and lm_head.weight is "
                                  "not the embedding matrix: an untied head, but this LM only supports a tied "
                                  "one (lm_head = embedding, as HF's Mamba models by default)")
    return cfg, tensors, meta


# --- validation and construction -----------------------------------------------------------------

def _check_vocab(path, cfg: MambaConfig, emb: torch.Tensor, source: str):
    """The embedding's rows against the config's vocabulary (padded as the config says)."""
    rows, want = emb.shape[0], cfg.padded_vocab_size
    if rows == want:
        return
    msg = (f"{path}: shape of {EMBEDDING_KEY} is {tuple(emb.shape)}: {rows} rows, but the config's "
           f"vocabulary needs {want}")
    if want < rows < want + 1024:    # a few rows more: a vocabulary padded for GPU matmuls
        if source.startswith("hf-"):
            msg += (f" (vocab padding: HF configs hold the padded size, as state-spaces/mamba-130m-hf's "
                    f"50280 for 50277 tokens; set vocab_size to {rows} in config.json)")
        else:
            msg += (f" (vocab padding: vocab_size={cfg.vocab_size} padded to a multiple of "
                    f"pad_vocab_size_multiple={cfg.pad_vocab_size_multiple} gives {want}; set "
                    f"pad_vocab_size_multiple so that it gives {rows})")
    raise CheckpointError(msg)


def _check_layer_kind(path, cfg: MambaConfig, tensors: dict):
    mamba1 = any(k.endswith("mixer.x_proj.weight") for k in tensors)
    mamba2 = any(k.endswith("mixer.dt_bias") for k in tensors)
    if (cfg.layer == "Mamba2" and mamba1 and not mamba2) or (cfg.layer == "Mamba1" and mamba2 and not mamba1):
        other = "Mamba1" if mamba1 else "Mamba2"
        raise CheckpointError(f"{path}: the weights are {other} layers but the config says "
                              f"ssm_cfg.layer={cfg.layer!r}")


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or inf in t. A NaN or inf makes the sum non-finite, and summing is ~25x faster than
    isfinite(t).all() (measured: 18 vs 470 ms for the 130m embedding on 2 cores); only a sum that
    overflows needs the exact check."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _to_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype}")
    return dtype


def _build(path, cfg: MambaConfig, tensors: dict, device, dtype, source: str) -> MambaLM:
    # built on the meta device and filled with the loaded tensors (assign below): the weights are in
    # memory once, not twice -- what lets a 2.8b model load in bf16 on a laptop
    with torch.device("meta"):
        lm = MambaLM(cfg, dtype=dtype)
    expected = {k: v for k, v in lm.state_dict().items() if k != "lm_head.weight"}
    lm_head = tensors.pop("lm_head.weight", None)
    if EMBEDDING_KEY in tensors and tensors[EMBEDDING_KEY].dim() == 2:
        _check_vocab(path, cfg, tensors[EMBEDDING_KEY], source)
    _check_layer_kind(path, cfg, tensors)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: missing key {missing[0]}{more}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected key {unexpected[0]} for a {cfg.n_layer}-layer {cfg.layer} model")
    for k, want in expected.items():
        t = tensors[k]
        if tuple(t.shape) != tuple(want.shape):
            raise CheckpointError(f"{path}: shape of {k} is {tuple(t.shape)}, expected {tuple(want.shape)} "
                                  f"from the config")
        if not t.is_floating_point():
            raise CheckpointError(f"{path}: dtype of {k} is {t.dtype}, expected a floating-point type")
        if not _all_finite(t):
            raise CheckpointError(f"{path}: {k} contains NaN or infinite values")
    if lm_head is not None and not torch.equal(lm_head.float(), tensors[EMBEDDING_KEY].float()):
        raise CheckpointError(f"{path}: lm_head.weight differs from the embedding, but the model ties them "
                              "(untied heads are not supported)")
    sd = {k: tensors[k].to(device=device, dtype=want.dtype) for k, want in expected.items()}
    sd["lm_head.weight"] = sd[EMBEDDING_KEY]
    lm.load_state_dict(sd, strict=True, assign=True)
    lm.lm_head.weight = lm.backbone.embedding.weight                    # tie_embeddings
    left = [n for n, t in [*lm.named_parameters(), *lm.named_buffers()] if t.is_meta]
    assert not left, f"not filled from the checkpoint: {left}"
    return lm.eval()


def load_checkpoint(path, device="cpu", dtype=torch.float32) -> MambaLM:
    """Read, validate and build the model from a checkpoint file or a model directory (module docstring).

    dtype: the model's weights, torch.float32 (default), float16 or bfloat16 (or "fp32", "bf16", ...);
    A_log, D (and Mamba2's dt_bias) stay fp32 whatever it is. Extra facts land on the model:
    lm.task (dict or None), lm.text_task (a tasks.TextTask from the directory's tokenizer.json, or
    None), lm.checkpoint_sha256, lm.checkpoint_path, lm.checkpoint_metadata."""
    path = Path(path)
    dtype = _to_dtype(dtype)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        cfg, tensors, meta = _read_directory(path)
    else:
        meta = read_metadata(path)
        cfg = _config_from_metadata(path, meta)
        tensors = _read_tensors(path)
    if HF_EMBEDDING_KEY in tensors:
        tensors[EMBEDDING_KEY] = tensors.pop(HF_EMBEDDING_KEY)
    try:
        task = json.loads(meta["task"]) if "task" in meta else None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid task metadata ({e})") from e
    text = None
    if path.is_dir():     # the tokenizer first: a mismatch is refused before the weights are built
        try:
            tok = load_tokenizer(path)
            text = text_task(tok, cfg.vocab_size) if tok is not None else None
        except TokenizerError as e:
            raise CheckpointError(f"{path}: {e}") from None
    lm = _build(path, cfg, tensors, device, dtype, meta.get("format", FORMAT))
    lm.task = task
    lm.text_task = text
    lm.checkpoint_sha256 = file_sha256(path)
    lm.checkpoint_path = str(path)
    lm.checkpoint_metadata = meta
    return lm
