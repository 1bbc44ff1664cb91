"""Chart data as it travels on the page: inline CSV text at SIG_DIGITS significant digits.

CSV is ~5x smaller than Altair's JSON records, and Altair neither transforms nor row-limits
inline data: its 5,000-row MaxRowsError applies to DataFrames only, so it is bypassed on purpose
here, and no row is ever sampled or cut (tests/test_viz.py counts them). The size is bounded by
the time binning (viz/frames.py). Exports (viz/tables.py, Trace.save) keep full precision.
"""
from __future__ import annotations

import altair as alt
import pandas as pd

SIG_DIGITS = 4                  # on the page only


def csv_column(col: pd.Series) -> list:
    """One column as CSV cells: floats at SIG_DIGITS, text quoted where it holds ',' or '"'."""
    if col.dtype.kind == "f":
        return list(map(f"{{:.{SIG_DIGITS}g}}".format, col.tolist()))
    if col.dtype.kind in "iub":
        return list(map(str, col.tolist()))
    return ['"' + v.replace('"', '""') + '"' if ("," in v or '"' in v) else v for v in map(str, col.tolist())]


def csv_text(frame: pd.DataFrame) -> str:
    """frame -> CSV text, floats at SIG_DIGITS significant digits. (3x faster than
    DataFrame.to_csv with a float_format, which dominated the time to draw a trace.)"""
    cols = [csv_column(frame[c]) for c in frame.columns]
    return ",".join(frame.columns) + "\n" + "\n".join(map(",".join, zip(*cols)))


def inline_csv(frame: pd.DataFrame, numeric=()) -> alt.InlineData:
    """A DataFrame as inline CSV data; `numeric` columns are parsed as numbers, the rest stay text."""
    return alt.InlineData(values=csv_text(frame), format=alt.CsvDataFormat(
        type="csv", parse={c: "number" for c in numeric if c in frame.columns}))
