"""The run report as one self-contained HTML file (report.html): inline CSS, the Pareto plot as
inline SVG, no scripts, nothing fetched. The rows come from hawq.report, shared with report.md."""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Mapping, Sequence

from .artifacts import atomic_write_text
from .frontier_plot import frontier_svg
from .guard_plot import guard_svg
from .report import (ACCURACY_HEAD, CHANGE_HEAD, GUARD_HEAD, GUARD_NOTE, LayerRow, accuracy_cells, change_cells,
                     frontier_summary, guard_caption, guard_rows, guarded, layer_rows,
                     sensitivity_note)

CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f3f4f6; color: #111827; font: 14px/1.45 Helvetica, Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 24px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #d1d5db; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p { margin: 6px 0; max-width: 78em; }
code, .mono { font-family: Menlo, Consolas, monospace; font-size: 12.5px; }
.sub { color: #4b5563; margin: 0 0 16px; }
nav { margin: 0 0 18px; font-size: 13px; }
nav a { color: #1d4ed8; margin-right: 14px; text-decoration: none; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 10px; margin: 0; }
.card { background: #fff; border: 1px solid #e5e7eb; border-radius: 6px; padding: 8px 12px; }
.card dt { color: #6b7280; font-size: 12px; }
.card dd { margin: 2px 0 0; font-size: 16px; font-weight: bold; overflow-wrap: anywhere; }
.card dd small { font-weight: normal; color: #4b5563; font-size: 12px; }
.scroll { display: inline-block; max-width: 100%; box-sizing: border-box; overflow-x: auto; vertical-align: top;
          background: #fff; border: 1px solid #e5e7eb; border-radius: 6px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 4px 6px; border-bottom: 1px solid #eef0f3; text-align: left; white-space: nowrap; }
th { background: #f9fafb; font-weight: 600; color: #374151; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.wrap { white-space: normal; }
tr.hl td { background: #eff6ff; font-weight: bold; }
tr.differ td:first-child { box-shadow: inset 3px 0 0 #7c3aed; }
td.barcell { padding-left: 0; }
.bar { display: inline-block; width: 60px; height: 8px; background: #e5e7eb;
       border-radius: 2px; vertical-align: middle; overflow: hidden; }
.bar span { display: block; height: 100%; background: #2563eb; }
td.w { text-align: center; font-weight: 600; min-width: 2em; }
.w2 { background: #fecaca; } .w3 { background: #fed7aa; } .w4 { background: #fef08a; }
.w8 { background: #bbf7d0; } .wx { background: #e5e7eb; }
.legend { font-size: 12.5px; color: #374151; margin: 8px 0; }
.legend span.w { display: inline-block; padding: 0 7px; margin: 0 4px 0 8px; border-radius: 3px; font-weight: 600; }
.legend .mark { display: inline-block; width: 3px; height: 12px; background: #7c3aed; margin: 0 4px 0 8px;
                vertical-align: middle; }
figure { margin: 0; background: #fff; border: 1px solid #e5e7eb; border-radius: 6px; padding: 8px; }
figure svg { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: #4b5563; font-size: 13px; margin: 6px 4px 0; }
details { margin: 8px 0; }
pre { background: #fff; border: 1px solid #e5e7eb; border-radius: 6px; padding: 8px 12px; overflow-x: auto;
      font-size: 12px; }
table.kv { background: #fff; border: 1px solid #e5e7eb; }
table.kv th { position: static; background: #f9fafb; width: 16em; }
.ok { color: #15803d; } .none { color: #6b7280; font-style: italic; }
"""


def _e(value: object) -> str:
    """Text escaped for HTML content and attribute values."""
    return escape(str(value), quote=True)


def _tr(cells: Sequence[str], cls: str = "", num: Sequence[bool] = ()) -> str:
    """A table row of already-escaped HTML cells.

    cls: the row's class ("" for none); num: per cell, whether it is right-aligned as a number.
    """
    tds = "".join(f'<td class="num">{c}</td>' if i < len(num) and num[i] else f"<td>{c}</td>"
                  for i, c in enumerate(cells))
    return f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>"


def _table(head: Sequence[str], rows: Sequence[str], num: Sequence[bool] = ()) -> str:
    """A scrollable table: the (plain text) head and already-built <tr> rows."""
    ths = "".join(f'<th class="num">{_e(h)}</th>' if i < len(num) and num[i] else f"<th>{_e(h)}</th>"
                  for i, h in enumerate(head))
    return f'<div class="scroll"><table><thead><tr>{ths}</tr></thead><tbody>\n' + "\n".join(rows) + \
        "\n</tbody></table></div>"


def _kv(pairs: Sequence[tuple[str, str]]) -> str:
    """A two-column table of (label, value) text pairs."""
    return '<table class="kv"><tbody>' + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs) + \
        "</tbody></table>"


def _width_class(bits: int) -> str:
    return f"w{bits}" if bits in (2, 3, 4, 8) else "wx"


# ---------------------------------------------------------------------------------------------
# sections


def summary_cards(title: str, profile, plans: Mapping, rows: Sequence, export_report, export_name: str) -> str:
    """The run at a glance: layers, probes, plans, the exported plan's accuracy, the ONNX file."""
    fp32 = next((r for r in rows if r.method == "fp32"), None)
    exported = next((r for r in rows if r.label == export_name), None)
    v = export_report.verification
    probes = [l.probes for l in profile.layers]
    if profile.measured:
        how = ("sensitivity", "perturbed losses", f"{profile.effort}, no probes")
    else:
        how = ("Hessian probes", f"{min(probes)}" + (f"–{max(probes)}" if max(probes) > min(probes) else ""),
               f"target rel. std error {profile.settings.get('rel_tol', '?')}"
               + (f"; {len(profile.unconverged)} unconverged" if profile.unconverged else ""))
    cards = [
        ("recipe", title, ""),
        ("quantizable layers", f"{len(profile.layers)}", f"{sum(l.params for l in profile.layers):,} weights"),
        how,
        ("plans", f"{len(plans)}", ", ".join(plans)),
        ("fp32 accuracy", "–" if fp32 is None else f"{100 * fp32.accuracy:.2f}%",
         "" if fp32 is None else f"{fp32.weight_bytes / 1e6:.4f} MB"),
        (f"exported: {export_name}", "–" if exported is None else f"{100 * exported.accuracy:.2f}%",
         "" if exported is None else f"{exported.weight_bytes / 1e6:.4f} MB, {exported.avg_bits:.2f} avg bits"),
        ("ONNX file", f"{export_report.file_bytes:,} bytes", f"{export_report.target}, opset {export_report.opset}"),
    ]
    if v is not None:
        cards.append(("ONNX Runtime vs PyTorch", f"cosine {v.cosine:.6f}",
                      f"top-1 agreement {v.top1_agreement}, {v.samples} inputs"))
    items = "".join(f'<div class="card"><dt>{_e(k)}</dt><dd>{_e(val)}'
                    + (f"<br><small>{_e(small)}</small>" if small else "") + "</dd></div>"
                    for k, val, small in cards)
    return f'<dl class="cards">{items}</dl>'


def accuracy_section(rows: Sequence, export_name: str) -> str:
    """The accuracy table; the exported plan's row highlighted."""
    body = [_tr([_e(c) for c in accuracy_cells(r)], "hl" if r.label == export_name else "",
                (False, False, True, True, True)) for r in rows]
    return (_table(ACCURACY_HEAD, body, (False, False, True, True, True))
            + f'<p class="legend">Highlighted: the exported plan, <code>{_e(export_name)}</code>.</p>')


def _layer_tr(r: LayerRow, top: float) -> str:
    """One per-layer row: the trace with a bar relative to `top`, the interval, Ω, the plans' bits."""
    lo, hi = r.ci95
    pct = 100 * max(r.trace, 0.0) / top if top > 0 else 0.0
    bar = f'<span class="bar" title="{pct:.1f}% of the largest trace"><span style="width:{pct:.1f}%"></span></span>'
    cells = [f'<td><code>{_e(r.name)}</code></td>', f'<td class="num">{r.params:,}</td>',
             f'<td class="num">{_e(f"{r.trace:.4g}")}</td>', f'<td class="barcell">{bar}</td>',
             f'<td class="num" title="[{_e(f"{lo:.4g}")}, {_e(f"{hi:.4g}")}]">± {_e(f"{(hi - lo) / 2:.2g}")}</td>',
             f'<td class="num">{r.probes}</td>']
    cells += [f'<td class="num">{_e(f"{o:.3g}")}</td>' for o in r.omega]
    cells += [f'<td class="w {_width_class(b)}">{b}</td>' for b in r.bits]
    return ('<tr class="differ">' if r.plans_differ else "<tr>") + "".join(cells) + "</tr>"


def layer_section(profile, plans: Mapping) -> str:
    """Per layer: params, trace ± 95% interval with a bar, probes, Ω per bit width, each plan's bits."""
    rows = layer_rows(profile, plans)
    top = max((r.trace for r in rows), default=0.0)
    bits = sorted(profile.bits)
    head = ["layer", "params", "trace Tr(H)", "", "95% CI", "probes"] + [f"Ω({b})" for b in bits] + list(plans)
    num = [False, True, True, False] + [True] * (2 + len(bits))
    seen = sorted({b for r in rows for b in r.bits})
    legend = "".join(f'<span class="w {_width_class(b)}">{b}</span>' for b in seen)
    note = (f"<p>{_e(sensitivity_note(profile))} The bar is the trace relative to the largest; hover the interval "
            "for its bounds.</p>")
    if profile.unconverged:
        note += f"<p>Layers that did not reach the target: {_e(', '.join(profile.unconverged))}.</p>"
    legend = (f'<p class="legend">Weight bits:{legend} <span class="mark"></span>the plans give the layer '
              "different widths.</p>")
    return note + legend + _table(head, [_layer_tr(r, top) for r in rows], num)


def guard_section(plans: Mapping) -> str:
    """Per guarded plan: every candidate's predicted Ω against its measured loss, as a plot and a
    table; "" when none was guarded."""
    parts = []
    for name, g in guarded(plans):
        body = [_tr([_e(c) for c in cells], "hl" if chosen else "", (False, False, True, True, True, True))
                for chosen, cells in guard_rows(g)]
        parts.append(f"<h3><code>{_e(name)}</code>: chose {_e(g['chosen'])}</h3><p>{_e(guard_caption(g))}</p>"
                     + f"<figure>{guard_svg(g)}</figure>"
                     + _table(GUARD_HEAD, body, (False, False, True, True, True, True)))
    return f"<p>{_e(GUARD_NOTE)}</p>" + "".join(parts) if parts else ""


def frontier_section(frontier, title: str) -> str:
    """The Pareto plot (inline SVG, the chosen plan ringed) and its points as text."""
    return (f"<figure>{frontier_svg(frontier, title)}<figcaption>{len(frontier.points)} non-dominated plans "
            f"(frontier.json, frontier.csv); ringed: the chosen plan, <code>{_e(frontier.chosen)}</code>."
            "</figcaption></figure><details><summary>Frontier points and the budgets that pick them</summary>"
            f"<pre>{_e(chr(10).join(frontier_summary(frontier)))}</pre></details>")


def export_facts(report, plan_name: str) -> list[tuple[str, str]]:
    """(label, value) text pairs: the exported file and its weight bytes against the plan's."""
    ratio = f" ({report.weight_bytes / report.plan_weight_bytes:.3f}× the plan)" if report.plan_weight_bytes else ""
    return [("plan", plan_name), ("file", f"{Path(report.path).name}: target {report.target}, opset {report.opset}"),
            ("file size", f"{report.file_bytes:,} bytes"),
            ("quantized weights stored", f"{report.weight_bytes:,} bytes{ratio} + {report.scale_bytes:,} bytes "
                                         "of scales and zero points"),
            ("plan at its bit widths", f"{report.plan_weight_bytes:,.0f} bytes"),
            ("plan in packed containers", f"{report.plan_packed_weight_bytes:,} bytes"),
            ("exported in packed containers", f"{report.packed_weight_bytes:,} bytes")]


def verification_facts(v) -> list[tuple[str, str]]:
    """(label, value) text pairs: ONNX Runtime against the PyTorch fake-quant model."""
    out = [("ONNX Runtime", f"{v.onnxruntime or '?'} on {v.samples} calibration inputs"),
           ("top-1 agreement", f"{v.top1_agreement}"
            + ("" if v.top1_agreement_decisive is None else
               f" ({v.top1_agreement_decisive} on {v.decisive_samples} decisive samples)")),
           ("cosine", f"{v.cosine:.6f}"),
           ("max |diff|", f"{v.max_abs_diff:.3g} ({v.max_diff_steps:.2f} output steps of {v.step:.3g})"),
           ("outputs off by more than one step", f"{100 * v.frac_off_by_more_than_1_step:.3f}%")]
    if v.float32_frac_off_by_more_than_1_step is not None:
        out.append(("the same, float32 rounding alone", f"{100 * v.float32_frac_off_by_more_than_1_step:.3f}% "
                    "(PyTorch float32 against float64)"))
    if v.diff_vs_quant_error is not None:
        out.append(("mean diff / quantization error", f"{v.diff_vs_quant_error:.3g}"))
    if v.max_diff_input_steps is not None:
        out.append(("max diff in input steps", f"{v.max_diff_input_steps:.3g}"))
    if v.plan_cosine is not None:
        out.append(("legalised vs planned model", f"cosine {v.plan_cosine:.6f}, top-1 agreement {v.plan_top1_agreement}"))
    if v.disabled_optimizers:
        out.append(("disabled ONNX Runtime optimizers", ", ".join(v.disabled_optimizers)))
    return out


def export_section(report, plan_name: str) -> str:
    """The exported file, the verification metrics and the legaliser's changes."""
    out = _kv(export_facts(report, plan_name))
    if report.verification is not None:
        out += "<h3>Verification</h3>" + _kv(verification_facts(report.verification))
    out += f"<h3>The legaliser's changes for target {_e(report.target)}</h3>"
    if not report.changes:
        return out + '<p class="none">None: the plan is exported as planned.</p>'
    body = []
    for c in report.changes:
        layer, what, why = (_e(t) for t in change_cells(c))
        body.append(f'<tr><td>{layer if c.layer == "*" else f"<code>{layer}</code>"}</td><td>{what}</td>'
                    f'<td class="wrap">{why}</td></tr>')
    return out + _table(CHANGE_HEAD, body)


# ---------------------------------------------------------------------------------------------
# the page


def report_html(title: str, profile, plans: Mapping, rows: Sequence, export_report, export_name: str,
                frontier=None) -> str:
    """The whole page as a string; the arguments as in write_html_report."""
    sections = [("accuracy", "Accuracy at each budget", accuracy_section(rows, export_name)),
                ("layers", "Per-layer profile and chosen weight bits", layer_section(profile, plans)),
                ("guard", "Measured-loss guard", guard_section(plans)),
                ("frontier", "Pareto frontier", "" if frontier is None else frontier_section(frontier, title)),
                ("export", "Export", export_section(export_report, export_name))]
    sections = [s for s in sections if s[2]]
    nav = "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name, _ in sections)
    body = "\n".join(f'<section id="{sid}"><h2>{_e(name)}</h2>\n{html}\n</section>' for sid, name, html in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>hawq report: {_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"<h1>hawq report: {_e(title)}</h1>\n"
            f'<p class="sub">Hessian-aware mixed-precision quantization: profile, plans, frontier, export.</p>\n'
            f"<nav>{nav}</nav>\n{summary_cards(title, profile, plans, rows, export_report, export_name)}\n"
            f"{body}\n</main>\n</body>\n</html>\n")


def write_html_report(path: str | Path, title: str, profile, plans: Mapping, rows: Sequence, export_report,
                      export_name: str, frontier=None) -> Path:
    """Write report.html: the Markdown report's content as one self-contained page.

    path: the file.
    title: the recipe's name.
    profile, plans (name → Plan), rows (the pipeline's accuracy Rows): what was computed.
    export_report, export_name: the ExportReport and the name of the plan it exported.
    frontier: the Pareto Frontier, if one was swept (shown as inline SVG).
    """
    return atomic_write_text(path, report_html(title, profile, plans, rows, export_report, export_name, frontier))
