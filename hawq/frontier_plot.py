"""The Pareto frontier's files: frontier.json (the artifact), frontier.csv and frontier.svg, a
hand-written plot of total Ω against size with the uniform plans and the chosen plan marked."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from .artifacts import atomic_write_text
from .frontier import Frontier


def write_frontier(frontier: Frontier, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """Write frontier.json, frontier.csv and frontier.svg into `out_dir`, each atomically.

    frontier: the frontier.
    out_dir: the folder (created if missing).
    title: a name for the plot's heading (e.g. the recipe name).
    """
    out = Path(out_dir)
    return {"json": frontier.save(out / "frontier.json"),
            "csv": atomic_write_text(out / "frontier.csv", frontier.csv_text()),
            "svg": atomic_write_text(out / "frontier.svg", frontier_svg(frontier, title))}


def _nice_step(span: float, n: int) -> float:
    """A 1-2-5 step giving about `n` intervals over `span`.

    span: the range (> 0).
    n: intervals wanted.
    """
    raw = span / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values within [lo, hi].

    lo, hi: the axis range.
    n: about how many intervals.
    """
    if hi <= lo:
        return [lo]
    step = _nice_step(hi - lo, n)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label_spot(x: float, y: float, width: float, height: float, marks: Sequence[tuple[float, float]],
                box: tuple[float, float, float, float]) -> tuple[str, float, float]:
    """Where a text block goes beside the marker at (x, y): (text-anchor, x, first baseline's y).

    Tries below-left (empty beside a frontier point: nothing dominates it), above-right (clear of
    the staircase), above-left, below-right; takes the first inside `box` with no marker under it.
    width, height: the block's size; marks: other markers' centres; box: the plot's (x0, y0, x1, y1).
    """
    x0, y0, x1, y1 = box
    spots = [("end", x - 14, y + 24), ("start", x + 14, y - 12 - height), ("end", x - 14, y - 12 - height),
             ("start", x + 14, y + 24)]

    def free(anchor: str, tx: float, ty: float) -> bool:
        left = tx - width if anchor == "end" else tx
        top, bottom = ty - 12, ty - 12 + height
        inside = left >= x0 + 4 and left + width <= x1 - 4 and top >= y0 + 2 and bottom <= y1 - 2
        return inside and not any(left - 8 <= mx <= left + width + 8 and top - 8 <= my <= bottom + 8
                                  for mx, my in marks)

    return next((s for s in spots if free(*s)), spots[1])


def _num(v: float) -> str:
    """A tick label: up to 4 significant digits, no trailing zeros.

    v: the value.
    """
    return f"{v:.4g}"


