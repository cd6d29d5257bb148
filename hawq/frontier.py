"""The Pareto frontier of total Ω against weight size (or BOPs): the ILP swept over its limit
(ε-constraint, solver.sweep), dominated points removed; the frontier.json artifact (its CSV
and SVG: hawq.frontier_plot)."""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from .artifacts import JsonArtifact
from .errors import ArtifactError
from .sensitivity import Profile
from .solver import GIGA, MB, Budget, Plan, SolveSpec, plan_bops, sweep, uniform_plan

FORMAT, VERSION = "frontier", 1


@dataclass(frozen=True)
class Point:
    """One plan on (or next to) the frontier.

    label: "P1".."Pn" along the frontier (by size), "uniform-w4" for uniform plans, or a plan's label.
    megabytes: weight storage Σ params·w_bits / 8 / 1e6 (unrounded).
    avg_bits: Σ params·w_bits / Σ params.
    gbops: Σ MACs·w_bits·a_bits / 1e9 per input sample.
    omega: total Ω (the ILP's objective).
    status: "Optimal", "Feasible" or "Uniform".
    widths: per layer (profile order), (w_bits, a_bits).
    """

    label: str
    megabytes: float
    avg_bits: float
    gbops: float
    omega: float
    status: str
    widths: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, plan: Plan, profile: Profile, label: str) -> Point:
        """The point of `plan`.

        plan: a plan for `profile`.
        profile: the layers (params, MACs).
        label: the point's label.
        """
        wa = plan.assignment()
        bits = sum(l.params * wa[l.name][0] for l in profile.layers)
        return cls(label, bits / 8 / MB, plan.avg_bits, plan_bops(profile, wa) / GIGA, plan.omega, plan.status,
                   tuple(wa[l.name] for l in profile.layers))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"label": self.label, "megabytes": self.megabytes, "avg_bits": self.avg_bits, "gbops": self.gbops,
                "omega": self.omega, "status": self.status, "widths": [list(c) for c in self.widths]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Point:
        """Parse a dict made by to_dict (KeyError/TypeError/ValueError if malformed).

        d: the decoded JSON object.
        """
        return cls(str(d["label"]), float(d["megabytes"]), float(d["avg_bits"]), float(d["gbops"]),
                   float(d["omega"]), str(d["status"]), tuple((int(w), int(a)) for w, a in d["widths"]))


@dataclass(frozen=True)
class Frontier(JsonArtifact):
    """Non-dominated plans of total Ω against one resource, uniform plans beside them.

    axis: "weight" (x = megabytes) or "bops" (x = gbops).
    layers: layer names, the order of every point's widths.
    points: the frontier, x increasing and Ω strictly decreasing.
    uniform: every uniform plan (each profiled width), frontier or not.
    sweep: per swept limit (in x's unit), the label of the point that budget picks.
    chosen: label of the highlighted point (in points or uniform, or `extra`), or None.
    extra: a highlighted plan that lies on neither list (e.g. a guarded alternative).
    settings: candidates, pins, ties and other limits the sweep used.
    seconds: wall time of the sweep.
    """

    KIND, VERSION = FORMAT, VERSION

    axis: str
    layers: tuple[str, ...]
    points: tuple[Point, ...]
    uniform: tuple[Point, ...]
    sweep: tuple[dict[str, Any], ...]
    chosen: str | None = None
    extra: tuple[Point, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def x(self, pt: Point) -> float:
        """The point's value on this frontier's axis (megabytes or gbops).

        pt: a point.
        """
        return pt.megabytes if self.axis == "weight" else pt.gbops

    @property
    def x_unit(self) -> str:
        """"megabytes" or "gbops"."""
        return "megabytes" if self.axis == "weight" else "gbops"

    def pick(self, limit: float) -> Point | None:
        """The point a budget of `limit` (in x's unit) picks: the least Ω among points within it.

        limit: the budget on this axis.
        """
        fit = [p for p in self.points if self.x(p) <= limit * (1 + 1e-12)]
        return fit[-1] if fit else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with "format": "hawq.frontier/1"."""
        return {"format": self.format(), "axis": self.axis, "x": self.x_unit, "y": "omega",
                "layers": list(self.layers), "points": [p.to_dict() for p in self.points],
                "uniform": [p.to_dict() for p in self.uniform], "sweep": list(self.sweep), "chosen": self.chosen,
                "extra": [p.to_dict() for p in self.extra], "settings": self.settings, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Frontier:
        """Parse and validate a dict made by to_dict; ArtifactError if malformed.

        d: the decoded JSON object.
        """
        try:
            f = cls(str(d["axis"]), tuple(str(n) for n in d["layers"]),
                    tuple(Point.from_dict(p) for p in d["points"]), tuple(Point.from_dict(p) for p in d["uniform"]),
                    tuple(dict(s) for s in d["sweep"]), d.get("chosen"), tuple(Point.from_dict(p) for p in d["extra"]),
                    dict(d.get("settings", {})), float(d.get("seconds", 0.0)))
            if f.axis not in ("weight", "bops") or any(len(p.widths) != len(f.layers) for p in f.points):
                raise ValueError("axis or widths do not match the layers")
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"malformed frontier ({e.__class__.__name__}: {e}); regenerate it with `hawq pareto`") from e
        return f

    def csv_text(self) -> str:
        """One row per frontier point, then per uniform and highlighted plan."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["kind", "label", "megabytes", "avg_bits", "gbops", "omega", "status", "chosen", "w_bits",
                    "a_bits"])
        for kind, pts in (("frontier", self.points), ("uniform", self.uniform), ("extra", self.extra)):
            for p in pts:
                w.writerow([kind, p.label, f"{p.megabytes:.6f}", f"{p.avg_bits:.4f}", f"{p.gbops:.6f}", repr(p.omega),
                            p.status, int(p.label == self.chosen), " ".join(str(c[0]) for c in p.widths),
                            " ".join(str(c[1]) for c in p.widths)])
        return buf.getvalue()



