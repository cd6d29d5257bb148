"""The guard's candidates as a plot: predicted Ω against the measured calibration loss, one SVG."""
from __future__ import annotations

import math
from typing import Any, Mapping
from xml.sax.saxutils import escape

COLOURS = {"optimum": "#2563eb", "alternative": "#10b981", "uniform": "#f97316"}


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round values between lo and hi (1, 2 or 5 times a power of ten apart)."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def guard_svg(g: Mapping[str, Any]) -> str:
    """An SVG scatter of a guard record's candidates: x the predicted Ω the ILP ranked them by, y the
    cross-entropy measured on held-back calibration samples; colour by kind, the chosen one ringed.

    g: a Plan's guard record (hawq.guard.guard), with at least one candidate.
    """
    cands = [c for c in g["candidates"] if math.isfinite(c["calibration_loss"]) and math.isfinite(c["predicted_omega"])]
    W, H = 640, 400
    x0, x1, y0, y1 = 84, W - 24, 40, H - 64
    xs = [c["predicted_omega"] for c in cands] or [0.0]
    ys = [c["calibration_loss"] for c in cands] or [0.0]

    def span(v: list[float]) -> tuple[float, float]:
        lo, hi = min(v), max(v)
        pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad

    (xlo, xhi), (ylo, yhi) = span(xs), span(ys)

    def X(v: float) -> float:
        return x0 + (v - xlo) / (xhi - xlo) * (x1 - x0)

    def Y(v: float) -> float:
        return y1 - (v - ylo) / (yhi - ylo) * (y1 - y0)

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="Helvetica, Arial, sans-serif">',
         f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
         f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="#fafafa" stroke="#d1d5db"/>',
         f'<text x="{x0}" y="24" font-size="14" font-weight="bold" fill="#111827">Predicted Ω against measured '
         f'loss, {len(cands)} candidates</text>']
    for v in nice_ticks(ylo, yhi):
        s.append(f'<line x1="{x0}" x2="{x1}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#e5e7eb"/>'
                 f'<text x="{x0 - 8}" y="{Y(v) + 4:.1f}" font-size="11" text-anchor="end" fill="#374151">{v:.4g}</text>')
    for v in nice_ticks(xlo, xhi):
        s.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{y0}" y2="{y1}" stroke="#e5e7eb"/>'
                 f'<text x="{X(v):.1f}" y="{y1 + 18}" font-size="11" text-anchor="middle" fill="#374151">{v:.4g}</text>')
    s.append(f'<text x="{(x0 + x1) / 2}" y="{H - 24}" font-size="12" text-anchor="middle" fill="#111827">'
             'predicted Ω (the loss increase the ILP minimised)</text>')
    s.append(f'<text transform="translate(20 {(y0 + y1) / 2}) rotate(-90)" font-size="12" text-anchor="middle" '
             'fill="#111827">measured calibration loss</text>')
    for c in cands:
        x, y = X(c["predicted_omega"]), Y(c["calibration_loss"])
        colour = COLOURS.get(c.get("kind", ""), "#6b7280")
        tip = f"{c['label']} ({c.get('kind', '')}): Ω {c['predicted_omega']:.4g}, loss {c['calibration_loss']:.4f}"
        s.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}"><title>{escape(tip)}</title></circle>')
        s.append(f'<text x="{x + 8:.1f}" y="{y - 6:.1f}" font-size="11" fill="#374151">{escape(str(c["label"]))}</text>')
        if c["label"] == g.get("chosen"):
            s.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="10" fill="none" stroke="#dc2626" stroke-width="2"/>')
    lx, ly = x1 - 130, y0 + 16
    for kind, colour in COLOURS.items():
        s.append(f'<circle cx="{lx}" cy="{ly}" r="5" fill="{colour}"/>'
                 f'<text x="{lx + 12}" y="{ly + 4}" font-size="11" fill="#111827">{kind}</text>')
        ly += 18
    s.append(f'<circle cx="{lx}" cy="{ly}" r="9" fill="none" stroke="#dc2626" stroke-width="2"/>'
             f'<text x="{lx + 12}" y="{ly + 4}" font-size="11" fill="#111827">chosen</text>')
    s.append("</svg>")
    return "\n".join(s) + "\n"
