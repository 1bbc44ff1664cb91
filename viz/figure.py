"""Any chart as a figure for a paper: PNG (at a chosen DPI) or SVG, rendered by vl-convert (the
Vega-Lite compiler and renderer Altair itself uses; no browser), with a caption under the title.

    fig = captioned(chart, ["model induction-2layer (sha256 1a2b3c4d5e6f)", "L = 256, generated (seed 0)"])
    svg = to_svg(fig)                      # text, sized in CSS px (= pt at 72 ppi)
    png = to_png(fig, dpi=300)             # scale = dpi / 72; the PNG's pHYs chunk says 300 dpi

The caption goes into the chart's top-level title as subtitle lines (the title text stays), so it
is part of the figure in both formats and of its SVG text. Interactive parts (the time selection,
the heatmap readout) draw in their resting state. A PNG is refused above MAX_PIXELS (a
2,000-pixel-tall dashboard at 600 dpi would be ~140 MP and gigabytes of memory).
"""
from __future__ import annotations

import json
import struct
import zlib

import altair as alt
import vl_convert as vlc

BASE_PPI = 72                 # Vega's CSS pixel = 1/72 inch (vl-convert's default ppi): px = css px * dpi / 72
DPI_RANGE = (36, 600)
MAX_PIXELS = 60_000_000       # width x height of a PNG, at most (~240 MB of RGBA while encoding)
FONT = "Liberation Sans, Arial, Helvetica, sans-serif"      # one sans font for every text (titles too)


def captioned(chart: alt.TopLevelMixin, caption: list) -> alt.TopLevelMixin:
    """A copy of `chart` whose top-level title keeps its text and gains the caption lines as subtitle."""
    spec_title = chart.title if chart.title is not alt.Undefined else ""
    if isinstance(spec_title, alt.TitleParams):
        text = spec_title.text
    elif isinstance(spec_title, dict):
        text = spec_title.get("text", "")
    else:
        text = spec_title
    return chart.properties(title=alt.TitleParams(text=text, subtitle=list(caption), anchor="start",
                                                  subtitleColor="#333", subtitleFontSize=11))


def spec(chart: alt.TopLevelMixin) -> dict:
    """The chart's Vega-Lite spec with one font throughout (not re-validated: charts are tested)."""
    s = json.loads(chart.to_json(validate=False, indent=None))
    config = s.setdefault("config", {})
    config["font"] = FONT
    for part in ("title", "axis", "legend", "header", "mark"):
        config.setdefault(part, {})["font"] = FONT
    config["title"]["subtitleFont"] = FONT
    for part in ("axis", "legend", "header"):
        config[part]["labelFont"] = config[part]["titleFont"] = FONT
    return s


def to_svg(chart: alt.TopLevelMixin) -> str:
    return vlc.vegalite_to_svg(spec(chart))


def svg_size(svg: str) -> tuple:
    """(width, height) in CSS px from the root <svg> element's attributes."""
    import xml.etree.ElementTree as ET
    root = ET.fromstring(svg)
    return float(root.get("width")), float(root.get("height"))


def check_dpi(dpi: float) -> float:
    lo, hi = DPI_RANGE
    if not lo <= dpi <= hi:
        raise ValueError(f"dpi {dpi:g} is out of range {lo}..{hi}")
    return float(dpi)


def to_png(chart: alt.TopLevelMixin, dpi: float = 300) -> bytes:
    """The chart at `dpi` (scale dpi / 72); its size in inches is the chart's px / 72 at any dpi."""
    dpi = check_dpi(dpi)
    svg = to_svg(chart)
    w, h = svg_size(svg)
    scale = dpi / BASE_PPI
    pixels = w * h * scale * scale
    if pixels > MAX_PIXELS:
        most = int(BASE_PPI * (MAX_PIXELS / (w * h)) ** 0.5)
        raise ValueError(f"a {w:.0f} x {h:.0f} px chart at {dpi:g} dpi would be {pixels / 1e6:.0f} MP, over the "
                         f"limit of {MAX_PIXELS / 1e6:.0f} MP: choose at most {most} dpi (or the SVG)")
    # vl-convert sizes a PNG by ppi / 72 itself (and writes ppi into pHYs): scale stays 1
    return vlc.svg_to_png(svg, scale=1.0, ppi=dpi)


def png_info(png: bytes) -> dict:
    """width, height (px) and dpi (from pHYs, None without one) of PNG bytes, read from its chunks."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG (bad signature)")
    out, pos = {"dpi": None}, 8
    while pos + 8 <= len(png):
        n, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + n]
        if zlib.crc32(kind + data) != struct.unpack(">I", png[pos + 8 + n:pos + 12 + n])[0]:
            raise ValueError(f"PNG chunk {kind!r} has a bad CRC")
        if kind == b"IHDR":
            out["width"], out["height"] = struct.unpack(">II", data[:8])
        elif kind == b"pHYs":
            x, _, unit = struct.unpack(">IIB", data)
            out["dpi"] = x * 0.0254 if unit == 1 else None
        elif kind == b"IEND":
            break
        pos += 12 + n
    return out
