"""The app's adapters, one module per tab (gradio): widgets' raw values in, charts / text / files out.

    common.py     the device, the model loaded once, user errors, widget-value coercion
    explore.py    the Explore tab: the view (dashboard + summary), generator, presets, quick edits
    export.py     the Export accordion's downloads and `python -m ui.export` (batch export)
    mechanism.py  the Mechanism tab: two checkpoints compared, hidden attention, interventions

app.py lays the widgets out and wires them to these functions.
"""
