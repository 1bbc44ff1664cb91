"""Measured results as JSON (docs/mechanism/results-<stem>.json), and back: a CheckpointResult is
stored with the settings it was measured under, and reused only for the same checkpoint file
(sha256) and the same measurement settings.

The encoding follows the dataclasses' own type hints: arrays as nested lists (their dtype from the
values: float64 or int64), dict keys back to their hinted type, nested dataclasses, lists of them
and Optionals by field.
Python floats survive a JSON round trip exactly (repr), so a loaded result equals the saved one.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Optional

import numpy as np

from model.checkpoint import file_sha256

from .results import CheckpointResult

FORMAT = "mambascope-mechanism-result/2"
NOT_MEASUREMENT = ("checkpoints", "out", "fig_dir", "threads")   # settings that do not change a number


def encode(x):
    """A dataclass / array / container -> plain JSON values."""
    if dataclasses.is_dataclass(x):
        return {f.name: encode(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, dict):
        return {str(k): encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [encode(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return x


def _decode(hint, v):
    if v is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:                                  # Optional[X]
        return _decode(next(a for a in args if a is not type(None)), v)
    if dataclasses.is_dataclass(hint):
        return decode(hint, v)
    if hint is np.ndarray:
        return np.asarray(v)
    if origin is list and args:
        return [_decode(args[0], x) for x in v]
    if origin is dict and args:                                 # JSON keys are strings: int keys come back
        return {args[0](k): _decode(args[1], x) for k, x in v.items()}
    if hint is float:
        return float(v)
    return v


def decode(cls, data: dict):
    """Plain JSON values -> an instance of dataclass `cls` (see `encode`)."""
    hints = typing.get_type_hints(cls)
    kw = {f.name: _decode(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data}
    return cls(**kw)


def settings_key(cfg) -> dict:
    """The measurement settings (JSON values) a cached result must share."""
    return encode({k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_MEASUREMENT})


def save(path: Path, r: CheckpointResult, cfg) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": FORMAT, "settings": settings_key(cfg), "result": encode(r)}))


def load(path: Path, checkpoint: Path, cfg) -> Optional[CheckpointResult]:
    """The cached result for `checkpoint`, or None if absent, of another format, or measured on another
    file or other settings."""
    path = Path(path)
    if not path.exists():
        return None
    blob = json.loads(path.read_text())
    if blob.get("format") != FORMAT or blob.get("settings") != settings_key(cfg):
        return None
    if blob["result"]["sha256"] != file_sha256(checkpoint):
        return None
    return decode(CheckpointResult, blob["result"])