def non_dominated(points: Sequence[Point], x: Any) -> list[Point]:
    """The points no other point beats on both x and Ω, x increasing and Ω strictly decreasing
    (of equal points, the first at the smallest x is kept).

    points: any points.
    x: point → its x value.
    """
    out: list[Point] = []
    for p in sorted(points, key=lambda p: (x(p), p.omega)):
        if not out or p.omega < out[-1].omega:
            out.append(p)
    return out


def pareto(profile: Profile, spec: SolveSpec = SolveSpec(), *, points: int = 50, axis: str = "weight",
           budget: Budget | None = None, chosen: Plan | None = None) -> Frontier:
    """Sweep the limit on `axis` over `points` values, keep the non-dominated plans.

    profile: per-layer params, MACs, Ω.
    spec: what may be chosen, as in solve().
    points: number of limits swept (≥ 2).
    axis: "weight" (Ω against megabytes) or "bops" (Ω against GBOPs).
    budget: other limits held fixed (e.g. gbops while sweeping weight).
    chosen: a plan to highlight (e.g. the one a pipeline exported).
    """
    t0 = time.perf_counter()
    plans = sweep(profile, spec, axis=axis, points=points, budget=budget)
    xof = (lambda p: p.megabytes) if axis == "weight" else (lambda p: p.gbops)
    raw = [Point.of(pl, profile, "") for pl in plans]
    if chosen is not None and chosen.status == "Optimal" and chosen.candidates == plans[0].candidates \
            and chosen.pins == plans[0].pins and chosen.ties == plans[0].ties:
        raw.append(Point.of(chosen, profile, ""))  # an exact optimum between two swept limits
    front = [Point(f"P{i + 1}", p.megabytes, p.avg_bits, p.gbops, p.omega, p.status, p.widths)
             for i, p in enumerate(non_dominated(raw, xof))]
    unit = "megabytes" if axis == "weight" else "gbops"
    a_set = sorted({c[1] for c in plans[0].candidates})
    uniform = tuple(Point.of(uniform_plan(profile, w, replace(spec, latency=None), a_bits=a), profile,
                             f"uniform-w{w}" + ("" if a == 8 else f"a{a}"))
                    for a in a_set for w in sorted(profile.bits))
    frontier = Frontier(axis, tuple(profile.names), tuple(front), uniform, (), settings={
        "points": points, "bits": sorted({c[0] for c in plans[0].candidates}),
        "a_bits": sorted({c[1] for c in plans[0].candidates}), "pins": plans[0].to_dict()["pins"],
        "ties": [list(t) for t in plans[0].ties], "budget": budget.limits() if budget is not None else {},
        "statuses": sorted({p.status for p in plans}), "solver": plans[0].solver})
    sweep_rec = []
    for pl in plans:
        limit = pl.budget[unit]
        hit = frontier.pick(limit)
        sweep_rec.append({"limit": limit, "point": hit.label if hit else None})
    label, extra = None, ()
    if chosen is not None:
        mine = tuple(chosen.assignment()[n] for n in profile.names)
        same = next((p for p in front + list(uniform) if p.widths == mine), None)
        if same is not None:
            label = same.label
        else:
            label, extra = chosen.label, (Point.of(chosen, profile, chosen.label),)
    return Frontier(axis, frontier.layers, frontier.points, uniform, tuple(sweep_rec), label, extra,
                    frontier.settings, time.perf_counter() - t0)

