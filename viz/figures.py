"""Draw the mechanism report's figures from their data: figures.json -> one PNG per figure.

    python -m viz.figures docs/mechanism/figures.json            # after python -m analysis.mechanism

analysis/report.py writes figures.json ({name: {"chart": a chart function of viz/mechanism.py,
"file": "<name>.png", "kwargs": {...}}}, arrays as JSON lists) because analysis/ may not import
viz/; here each entry is drawn with that function and saved next to the JSON as PNG with
vl-convert (a runtime dependency, requirements.txt).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import mechanism, memory

CHARTS = {f.__name__: f for f in (mechanism.delta_ratio_chart, mechanism.probe_accuracy_chart,
                                  mechanism.state_evolution_chart, mechanism.hidden_attention_chart,
                                  mechanism.horizon_chart, mechanism.intervention_chart,
                                  memory.retention_chart, memory.holders_chart, memory.clamp_chart,
                                  memory.capacity_chart)}
SCALE = 1.5      # PNG pixels per CSS pixel (the report's figures since the first one)


def chart(spec: dict):
    """One figure's entry -> its alt.Chart."""
    name = spec.get("chart")
    if name not in CHARTS:
        raise ValueError(f"unknown chart {name!r}; figures.json may name {', '.join(sorted(CHARTS))}")
    return CHARTS[name](**spec.get("kwargs", {}))


def render(figures_json: Path, only=()) -> list:
    """Draw every figure (or those named in `only`) of `figures_json` into its folder; returns the paths."""
    try:
        import vl_convert  # noqa: F401
    except ImportError:
        raise SystemExit("PNG figures need vl-convert: pip install -r requirements.txt "
                         "(vl-convert-python)") from None
    figures_json = Path(figures_json)
    specs = json.loads(figures_json.read_text())
    unknown = [n for n in only if n not in specs]
    if unknown:
        raise ValueError(f"no figure {unknown[0]!r} in {figures_json}; it holds {', '.join(specs)}")
    out = []
    for name, spec in specs.items():
        if only and name not in only:
            continue
        path = figures_json.parent / Path(spec.get("file") or f"{name}.png").name   # never outside the folder
        chart(spec).save(str(path), scale_factor=SCALE)
        out.append(path)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("figures", help="figures.json written by python -m analysis.mechanism")
    ap.add_argument("--only", default="", help="comma-separated figure names to draw (default: all)")
    a = ap.parse_args(argv)
    paths = render(Path(a.figures), [s for s in a.only.split(",") if s])
    print(f"wrote {len(paths)} figures to {Path(a.figures).parent}/")


if __name__ == "__main__":
    main()
