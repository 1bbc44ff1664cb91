"""mambascope's views: sequences, tidy frames and Altair charts of a trace. numpy/pandas/altair only.

    from viz import TraceView, dashboard, parse_tokens
    chart = dashboard(TraceView.from_trace(tr, label="induction-2layer"), sort="ratio")

Modules: sequences (the text box, task positions, quick edits, presets), frames (binning, tidy
DataFrames), charts (one function per chart + the dashboard), tables (tidy CSV export).
`python -m viz.export` is the batch exporter; it is the one module here that imports the model.
"""
from .charts import TIME_PARAM, chart_html, dashboard  # noqa: F401
from .frames import TraceView, time_bins  # noqa: F401
from .sequences import (MAX_LEN, PRESETS, Generator, TokenError, format_tokens,  # noqa: F401
                        parse_tokens)
