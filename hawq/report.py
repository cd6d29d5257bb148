"""The run report: the rows both writers show (this module), the Markdown report, the Pareto plot.

`layer_rows`, `accuracy_cells`, `guard_rows` and `change_cells` gather what a report shows, as
plain values and strings; `write_report` renders them as Markdown, hawq.report_html as HTML.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .artifacts import atomic_write_text

ACCURACY_HEAD = ("method", "budget", "accuracy", "weight MB", "avg bits")
GUARD_HEAD = ("candidate", "kind", "predicted Ω", "calibration loss", "held-back accuracy", "weight bytes")
CHANGE_HEAD = ("layer", "what changed", "why")
GUARD_NOTE = ("Each mixed plan is the candidate with the least cross-entropy on held-back calibration samples "
              "among the ILP optimum, next-best plans that change at least 10% of the weights' widths, and every "
              "uniform plan within the same budget.")


@dataclass(frozen=True)
class LayerRow:
    """One profiled layer as the reports show it.

    name: the layer's module name.
    params: weight parameter count.
    trace: Hutchinson estimate of Tr(H); ci95: its 95% interval; probes: probes it took.
    omega: Ω at each of the profile's bit widths, ascending.
    bits: the weight bits each plan chose for it, in the plans' order.
    """

    name: str
    params: int
    trace: float
    ci95: tuple[float, float]
    probes: int
    omega: tuple[float, ...]
    bits: tuple[int, ...]

    @property
    def plans_differ(self) -> bool:
        """Whether the plans give this layer different weight widths."""
        return len(set(self.bits)) > 1


def layer_rows(profile, plans: Mapping) -> list[LayerRow]:
    """One LayerRow per profiled layer, in execution order.

    profile: a hawq Profile.
    plans: plan name → Plan for that profile.
    """
    bits = sorted(profile.bits)
    choice = [p.assignment() for p in plans.values()]
    return [LayerRow(l.name, l.params, l.trace, l.ci95, l.probes, tuple(l.omega[b] for b in bits),
                     tuple(c[l.name][0] for c in choice)) for l in profile.layers]


def sensitivity_note(profile) -> str:
    """One sentence on how the profile's Ω was made, for both reports.

    profile: a hawq Profile.
    """
    if profile.measured:
        return ("Ω(b): the calibration-loss change of rounding that layer's weights alone to b bits, measured (one "
                "forward pass over the calibration data per layer and width, activations in float; no probes, no "
                "noise); the trace column is the trace an isotropic model Tr(H)/n · ‖Q_b(W) − W‖² would need for the "
                "same Ω at the narrowest width." + (
                    f" Plus {len(profile.interactions)} cross-layer terms Δ_aᵀ G Δ_b (Gauss-Newton), which the "
                    "solver optimises with Ω." if profile.interactions else ""))
    return (f"Hutchinson traces ({profile.settings.get('probes', '?')} probes, target relative standard error "
            f"{profile.settings.get('rel_tol', '?')}); Ω(b) = Tr(H)/n · ‖Q_b(W) − W‖².")


def accuracy_cells(row) -> tuple[str, ...]:
    """The ACCURACY_HEAD cells of one pipeline Row."""
    b = "–" if row.budget_bits is None else f"W{row.budget_bits:g} size"
    return (row.method, b, f"{100 * row.accuracy:.2f}%", f"{row.weight_bytes / 1e6:.4f}", f"{row.avg_bits:.2f}")


def guard_caption(g: Mapping[str, Any]) -> str:
    """What a guard record chose among, as a sentence after "chose X".

    g: a Plan's guard record.
    """
    return (f"among {len(g['candidates'])} candidates (quantizers calibrated on {g.get('calibration_samples', '?')} "
            f"samples, loss measured on {g.get('held_out_samples', '?')} held-back samples).")


def guard_rows(g: Mapping[str, Any]) -> list[tuple[bool, tuple[str, ...]]]:
    """Per candidate of a guard record: (whether it was chosen, its GUARD_HEAD cells).

    g: a Plan's guard record.
    """
    out = []
    for c in g["candidates"]:
        acc = c.get("calibration_accuracy")
        out.append((c["label"] == g["chosen"], (
            str(c["label"]), str(c.get("kind", "")), f"{c['predicted_omega']:.4g}", f"{c['calibration_loss']:.4f}",
            "" if acc is None else f"{100 * acc:.1f}%", str(c.get("weight_bytes", "")))))
    return out


def guarded(plans: Mapping) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, guard record) of the plans that have one.

    plans: plan name → Plan.
    """
    return [(n, p.guard) for n, p in plans.items() if getattr(p, "guard", None)]


def change_cells(change) -> tuple[str, str, str]:
    """The CHANGE_HEAD cells of one legaliser Change: layer ("whole model" for "*"), what, why."""
    layer = "whole model" if change.layer == "*" else change.layer
    return layer, f"{change.what}: {change.before} → {change.after}", change.reason


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def accuracy_table(rows: Sequence) -> list[str]:
    """Markdown lines: the accuracy table of the pipeline's Rows."""
    return [_md_row(ACCURACY_HEAD), "|" + "---|" * len(ACCURACY_HEAD)] + [_md_row(accuracy_cells(r)) for r in rows]


def layer_table(profile, plans: Mapping) -> list[str]:
    """Markdown lines: per layer, its profile and the weight bits each plan chose."""
    head = ["layer", "params", "trace", "95% CI", "probes"] + [f"Ω({b})" for b in sorted(profile.bits)] + list(plans)
    out = [_md_row(head), "|" + "---|" * len(head)]
    for r in layer_rows(profile, plans):
        lo, hi = r.ci95
        out.append(_md_row([f"`{r.name}`", str(r.params), f"{r.trace:.4g}", f"[{lo:.3g}, {hi:.3g}]", str(r.probes)]
                           + [f"{o:.3g}" for o in r.omega] + [str(b) for b in r.bits]))
    return out


