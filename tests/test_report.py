"""report.md and report.html from small synthetic runs: well-formed, self-contained, complete, escaped;
and, where a Chromium is installed, rendered headless to a non-trivial screenshot."""
from __future__ import annotations

import dataclasses
import random
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from hawq.frontier import pareto
from hawq.guard_plot import guard_svg
from hawq.legalize import Change
from hawq.onnx_export import ExportReport
from hawq.onnx_verify import Verification
from hawq.pipeline import Row
from hawq.report import accuracy_cells, layer_rows, write_report
from hawq.report_html import report_html, write_html_report
from hawq.sensitivity import LayerProfile, Profile
from hawq.solver import Budget, SolveSpec, solve, uniform_plan

BITS = (2, 4, 8)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
CHANGES = [Change("*", "opset", "21", "25", "INT2 weights (first: stage1.conv)"),
           Change("stage2.conv", "weight_bits", "W2", "W8", "TensorRT has no <INT2> weights")]


def make_profile(n: int = 7, seed: int = 0) -> Profile:
    rng = random.Random(seed)
    layers = []
    for i in range(n):
        p = rng.choice([rng.randint(50, 300), rng.randint(1000, 6000)])
        v, om = 10 ** rng.uniform(-4, 0), {}
        for b in BITS:
            om[b] = v
            v *= rng.uniform(0.05, 0.5)
        trace = -0.5 if i == 3 else 10 ** rng.uniform(-1, 3)  # a negative trace must render too
        layers.append(LayerProfile(f"stage{i}.conv", "Conv2d", (p,), p, p * 40, trace, abs(trace) * 0.03, 8 + i,
                                   dict(om), om))
    return Profile(layers=tuple(layers), bits=BITS, settings={"probes": 16, "rel_tol": 0.05},
                   fingerprints={"weights": f"w{seed}"})


def make_run() -> tuple:
    """(title, profile, plans, rows, export report, export name, frontier) like the pipeline's."""
    prof = make_profile()
    uni = uniform_plan(prof, 4)
    mixed = solve(prof, Budget(megabytes=uni.weight_bytes / 1e6), spec=SolveSpec(bits=BITS))
    guard = {"chosen": mixed.label, "calibration_samples": 100, "held_out_samples": 100, "candidates": [
        {"label": mixed.label, "kind": "optimum", "predicted_omega": mixed.omega, "calibration_loss": 0.41,
         "calibration_accuracy": 0.9, "weight_bytes": mixed.weight_bytes},
        {"label": "uniform-w4", "kind": "uniform", "predicted_omega": uni.omega, "calibration_loss": 0.47,
         "calibration_accuracy": 0.88, "weight_bytes": uni.weight_bytes}]}
    mixed = dataclasses.replace(mixed, guard=guard)
    plans = {"uniform_4": uni, "mixed_4": mixed}
    n = sum(l.params for l in prof.layers)
    rows = [Row("fp32", None, 0.9312, 0.2, 4 * n, 32.0, "fp32"),
            Row("uniform", 4.0, 0.8871, 0.4, uni.weight_bytes, uni.avg_bits, "uniform_4"),
            Row("mixed", 4.0, 0.9104, 0.3, mixed.weight_bytes, mixed.avg_bits, "mixed_4")]
    v = Verification(samples=64, max_abs_diff=0.0123, max_diff_steps=0.61, frac_off_by_more_than_1_step=0.0,
                     cosine=0.999987, top1_agreement=1.0, step=0.02, diff_vs_quant_error=0.05,
                     onnxruntime="1.32.0", plan_cosine=0.9991, plan_top1_agreement=0.98)
    export = ExportReport(path="run/model.onnx", target="ort", opset=25, file_bytes=54321, weight_bytes=4100,
                          scale_bytes=900, packed_weight_bytes=4100, plan_packed_weight_bytes=4000,
                          plan_weight_bytes=3987.5, changes=list(CHANGES), verification=v)
    frontier = pareto(prof, spec=SolveSpec(bits=BITS), points=6, chosen=mixed)
    return "tiny <net> & co", prof, plans, rows, export, "mixed_4", frontier


@pytest.fixture(scope="module")
def run() -> tuple:
    return make_run()


@pytest.fixture(scope="module")
def page(run) -> str:
    return report_html(*run[:6], frontier=run[6])


