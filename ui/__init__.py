"""The app's adapters, one module per tab (gradio): widgets' raw values in, charts / text / files out.

    common.py     the device, the model loaded once, user errors, widget-value coercion
    explore.py    the Explore tab: the view (dashboard + summary), generator, presets, quick edits
    export.py     the Export accordion's downloads and `python -m ui.export` (batch export, figures)
    figure.py     any chart as a captioned PNG / SVG figure (the Export accordion's "Figure")
    mechanism.py  the Mechanism tab: two checkpoints compared, hidden attention, interventions
    patching.py   the Patching tab: clean vs corrupted, activation patching
    lens.py       the Logit lens tab
    permalink.py  the view in the URL's query string and back ("copy link", the page's load event)
    limits.py     the heavy / light lanes, the per-client queue share, memory trim, no uploads
    storage.py    the export folder: identical files shared, a quota

app.py lays the widgets out and wires them to these functions.
"""
