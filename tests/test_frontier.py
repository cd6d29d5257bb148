"""The Pareto frontier: monotone, non-dominated, exact at its points; its files and the CLI."""
from __future__ import annotations

import csv
import io
import itertools
import math
import random
import xml.etree.ElementTree as ET

import pytest

from hawq import cli
from hawq.errors import ArtifactError, ConfigError
from hawq.frontier import Frontier, Point, non_dominated, pareto
from hawq.frontier_plot import write_frontier
from hawq.sensitivity import LayerProfile, Profile
from hawq.solver import Budget, SolveSpec, solve

BITS = (2, 3, 4, 8)


def profile(n: int = 6, seed: int = 0) -> Profile:
    rng = random.Random(seed)
    layers = []
    for i in range(n):
        p = rng.choice([rng.randint(20, 200), rng.randint(500, 4000)])
        v, om = 10 ** rng.uniform(-5, 0), {}
        for b in BITS:
            om[b] = v
            v *= rng.uniform(0.05, 0.8)
        layers.append(LayerProfile(f"block{i}.conv", "Conv2d", (p,), p, p * rng.randint(10, 100), 1.0, 0.0, 1,
                                   dict(om), om))
    return Profile(layers=tuple(layers), bits=BITS, groups=(("block1.conv", "block2.conv"),),
                   fingerprints={"weights": f"w{seed}"})


def all_plans(prof: Profile, cand=(2, 4, 8), pins=None):
    """(weight bits, Ω) of every assignment with the first and last layer at 8 bits."""
    names = [l.name for l in prof.layers]
    pins = {names[0]: 8, names[-1]: 8} if pins is None else pins
    for combo in itertools.product(*([[pins[n]] if n in pins else cand for n in names])):
        w = dict(zip(names, combo))
        yield sum(l.params * w[l.name] for l in prof.layers), math.fsum(l.omega[w[l.name]] for l in prof.layers)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frontier_is_monotone_non_dominated_and_exact(seed):
    prof = profile(seed=seed)
    f = pareto(prof, spec=SolveSpec(bits=(2, 4, 8)), points=25)
    xs, om = [p.megabytes for p in f.points], [p.omega for p in f.points]
    assert len(f.points) >= 3
    assert all(a < b for a, b in zip(xs, xs[1:])) and all(a > b for a, b in zip(om, om[1:]))
    everything = list(all_plans(prof))
    for p in f.points:
        bits = round(p.megabytes * 8e6)
        # no plan of any size is at least as good on both axes and better on one
        assert not any(b <= bits and o <= p.omega and (b < bits or o < p.omega) for b, o in everything)
        # each point is the optimum at its own size (brute force)
        assert math.isclose(p.omega, min(o for b, o in everything if b <= bits), rel_tol=1e-9)
    assert f.points[0].megabytes == min(b for b, _ in everything) / 8e6
    assert f.points[-1].omega == min(o for _, o in everything)
    for s in f.sweep:  # each swept budget picks the best frontier point within it
        pick = next(p for p in reversed(f.points) if p.megabytes <= s["limit"] * (1 + 1e-12))
        assert s["point"] == pick.label
        assert math.isclose(pick.omega, min(o for b, o in everything if b <= s["limit"] * 8e6 + 1e-6), rel_tol=1e-9)
    assert [u.label for u in f.uniform] == ["uniform-w2", "uniform-w3", "uniform-w4", "uniform-w8"]


def test_non_dominated_filter():
    pts = [Point(str(i), x, 0, 0, o, "Optimal", ()) for i, (x, o) in
           enumerate([(1, 5), (2, 5), (2, 4), (3, 4.5), (4, 1), (4, 1), (5, 1)])]
    assert [p.label for p in non_dominated(pts, lambda p: p.megabytes)] == ["0", "2", "4"]


def test_bops_axis_and_fixed_limits():
    prof = profile(seed=3)
    f = pareto(prof, spec=SolveSpec(bits=(2, 4, 8), ties="graph"), points=12, axis="bops", budget=Budget(avg_bits=5.0))
    gb = [p.gbops for p in f.points]
    assert all(a < b for a, b in zip(gb, gb[1:])) and all(p.avg_bits <= 5.0 + 1e-12 for p in f.points)
    assert f.settings["ties"] == [["block1.conv", "block2.conv"]] and f.settings["budget"] == {"avg_bits": 5.0}
    with pytest.raises(ConfigError, match="drop gbops"):
        pareto(prof, axis="bops", budget=Budget(gbops=1.0))
    with pytest.raises(ConfigError, match="points"):
        pareto(prof, points=1)


def test_files_round_trip_and_highlight(tmp_path):
    prof = profile(seed=4)
    chosen = solve(prof, Budget(avg_bits=4.0), spec=SolveSpec(bits=(2, 4, 8)))
    f = pareto(prof, spec=SolveSpec(bits=(2, 4, 8)), points=10, chosen=chosen)
    assert f.chosen is not None and any(p.label == f.chosen for p in f.points)  # an exact optimum joins the frontier
    paths = write_frontier(f, tmp_path, "test")
    assert Frontier.load(paths["json"]) == f
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(rows) == len(f.points) + len(f.uniform) and sum(int(r["chosen"]) for r in rows) == 1
    svg = ET.parse(paths["svg"]).getroot()  # well-formed XML
    text = " ".join(t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text"))
    assert "uniform W4" in text and "chosen:" in text and "weight size" in text and "total Ω" in text
    (tmp_path / "bad.json").write_text(paths["json"].read_text().replace('"axis": "weight"', '"axis": "nope"'))
    with pytest.raises(ArtifactError, match="regenerate"):
        Frontier.load(tmp_path / "bad.json")


def test_cli_pareto_and_solve_with_several_limits(tmp_path, capsys):
    prof = profile(seed=5)
    prof.save(tmp_path / "profile.json")
    plan_path = tmp_path / "plan.json"
    gb = sum(l.macs for l in prof.layers) * 7 * 8 / 1e9
    assert cli.main(["--quiet", "solve", str(tmp_path / "profile.json"), "--avg-bits", "6.5", "--gbops", str(gb),
                     "--bits", "2,4,8", "--pin", r"block[34]\.conv=4", "--tie-shared-inputs",
                     "--out", str(plan_path)]) == 0
    out = capsys.readouterr().out
    assert "bops" in out and "slack" in out and "tied: block1.conv, block2.conv" in out and "(pinned)" in out
    assert cli.main(["--quiet", "pareto", str(tmp_path / "profile.json"), "--points", "8", "--bits", "2,4,8",
                     "--plan", str(plan_path), "--out", str(tmp_path / "fr")]) == 0
    out = capsys.readouterr().out
    assert "picked by budgets" in out and "uniform-w4" in out
    assert {p.name for p in (tmp_path / "fr").iterdir()} == {"frontier.json", "frontier.csv", "frontier.svg"}
    assert cli.main(["--quiet", "solve", str(tmp_path / "profile.json"), "--out", str(plan_path)]) == 2
    assert "at least one limit" in capsys.readouterr().err
    assert cli.main(["--quiet", "solve", str(tmp_path / "profile.json"), "--avg-bits", "1"]) == 2
    assert "smallest feasible budget is avg_bits=" in capsys.readouterr().err