class StrictParser(HTMLParser):
    """Records tags, attributes and every nesting error (html.parser itself never raises)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'} at {self.getpos()}")
        else:
            self.stack.pop()

    def close(self):
        super().close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")


def parse(text: str) -> StrictParser:
    p = StrictParser()
    p.feed(text)
    p.close()
    return p


def test_html_is_well_formed(page):
    p = parse(page)
    assert p.errors == []
    assert page.startswith("<!DOCTYPE html>")
    assert [t for t, _ in p.tags][:2] == ["html", "head"]
    assert parse("<div><span></div>").errors  # the checker itself catches bad nesting
    svg = page[page.index("<svg"): page.index("</svg>") + 6]
    ET.fromstring(svg)  # the inline plot is well-formed XML too


def test_html_is_self_contained(page):
    p = parse(page)
    tags = {t for t, _ in p.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "base"}
    for tag, attrs in p.tags:
        for name in ("src", "href", "xlink:href", "srcset", "action", "data"):
            assert attrs.get(name) is None or attrs[name].startswith("#"), (tag, name, attrs[name])
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)  # no event handlers either
    assert "url(" not in page and "@import" not in page and "<script" not in page.lower()


def test_html_has_every_section(run, page):
    title, prof, plans, rows, export, name, frontier = run
    for l in prof.layers:
        assert f"<code>{l.name}</code>" in page
    for r in rows:
        assert all(c in page for c in accuracy_cells(r)), r
    assert page.count("<svg") == 2 and "</svg>" in page  # the Pareto plot and the guard's candidates
    assert f"chosen: {frontier.chosen}" in page  # the chosen plan is marked in the plot
    assert '<tr><td>whole model</td><td>opset: 21 → 25</td><td class="wrap">INT2 weights (first: stage1.conv)' in page
    assert "<code>stage2.conv</code></td><td>weight_bits: W2 → W8</td>" in page
    assert "TensorRT has no &lt;INT2&gt; weights" in page
    assert "0.999987" in page and "54,321 bytes" in page and "4,100 bytes (1.028× the plan)" in page
    assert "Measured-loss guard" in page and "0.4100" in page and "0.4700" in page
    for plan in plans:
        assert f"<th>{plan}</th>" in page


def test_guard_plot_places_each_candidate_by_its_predicted_and_measured_loss():
    g = {"chosen": "b", "candidates": [
        {"label": "a", "kind": "optimum", "predicted_omega": 0.1, "calibration_loss": 0.50},
        {"label": "b", "kind": "alternative", "predicted_omega": 0.2, "calibration_loss": 0.40},
        {"label": "uniform-w4", "kind": "uniform", "predicted_omega": 0.4, "calibration_loss": 0.60},
        {"label": "broken", "kind": "uniform", "predicted_omega": 0.3, "calibration_loss": float("inf")}]}
    svg = guard_svg(g)
    dots = {m[3]: (float(m[0]), float(m[1]), m[2]) for m in re.findall(
        r'<circle cx="([\d.]+)" cy="([\d.]+)" r="5" fill="(#\w+)"><title>(\S+) ', svg)}
    assert set(dots) == {"a", "b", "uniform-w4"}  # an infinite loss is left off, not drawn at the edge
    assert dots["a"][0] < dots["b"][0] < dots["uniform-w4"][0]  # x grows with predicted Ω
    assert dots["uniform-w4"][1] < dots["a"][1] < dots["b"][1]  # y grows upwards with measured loss
    assert dots["a"][2] != dots["b"][2] != dots["uniform-w4"][2]
    ring = re.search(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="10"', svg)
    assert (float(ring[1]), float(ring[2])) == dots["b"][:2]  # the chosen one is ringed


def test_html_escapes_text(page):
    assert "tiny &lt;net&gt; &amp; co" in page
    assert "<net>" not in page and "& co" not in page


def test_html_marks_where_plans_differ(run, page):
    _, prof, plans, *_ = run
    rows = layer_rows(prof, plans)
    differ = [r for r in rows if r.plans_differ]
    assert differ and len(differ) < len(rows)  # the pinned first and last layers agree
    for r in rows:
        tr = page[page.index(f"<code>{r.name}</code>") - 40: page.index(f"<code>{r.name}</code>")]
        assert ('<tr class="differ">' in tr) == r.plans_differ, r.name
        for b in r.bits:
            assert f'<td class="w w{b}">{b}</td>' in page


def test_html_without_frontier_guard_or_changes(run):
    title, prof, plans, rows, export, name, _ = run
    plain = {k: dataclasses.replace(p, guard=None) for k, p in plans.items()}
    bare = dataclasses.replace(export, changes=[], verification=None)
    page = report_html(title, prof, plain, rows, bare, name)
    assert parse(page).errors == []
    assert "<svg" not in page and "Measured-loss guard" not in page and "Verification" not in page
    assert "exported as planned" in page


def test_markdown_lists_the_changes(run, tmp_path):
    title, prof, plans, rows, export, name, frontier = run
    md = write_report(tmp_path / "report.md", title, prof, plans, rows, export, name, frontier=frontier).read_text()
    export_part = md[md.index("## Export"):]
    assert "- whole model: opset: 21 → 25 — INT2 weights (first: stage1.conv)" in export_part
    assert "- `stage2.conv`: weight_bits: W2 → W8 — TensorRT has no <INT2> weights" in export_part
    assert "changes for target `ort` (2)" in export_part
    for l in prof.layers:
        assert f"| `{l.name}` |" in md
    bare = dataclasses.replace(export, changes=[])
    md = write_report(tmp_path / "bare.md", title, prof, plans, rows, bare, name).read_text()
    assert "changed nothing" in md and "→" not in md[md.index("## Export"):]


def test_write_html_report_writes_the_page(run, page, tmp_path):
    path = write_html_report(tmp_path / "out" / "report.html", *run[:6], frontier=run[6])
    assert path.read_text() == page
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH")
def test_report_renders_in_headless_chromium(run, tmp_path):
    html = write_html_report(tmp_path / "report.html", *run[:6], frontier=run[6])
    png = tmp_path / "report.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1280,2000",
                    html.as_uri()], check=True, capture_output=True, timeout=120)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 100_000  # a blank page is a few KB, Chromium's "file not found" page about 25 KB
