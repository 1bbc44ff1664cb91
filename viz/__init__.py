"""mambascope's views: tidy frames and Altair charts of a trace. numpy/pandas/altair, and tasks/
for what the tokens mean; no torch, gradio or model.

    from tasks import INDUCTION
    from viz import TraceView, dashboard
    chart = dashboard(TraceView.from_trace(tr, INDUCTION, label="induction-2layer"), sort="ratio")

Modules: frames (binning, token roles, tidy DataFrames), charts (one function per chart + the
dashboard), hover (the heatmaps' pointer readout), inline (chart data on the page), raster
(heatmap images), tables (tidy CSV export), summary (the one-line description), mechanism (the
mechanism study's charts). The batch exporter is `python -m ui.export`.
"""
from .charts import TIME_PARAM, chart_html, dashboard  # noqa: F401
from .frames import TraceView, time_bins  # noqa: F401