_SUP = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def frontier_svg(frontier, title: str = "") -> str:
    """A hand-written SVG of a Frontier: total Ω (log scale when it spans decades) against weight
    MB or GBOPs; the frontier as the staircase of the best Ω each budget buys, its points, the
    uniform plans as labelled diamonds, the chosen plan ringed; average bits on the top axis.

    frontier: a hawq.frontier.Frontier.
    title: a heading (e.g. the recipe name).
    """
    from xml.sax.saxutils import escape

    W, H = 860, 540
    x0, x1, y0, y1 = 92, W - 36, 96, H - 74
    pts, uni, extra = list(frontier.points), list(frontier.uniform), list(frontier.extra)
    every = pts + uni + extra
    xs = [frontier.x(p) for p in every]
    om = [p.omega for p in every]
    xlo, xhi = min(xs), max(xs)
    pad = (xhi - xlo) * 0.04 or abs(xhi) * 0.1 or 1.0
    xlo, xhi = xlo - pad, xhi + pad
    logy = min(om) > 0 and max(om) / min(om) > 30
    if logy:
        ylo, yhi = math.log10(min(om)), math.log10(max(om))
        ypad = (yhi - ylo) * 0.06
        ylo, yhi = ylo - ypad, yhi + ypad
    else:
        ylo, yhi = min(om), max(om)
        ypad = (yhi - ylo) * 0.06 or abs(yhi) * 0.1 or 1.0
        ylo, yhi = ylo - ypad, yhi + ypad

    def X(v: float) -> float:
        return x0 + (v - xlo) / (xhi - xlo) * (x1 - x0)

    def Y(v: float) -> float:
        t = math.log10(v) if logy else v
        return y1 - (t - ylo) / (yhi - ylo) * (y1 - y0)

    font = 'font-family="Helvetica, Arial, sans-serif"'
    halo = 'stroke="#ffffff" stroke-width="3.5" stroke-linejoin="round" paint-order="stroke"'
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" {font}>',
         f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
         f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="#fafafa" stroke="#d1d5db"/>']
    head = "Pareto frontier" + (f" — {escape(title)}" if title else "")
    unit = "weight size (MB, 10⁶ bytes)" if frontier.axis == "weight" else "bit operations per sample (GBOPs)"
    st = frontier.settings
    cand = "/".join(f"W{b}" for b in st.get("bits", [])) + " × " + "/".join(f"A{a}" for a in st.get("a_bits", []))
    pins = ", ".join(st.get("pins", {})) or "none"
    sub = (f"{len(pts)} non-dominated plans from a {st.get('points', '?')}-point ε-constraint sweep · candidates "
           f"{cand} · pinned: {pins}")
    s.append(f'<text x="{x0}" y="30" font-size="19" font-weight="bold" fill="#111827">{head}</text>')
    s.append(f'<text x="{x0}" y="50" font-size="12" fill="#4b5563">{escape(sub)}</text>')
    # y grid and labels
    if logy:
        yt = [10.0 ** k for k in range(math.ceil(ylo), math.floor(yhi) + 1)]
        minor = [m * 10.0 ** k for k in range(math.floor(ylo), math.ceil(yhi) + 1) for m in range(2, 10)
                 if ylo <= math.log10(m * 10.0 ** k) <= yhi]
        for v in minor:
            s.append(f'<line x1="{x0}" x2="{x1}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#f0f1f3"/>')
    else:
        yt = _ticks(ylo, yhi)
    for v in yt:
        y = Y(v)
        lab = (f"10{str(round(math.log10(v))).translate(_SUP)}" if logy else _num(v))
        s.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        s.append(f'<line x1="{x0 - 5}" x2="{x0}" y1="{y:.1f}" y2="{y:.1f}" stroke="#6b7280"/>')
        s.append(f'<text x="{x0 - 9}" y="{y + 4:.1f}" font-size="12" text-anchor="end" fill="#374151">{lab}</text>')
    for v in _ticks(xlo, xhi, 7):
        x = X(v)
        s.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y1}" stroke="#e5e7eb"/>')
        s.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y1}" y2="{y1 + 5}" stroke="#6b7280"/>')
        s.append(f'<text x="{x:.1f}" y="{y1 + 20}" font-size="12" text-anchor="middle" fill="#374151">{_num(v)}</text>')
    if frontier.axis == "weight" and pts and pts[0].avg_bits > 0:  # top axis: average weight bits
        per_bit = pts[0].megabytes / pts[0].avg_bits  # MB per average bit
        for b in _ticks(xlo / per_bit, xhi / per_bit, 7):
            x = X(b * per_bit)
            s.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0 - 5}" y2="{y0}" stroke="#6b7280"/>')
            s.append(f'<text x="{x:.1f}" y="{y0 - 9}" font-size="11" text-anchor="middle" fill="#6b7280">'
                     f'{_num(b)}</text>')
        s.append(f'<text x="{x1}" y="{y0 - 24}" font-size="11" text-anchor="end" fill="#6b7280">'
                 'average weight bits</text>')
    s.append(f'<text x="{(x0 + x1) / 2}" y="{H - 30}" font-size="13" text-anchor="middle" fill="#111827">{unit}</text>')
    ylab = "total Ω, predicted loss increase" + (" (log scale)" if logy else "")
    s.append(f'<text transform="translate(24 {(y0 + y1) / 2}) rotate(-90)" font-size="13" text-anchor="middle" '
             f'fill="#111827">{ylab}</text>')
    # the staircase: the least Ω a budget of x buys
    if pts:
        d = f"M{X(frontier.x(pts[0])):.1f},{Y(pts[0].omega):.1f}"
        for a, b in zip(pts, pts[1:]):
            d += f" H{X(frontier.x(b)):.1f} V{Y(b.omega):.1f}"
        d += f" H{x1}"
        s.append(f'<path d="{d}" fill="none" stroke="#93c5fd" stroke-width="2"/>')
        s.append('<polyline fill="none" stroke="#2563eb" stroke-width="1.2" stroke-dasharray="3 3" points="'
                 + " ".join(f"{X(frontier.x(p)):.1f},{Y(p.omega):.1f}" for p in pts) + '"/>')
    for p in pts:
        tip = f"{p.label}: {frontier.x(p):.5g}, {p.avg_bits:.3f} avg bits, Ω {p.omega:.4g}"
        s.append(f'<circle cx="{X(frontier.x(p)):.1f}" cy="{Y(p.omega):.1f}" r="3.6" fill="#2563eb">'
                 f'<title>{escape(tip)}</title></circle>')
    for p in uni:
        x, y = X(frontier.x(p)), Y(p.omega)
        s.append(f'<path d="M{x:.1f},{y - 7:.1f} L{x + 7:.1f},{y:.1f} L{x:.1f},{y + 7:.1f} L{x - 7:.1f},{y:.1f} Z" '
                 f'fill="#f97316" stroke="#9a3412" stroke-width="1"><title>{escape(p.label)}: Ω {p.omega:.4g}'
                 f'</title></path>')
        name = p.label.replace("uniform-w", "W").replace("a", "A") if p.label.startswith("uniform-w") else p.label
        anchor, tx = ("end", x - 10) if x > x1 - 110 else ("start", x + 10)
        s.append(f'<text x="{tx:.1f}" y="{y - 8:.1f}" font-size="12" font-weight="bold" text-anchor="{anchor}" '
                 f'fill="#9a3412" {halo}>uniform {escape(name)}</text>')
    for p in extra:
        x, y = X(frontier.x(p)), Y(p.omega)
        s.append(f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="#10b981" stroke="#065f46">'
                 f'<title>{escape(p.label)}</title></rect>')
    chosen = next((p for p in every if p.label == frontier.chosen), None)
    if chosen is not None:
        x, y = X(frontier.x(chosen)), Y(chosen.omega)
        s.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="11" fill="none" stroke="#dc2626" stroke-width="2.5"/>')
        txt = [f"chosen: {chosen.label}", f"{chosen.avg_bits:.2f} avg bits · Ω {chosen.omega:.3g}"]
        marks = [(X(frontier.x(p)), Y(p.omega)) for p in every if p is not chosen]
        anchor, tx, ty = _label_spot(x, y, 7.2 * max(map(len, txt)), 15 * len(txt), marks, (x0, y0, x1, y1))
        for i, t in enumerate(txt):
            s.append(f'<text x="{tx:.1f}" y="{ty + 15 * i:.1f}" font-size="12.5" font-weight="bold" '
                     f'text-anchor="{anchor}" fill="#b91c1c" {halo}>{escape(t)}</text>')
    # legend
    lx, ly = x1 - 226, y0 + 14
    s.append(f'<rect x="{lx - 12}" y="{ly - 12}" width="230" height="{84 if chosen is not None else 62}" rx="4" '
             'fill="#ffffff" fill-opacity="0.92" stroke="#d1d5db"/>')
    s.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{ly}" y2="{ly}" stroke="#93c5fd" stroke-width="2"/>'
             f'<circle cx="{lx + 11}" cy="{ly}" r="3.6" fill="#2563eb"/>'
             f'<text x="{lx + 32}" y="{ly + 4}" font-size="12" fill="#111827">frontier (best Ω per budget)</text>')
    ly += 22
    s.append(f'<path d="M{lx + 11},{ly - 7} L{lx + 18},{ly} L{lx + 11},{ly + 7} L{lx + 4},{ly} Z" fill="#f97316" '
             f'stroke="#9a3412"/><text x="{lx + 32}" y="{ly + 4}" font-size="12" fill="#111827">'
             'uniform plan (same pins)</text>')
    if chosen is not None:
        ly += 22
        s.append(f'<circle cx="{lx + 11}" cy="{ly}" r="8" fill="none" stroke="#dc2626" stroke-width="2.5"/>'
                 f'<text x="{lx + 32}" y="{ly + 4}" font-size="12" fill="#111827">chosen plan</text>')
    s.append("</svg>")
    return "\n".join(s) + "\n"
