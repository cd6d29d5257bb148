"""Markdown report of a run: accuracy table, per-layer profile and chosen bits, export check."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from .artifacts import atomic_write_text


def accuracy_table(rows: Sequence) -> list[str]:
    out = ["| method | budget | accuracy | weight MB | avg bits |", "|---|---|---|---|---|"]
    for r in rows:
        b = "–" if r.budget_bits is None else f"W{r.budget_bits:g} size"
        out.append(f"| {r.method} | {b} | {100 * r.accuracy:.2f}% | {r.weight_bytes / 1e6:.4f} | {r.avg_bits:.2f} |")
    return out


def layer_table(profile, plans: Mapping) -> list[str]:
    bits = sorted(profile.bits)
    names = list(plans)
    head = ["layer", "params", "trace", "95% CI", "probes"] + [f"Ω({b})" for b in bits] + names
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    choice = {n: p.assignment() for n, p in plans.items()}
    for l in profile.layers:
        lo, hi = l.ci95
        cells = [f"`{l.name}`", str(l.params), f"{l.trace:.4g}", f"[{lo:.3g}, {hi:.3g}]", str(l.probes)]
        cells += [f"{l.omega[b]:.3g}" for b in bits]
        cells += [str(choice[n][l.name][0]) for n in names]
        out.append("| " + " | ".join(cells) + " |")
    return out


def export_lines(report, plan_name: str) -> list[str]:
    out = [f"Exported plan `{plan_name}` to `{Path(report.path).name}` (opset {report.opset}): "
           f"{report.file_bytes} bytes on disk, {report.weight_bytes} bytes of quantized weights "
           f"(plan: {report.plan_weight_bytes:.0f} bytes; packed containers: {report.packed_weight_bytes:.0f})."]
    v = report.verification
    if v is not None:
        out.append("")
        out.append(f"ONNX Runtime against the PyTorch fake-quant model on {v.samples} calibration inputs: "
                   f"top-1 agreement {v.top1_agreement}, cosine {v.cosine:.6f}, max |diff| {v.max_abs_diff:.3g} "
                   f"({v.max_diff_steps:.2f} steps), {100 * v.frac_off_by_more_than_1_step:.3f}% of outputs off by more than one step.")
    return out


def write_report(path: str | Path, title: str, profile, plans: Mapping, rows: Sequence, export_report, export_name: str) -> Path:
    lines = [f"# hawq report: {title}", "", "## Accuracy at each budget", ""]
    lines += accuracy_table(rows)
    lines += ["", "## Per-layer profile and chosen weight bits", "",
              f"Hutchinson traces ({profile.settings.get('probes', '?')} probes, target relative standard error "
              f"{profile.settings.get('rel_tol')}); Ω(b) = Tr(H)/n · ‖Q_b(W) − W‖²."]
    if profile.unconverged:
        lines.append(f"Layers that did not reach the target: {', '.join(profile.unconverged)}.")
    lines.append("")
    lines += layer_table(profile, plans)
    lines += ["", "## Export", ""] + export_lines(export_report, export_name)
    return atomic_write_text(path, "\n".join(lines) + "\n")
