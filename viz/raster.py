"""Heatmaps as images: values -> RGB through Vega's own colour schemes -> a PNG data URI.

Why: drawn as one Vega rect per (time bin, channel), the four 64 x 128 heatmaps of a 2-layer
trace were ~33k scene items, ~0.9 s of a 1.3 s click-to-charts in the browser. One image mark per
heatmap draws the same cells in a few ms; the colours are Vega's, so the legend (a colour scale
with the same scheme and domain) reads them exactly.

Vega's continuous schemes (vega-scale's schemes.js) are these palettes of 31 stops, interpolated
piecewise-linearly in RGB; a value v maps to (v - lo) / (hi - lo) on [lo, hi], the data's extent.
No image library: a PNG is zlib-compressed rows between a few CRC'd chunks.
"""
from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

SCHEMES = {   # vega-scale 'continuous' palettes, hex RGB triples
    "viridis": ("440154470e61481a6c482575472f7d443a834144873d4e8a39568c35608d31688e2d708e2a788e27818e"
                "23888e21918d1f988b1fa08822a8842ab07f35b77943bf7154c56866cc5d7ad1518fd744a5db36bcdf27"
                "d2e21be9e51afde725"),
    "magma": ("0000040404130b0924150e3720114b2c11603b0f704a107957157e651a80721f817f24828c29819a2e80"
                "a8327db6377ac43c75d1426fde4968e95462f1605df76f5cfa7f5efc8f65fe9f6dfeaf78febf84fece91"
                "fddea0fcedaffcfdbf"),
}


def palette(scheme: str) -> np.ndarray:
    """[31, 3] float64 RGB stops of a Vega scheme."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown colour scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
    h = SCHEMES[scheme]
    return np.array([[int(h[i + k:i + k + 2], 16) for k in (0, 2, 4)] for i in range(0, len(h), 6)], dtype=np.float64)


def extent(values: np.ndarray) -> tuple:
    """(lo, hi) of the finite values, as Vega's scale domain would take them; (0, 1) if none."""
    v = values[np.isfinite(values)]
    return (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)


def colorize(values: np.ndarray, scheme: str, domain: tuple) -> np.ndarray:
    """values [H, W] -> uint8 RGB [H, W, 3], as Vega's linear colour scale on `domain` draws them
    (d3.piecewise(interpolateRgb) over the palette, clamped; NaN -> white)."""
    stops = palette(scheme)
    lo, hi = domain
    t = (values.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.zeros(values.shape)
    t = np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0) * (len(stops) - 1)
    i = np.minimum(t.astype(np.int64), len(stops) - 2)                 # segment index
    f = (t - i)[..., None]
    rgb = np.round(stops[i] * (1 - f) + stops[i + 1] * f)
    rgb[~np.isfinite(values)] = 255.0
    return rgb.astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> an 8-bit RGB PNG (filter 0 on every row)."""
    h, w, _ = rgb.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(rgb).reshape(h, w * 3)], axis=1)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _chunk(b"IEND", b""))


def read_png(data: bytes) -> np.ndarray:
    """The inverse of png_bytes for its own output (tests read the page's images back)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    if rows[:, 0].any():
        raise ValueError("only filter-0 PNG rows are supported")
    return rows[:, 1:].reshape(h, w, 3)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
