"""A trace as one tidy CSV: columns layer, t, channel, quantity, value. numpy / pandas only.

    write_tidy_csv(tr, "trace.csv.gz")                     # the charted quantities, whole sequence
    write_tidy_csv(tr, "t.csv.gz", quantities=ALL_QUANTITIES, t_from=0, t_to=512)

Size policy (a tidy CSV has one row per number, so it grows fast: 529 rows per timestep for the
charted quantities of the 2-layer model, 1,250 for all of them):
- gzip (level 1: fast, ~3x smaller; no time in the header: identical traces, identical bytes)
  whenever the path ends in .gz; the app always writes .csv.gz;
- DEFAULT_QUANTITIES are what the charts show (Δ, the state norms, the output probabilities);
  ALL_QUANTITIES adds u, y, B, C, the residual stream and the logits;
- the rows are those of the chosen time window [t_from, t_to);
- over `max_rows` (CSV_MAX_ROWS in the app) nothing is written and a ValueError says how many
  rows it would be and what to do instead (a narrower window, fewer quantities, or the
  safetensors export, which holds every array at any length). Never a silently cut file.
Values are written with 9 significant digits: float32 round-trips exactly.

Model-level quantities (probs, logits) have layer = -1 and the vocabulary id in `channel`.
A plain LM's trace (model/trace.py) holds the top-k instead of the full distribution at a large
vocabulary: LM_QUANTITIES, layer -1, `channel` the rank (top_k_ids, top_k_probs) or 0 (p_next,
logp_next; NaN at the last step). With `labels` (the task's token_labels) two text columns follow:
token (the input token at t, decoded) and predicted (the decoded candidate on top_k_ids rows).
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

LAYER_QUANTITIES_DEFAULT = ("delta", "state_norm")
# decay: Mamba-2 layers only (exp(Δ·A) per head); a quantity a trace lacks is skipped
LAYER_QUANTITIES_ALL = ("delta", "state_norm", "ssm_input", "ssm_output", "B", "C", "decay", "resid_post")
DEFAULT_QUANTITIES = LAYER_QUANTITIES_DEFAULT + ("probs",)
ALL_QUANTITIES = LAYER_QUANTITIES_ALL + ("probs", "logits")
LM_QUANTITIES = ("p_next", "logp_next", "top_k_ids", "top_k_probs")
LM_DEFAULT_QUANTITIES = LAYER_QUANTITIES_DEFAULT + LM_QUANTITIES
LM_ALL_QUANTITIES = LAYER_QUANTITIES_ALL + LM_QUANTITIES + ("probs", "logits")
MODEL_QUANTITIES = ("probs", "logits") + LM_QUANTITIES
KNOWN_QUANTITIES = ALL_QUANTITIES + LM_QUANTITIES
CSV_MAX_ROWS = 1 << 22          # 4,194,304 rows: ~7,900 steps of the default quantities, ~25 MB gzipped
COLUMNS = ["layer", "t", "channel", "quantity", "value"]
TEXT_COLUMNS = ["token", "predicted"]      # with `labels` only


def _blocks(trace, quantities):
    """(layer, quantity, array [L, C]) for every requested quantity the trace holds; layer -1 for
    model outputs. Arrays with more axes (Mamba-2's B, C [L, G, N]) are flattened to [L, G·N]:
    the `channel` column is then g·N + n."""
    unknown = [q for q in quantities if q not in KNOWN_QUANTITIES]
    if unknown:
        raise ValueError(f"unknown quantity {unknown[0]!r}; choose from {', '.join(KNOWN_QUANTITIES)}")
    for i, lt in enumerate(trace.layers):
        for q in quantities:
            a = None if q in MODEL_QUANTITIES else getattr(lt, q, None)
            if a is not None:
                yield i, q, a.reshape(a.shape[0], -1)
    for q in quantities:
        a = getattr(trace, q, None) if q in MODEL_QUANTITIES else None
        if a is not None:         # a top-k trace has no full distribution, an older one no top-k
            yield -1, q, a.reshape(a.shape[0], -1)


def csv_rows(trace, quantities=DEFAULT_QUANTITIES, t_from: int = 0, t_to=None) -> int:
    t_to = trace.tokens.shape[0] if t_to is None else t_to
    return sum((t_to - t_from) * a.shape[1] for _, _, a in _blocks(trace, quantities))


def tidy_frame(layer: int, quantity: str, values: np.ndarray, t_from: int) -> pd.DataFrame:
    """values [n, C] for the timesteps t_from.. -> n * C tidy rows, time-major."""
    n, C = values.shape
    return pd.DataFrame({"layer": np.full(n * C, layer, dtype=np.int64),
                         "t": np.repeat(np.arange(t_from, t_from + n, dtype=np.int64), C),
                         "channel": np.tile(np.arange(C, dtype=np.int64), n),
                         "quantity": quantity, "value": values.reshape(-1)})


def write_tidy_csv(trace, path, quantities=DEFAULT_QUANTITIES, t_from=None, t_to=None,
                   max_rows: int = CSV_MAX_ROWS, labels=None) -> int:
    """Write the tidy CSV (gzip if `path` ends in .gz) and return its number of data rows.
    labels: ids [n] -> decoded token strings [n] (tasks.Task.token_labels): adds TEXT_COLUMNS."""
    L = int(trace.tokens.shape[0])
    t0 = 0 if t_from is None else int(t_from)
    t1 = L if t_to is None else int(t_to)
    if not (0 <= t0 < t1 <= L):
        raise ValueError(f"time window {t0}..{t1} is not inside 0..{L}")
    rows = csv_rows(trace, quantities, t0, t1)
    if rows > max_rows:
        raise ValueError(
            f"the CSV of t = {t0}..{t1 - 1} with {', '.join(quantities)} would have {rows:,} rows, over "
            f"the cap of {max_rows:,}: narrow the time window (at most {max_rows * (t1 - t0) // rows:,} steps), "
            "choose fewer quantities, or download the safetensors trace (every array, any length)")
    path = Path(path)
    # mtime=0: the gzip header holds no time, so the same trace gives the same bytes every run
    if path.suffix == ".gz":
        fh = io.TextIOWrapper(gzip.GzipFile(path, "wb", compresslevel=1, mtime=0), encoding="utf-8", newline="")
    else:
        fh = open(path, "w", encoding="utf-8", newline="")
    with fh:
        fh.write(",".join(COLUMNS + (TEXT_COLUMNS if labels is not None else [])) + "\n")
        tok = None if labels is None else np.asarray(labels(trace.tokens[t0:t1]), dtype=object)   # [n]
        for layer, q, arr in _blocks(trace, quantities):
            df = tidy_frame(layer, q, np.asarray(arr)[t0:t1], t0)
            if tok is not None:
                df["token"] = np.repeat(tok, arr.shape[1])
                df["predicted"] = labels(df["value"].to_numpy().astype(np.int64)) if q == "top_k_ids" else ""
            df.to_csv(fh, header=False, index=False, float_format="%.9g", lineterminator="\n")
    return rows