def export_lines(report, plan_name: str) -> list[str]:
    """Markdown lines: the exported file, its verification and the legaliser's changes."""
    out = [f"Exported plan `{plan_name}` to `{Path(report.path).name}` (opset {report.opset}): "
           f"{report.file_bytes} bytes on disk, {report.weight_bytes} bytes of quantized weights "
           f"(plan: {report.plan_weight_bytes:.0f} bytes; packed containers: {report.packed_weight_bytes:.0f})."]
    v = report.verification
    if v is not None:
        out.append("")
        out.append(f"ONNX Runtime against the PyTorch fake-quant model on {v.samples} calibration inputs: "
                   f"top-1 agreement {v.top1_agreement}, cosine {v.cosine:.6f}, max |diff| {v.max_abs_diff:.3g} "
                   f"({v.max_diff_steps:.2f} steps), {100 * v.frac_off_by_more_than_1_step:.3f}% of outputs off by more than one step"
                   + ("." if v.float32_frac_off_by_more_than_1_step is None else
                      f" (float32 rounding alone, PyTorch float32 against float64: "
                      f"{100 * v.float32_frac_off_by_more_than_1_step:.3f}%)."))
    out.append("")
    if not report.changes:
        out.append(f"The legaliser for target `{report.target}` changed nothing: the plan is exported as planned.")
        return out
    out += [f"The legaliser's changes for target `{report.target}` ({len(report.changes)}):", ""]
    for c in report.changes:
        layer, what, why = change_cells(c)
        out.append(f"- {layer if c.layer == '*' else f'`{layer}`'}: {what} — {why}")
    return out


def write_report(path: str | Path, title: str, profile, plans: Mapping, rows: Sequence, export_report, export_name: str,
                 frontier=None) -> Path:
    """Write the Markdown report (report.md) of a run; hawq.report_html writes the same as HTML.

    path: the file.
    title: the recipe's name.
    profile, plans (name → Plan), rows (the pipeline's accuracy Rows): what was computed.
    export_report, export_name: the ExportReport and the name of the plan it exported.
    frontier: the Pareto Frontier, if one was swept.
    """
    lines = [f"# hawq report: {title}", "", "## Accuracy at each budget", ""]
    lines += accuracy_table(rows)
    lines += ["", "## Per-layer profile and chosen weight bits", "", sensitivity_note(profile)]
    if profile.unconverged:
        lines.append(f"Layers that did not reach the target: {', '.join(profile.unconverged)}.")
    lines.append("")
    lines += layer_table(profile, plans)
    guard = guard_table(plans)
    if guard:
        lines += ["", "## Measured-loss guard", "", GUARD_NOTE] + guard
    if frontier is not None:
        lines += ["", "## Pareto frontier", "", "![Pareto frontier](frontier.svg)", "",
                  f"{len(frontier.points)} non-dominated plans (`frontier.json`, `frontier.csv`); highlighted: "
                  f"`{frontier.chosen}`.", "", "```"] + frontier_summary(frontier) + ["```"]
    lines += ["", "## Export", ""] + export_lines(export_report, export_name)
    return atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# guard and Pareto frontier


def guard_table(plans: Mapping) -> list[str]:
    """Markdown lines: per guarded plan, every candidate's predicted Ω and measured loss.

    plans: name → Plan; plans without a guard record are skipped.
    """
    out = []
    for name, g in guarded(plans):
        out += ["", f"`{name}`: chose **{g['chosen']}** {guard_caption(g)}", "",
                _md_row(GUARD_HEAD), "|" + "---|" * len(GUARD_HEAD)]
        for chosen, cells in guard_rows(g):
            b = "**" if chosen else ""
            out.append(_md_row([f"{b}{cells[0]}{b}", *cells[1:]]))
    return out


def frontier_summary(frontier) -> list[str]:
    """Text lines: each frontier point, its size and Ω, and the budgets that pick it; then the
    uniform plans and the frontier point at their size.

    frontier: a hawq.frontier.Frontier.
    """
    unit = "MB" if frontier.axis == "weight" else "GBOPs"
    lines = [f"{'point':<11} {unit:>9} {'avg bits':>9} {'GBOPs':>8} {'total Ω':>10}  picked by budgets ({unit})"]
    xs = [frontier.x(p) for p in frontier.points]
    for i, p in enumerate(frontier.points):
        upto = f"[{xs[i]:.5g}, {xs[i + 1]:.5g})" if i + 1 < len(xs) else f"≥ {xs[i]:.5g}"
        mark = "  ← chosen" if p.label == frontier.chosen else ""
        lines.append(f"{p.label:<11} {xs[i]:>9.5g} {p.avg_bits:>9.3f} {p.gbops:>8.4g} {p.omega:>10.4g}  {upto}{mark}")
    for p in list(frontier.uniform) + list(frontier.extra):
        front = frontier.pick(frontier.x(p))
        note = f"frontier there: {front.label}, Ω {front.omega:.4g}" if front else "left of the frontier"
        mark = "  ← chosen" if p.label == frontier.chosen else ""
        lines.append(f"{p.label:<11} {frontier.x(p):>9.5g} {p.avg_bits:>9.3f} {p.gbops:>8.4g} {p.omega:>10.4g}  "
                     f"({note}){mark}")
    return lines
