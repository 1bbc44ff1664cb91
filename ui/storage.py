"""Where the Export accordion's files live: one folder, content-addressed, with a quota.

    path = store("trace-L256.safetensors", tr.save)       # write(path) makes the file

- Identical exports are one file: a file is written to a staging name, hashed (sha256), and kept
  as <root>/<first 16 hex digits>/<name>; a second identical export gets the first one's path
  (touched, so it counts as recent). The same bytes under another name are a hard link.
- QUOTA_BYTES in all: after each export the oldest files (by last use) are removed until the
  rest fit; the file just made is never removed by its own export. Files older than MAX_AGE_S go too.
- The root is inside Gradio's cache folder (GRADIO_TEMP_DIR, else <tmp>/gradio), so Gradio serves
  the file where it is instead of copying it into its cache (one copy on disk, not two).
- Anyone holding a file's URL can download it while it exists (Gradio serves its cache that way):
  exports are not private to the user who made them.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from gradio.utils import get_upload_folder

QUOTA_BYTES = 2 << 30                    # 2 GiB in all: ~6 of the largest trace (313 MiB at L = 65,536)
MAX_AGE_S = 3600                         # an export older than an hour (since its last use) goes
HASH_DIGITS = 16                         # folder name: the first 16 hex digits of the sha256
STAGING = ".staging-"                    # files being written (never served, never counted as exports)
_LOCK = threading.Lock()                 # one request at a time decides what to keep


def root() -> Path:
    return Path(get_upload_folder()) / "mambascope-exports"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def exports(base: Path) -> list:
    """[(path, size, last use)] of every stored export, oldest first."""
    out = []
    for d in base.iterdir() if base.exists() else ():
        if d.is_dir() and not d.name.startswith("."):
            for f in d.iterdir():
                try:
                    st = f.stat()
                except OSError:              # removed by another request meanwhile
                    continue
                out.append((f, st.st_size, st.st_mtime))
    return sorted(out, key=lambda x: x[2])


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()                  # only when empty
    except OSError:
        pass


def prune(base: Path, keep: Path, quota: int = QUOTA_BYTES, max_age_s: float = MAX_AGE_S) -> None:
    """Remove exports older than max_age_s, then the oldest until the rest fit in `quota` (never `keep`)."""
    now = time.time()
    files = exports(base)
    total = sum(size for _, size, _ in files)
    for f, size, used in files:
        if f == keep:
            continue
        if total > quota or now - used > max_age_s:
            _remove(f)
            total -= size


def store(name: str, write: Callable[[Path], object], quota: int = QUOTA_BYTES) -> Path:
    """Make an export with write(path) and return where it is kept (see the module docstring)."""
    base = root()
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f"{STAGING}{uuid.uuid4().hex}-{name}"
    try:
        write(staging)
        digest = _sha256(staging)[:HASH_DIGITS]
        with _LOCK:
            folder = base / digest
            dest = folder / name
            folder.mkdir(exist_ok=True)
            same = [f for f in folder.iterdir()]
            if dest.exists():
                os.utime(dest)
            elif same:                                   # the same bytes under another name
                os.link(same[0], dest)
            else:
                os.replace(staging, dest)
            prune(base, dest, quota)
    finally:
        staging.unlink(missing_ok=True)
    return dest
