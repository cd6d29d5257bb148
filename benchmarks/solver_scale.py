"""How the exact bit-allocation ILP scales: one JSON line per case.

    python benchmarks/solver_scale.py            # all cases
    python benchmarks/solver_scale.py --quick    # the small cases only
    python benchmarks/solver_scale.py --cross    # the quadratic model (cross-layer terms) only
    python benchmarks/solver_scale.py --cross-profile out/quality/mobilenetv2_fashion_perturbed_cross_profile.json
                                                 # a real quadratic profile (from quality.py): solves and a sweep
                                                 # (--points N: limits in the sweep, default 10)

Keys: case, layers, candidates, constraints, seconds (wall time of the call, model building and
CBC included), status ("Optimal" = proven optimal; for a sweep, every point), gap (relative
optimality gap; the largest over a sweep), plus case-specific extras.

Problems are synthetic but seeded: per-layer parameters and MACs (for "resnet50" the real
shapes of torchvision's ResNet-50 at 224×224, 53 convolutions and the classifier), Ω falling
with the bit width at a random per-layer scale, activation Ω for the A{4, 8} candidates, and a
latency table in which 8-bit kernels are the fast ones (so latency pulls against size).
The "cross" cases add a dense cross-layer term for every pair of layers and widths, mostly
positive (damage that compounds) and up to the geometric mean of the two layers' Ω, and solve
the quadratic model with HiGHS at 4 average bits; "pair_columns" is the size MAX_PAIR_COLUMNS
limits, and a case above it runs with the limit lifted and a time limit ("time_limit").
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

from hawq.frontier import pareto
from hawq.sensitivity import Interaction, LayerProfile, Profile
from hawq.solver import problem
from hawq.solver import Budget, SolveSpec, solve

W_BITS, A_BITS = (2, 4, 8), (4, 8)
# per-MAC time factor of each (w, a) kernel: int8 fast path, int4 unpacking, no int2 kernel
SPEED = {(2, 4): 1.05, (2, 8): 1.15, (4, 4): 0.75, (4, 8): 0.85, (8, 4): 0.6, (8, 8): 0.7}


def resnet50_shapes() -> list[tuple[str, int, int]]:
    """(name, params, MACs) of torchvision's ResNet-50 layers at 224×224."""
    import torch
    import torchvision

    from hawq.graph import trace_layers

    g = trace_layers(torchvision.models.resnet50(), torch.zeros(1, 3, 224, 224))
    return [(l.name, l.params, l.macs) for l in g.layers]


def random_shapes(n: int, rng: random.Random) -> list[tuple[str, int, int]]:
    """(name, params, MACs) of `n` layers with ResNet-like spreads."""
    out = []
    for i in range(n):
        c_in, c_out, k = rng.choice([64, 128, 256, 512]), rng.choice([64, 128, 256, 512]), rng.choice([1, 3])
        params, hw = c_in * c_out * k * k, rng.choice([7, 14, 28, 56]) ** 2
        out.append((f"layer{i}.conv", params, params * hw))
    return out


def synthetic(shapes: list[tuple[str, int, int]], seed: int) -> tuple[Profile, dict, dict]:
    """(profile with Ω over W_BITS, activation Ω over A_BITS, latency table in ms)."""
    rng = random.Random(seed)
    layers, act, lat = [], {}, {}
    for name, params, macs in shapes:
        scale = 10 ** rng.uniform(-3, 0)  # traces spread over three decades
        om = {b: scale * 4.0 ** (-b) * rng.uniform(0.8, 1.3) for b in W_BITS}  # error ∝ 4^-b, as measured
        layers.append(LayerProfile(name, "Conv2d", (params,), params, macs, scale, scale * 0.1, 8, dict(om), om))
        a_scale = scale * rng.uniform(0.05, 0.5)
        act[name] = {a: a_scale * 4.0 ** (-a) * rng.uniform(0.8, 1.3) for a in A_BITS}
        lat[name] = {c: macs * f * 1e-9 * rng.uniform(0.95, 1.05) for c, f in SPEED.items()}
    return Profile(layers=tuple(layers), bits=W_BITS, fingerprints={"synthetic": str(seed)}), act, lat


def limits(prof: Profile, lat: dict, r: float) -> Budget:
    """Weight, BOPs and latency limits each at fraction r between their least and largest value."""
    lo_w = sum(l.params * 2 for l in prof.layers[1:-1]) + 8 * (prof.layers[0].params + prof.layers[-1].params)
    hi_w = sum(l.params * 8 for l in prof.layers)
    lo_l = sum(min(v.values()) for v in lat.values())
    hi_l = sum(max(v.values()) for v in lat.values())
    return Budget(avg_bits=(lo_w + r * (hi_w - lo_w)) / sum(l.params for l in prof.layers), bops_ratio=r,
                  latency_ms=lo_l + r * (hi_l - lo_l))


def ilp_case(n: int, seed: int, r: float) -> dict:
    """One solve with 6 candidates (W{2,4,8} × A{4,8}) under weight, BOPs and latency limits."""
    prof, act, lat = synthetic(random_shapes(n, random.Random(seed)), seed)
    budget = limits(prof, lat, r)
    t0 = time.perf_counter()
    plan = solve(prof, budget, spec=SolveSpec(a_bits=A_BITS, act_omega=act, latency=lat))
    seconds = time.perf_counter() - t0
    return {"case": "ilp", "layers": n, "candidates": len(W_BITS) * len(A_BITS), "constraints": 3,
            "seconds": round(seconds, 3), "status": plan.status, "gap": plan.gap, "solver": plan.solver, "r": r,
            "binding": sorted(k for k, c in plan.constraints.items()
                              if c["slack"] is not None and c["slack"] <= 1e-3 * abs(c["limit"]))}


def pareto_case(shapes: list[tuple[str, int, int]], name: str, points: int, with_bops: bool) -> dict:
    """A `points`-point sweep of the weight limit with W{2,4,8} × A8 (and a fixed BOPs limit)."""
    prof, _, _ = synthetic(shapes, 0)
    budget = Budget(bops_ratio=0.5) if with_bops else None
    t0 = time.perf_counter()
    f = pareto(prof, spec=SolveSpec(bits=W_BITS), points=points, budget=budget)
    seconds = time.perf_counter() - t0
    statuses = f.settings["statuses"]
    return {"case": f"pareto-{name}", "layers": len(shapes), "candidates": len(W_BITS), "constraints": 1 + with_bops,
            "seconds": round(seconds, 3), "status": statuses[0] if len(statuses) == 1 else "/".join(statuses),
            "gap": 0.0 if statuses == ["Optimal"] else None, "solver": f.settings["solver"], "points": points,
            "frontier_points": len(f.points)}


def with_cross_terms(prof: Profile, seed: int) -> Profile:
    """`prof` with a dense Interaction for every pair of layers: term(b_a, b_b) drawn in
    [-0.3, 1] × √(Ω_a(b_a) · Ω_b(b_b))."""
    rng = random.Random(seed)
    pairs = []
    for i, la in enumerate(prof.layers):
        for lb in prof.layers[i + 1:]:
            pairs.append(Interaction(la.name, lb.name, tuple(
                tuple(rng.uniform(-0.3, 1.0) * (la.omega[x] * lb.omega[y]) ** 0.5 for y in prof.bits) for x in prof.bits)))
    return Profile(layers=prof.layers, bits=prof.bits, fingerprints=prof.fingerprints, interactions=tuple(pairs))


def cross_case(shapes: list[tuple[str, int, int]], name: str, seed: int, time_limit: float) -> dict:
    """One HiGHS solve of the quadratic model at avg_bits 4 with W{2,4,8} × A8."""
    prof = with_cross_terms(synthetic(shapes, seed)[0], seed)
    spec = SolveSpec(bits=W_BITS, pins={}, solver="highs", time_limit=time_limit)
    columns = len(shapes) * (len(shapes) - 1) // 2 * len(W_BITS) ** 2
    limit = problem.MAX_PAIR_COLUMNS
    problem.MAX_PAIR_COLUMNS = max(limit, columns)  # lifted for the largest case, to time it
    try:
        t0 = time.perf_counter()
        plan = solve(prof, Budget(avg_bits=4), spec)
        seconds = time.perf_counter() - t0
    finally:
        problem.MAX_PAIR_COLUMNS = limit
    return {"case": f"cross-{name}", "layers": len(shapes), "candidates": len(W_BITS), "constraints": 1,
            "seconds": round(seconds, 3), "status": plan.status, "gap": plan.gap, "solver": plan.solver,
            "loss_model": plan.loss_model, "pair_columns": columns, "above_limit": columns > limit,
            "time_limit": time_limit}


def profile_cases(path: str, points: int = 10) -> list[dict]:
    """Solves at 4, 3 and 2.5 average bits and a frontier sweep of `points` limits on a saved
    profile (W{2,4,8} × A8, first and last layer at 8 bits, solver "auto")."""
    prof = Profile.load(path)
    spec, out = SolveSpec(bits=W_BITS), []
    for avg in (4.0, 3.0, 2.5):
        t0 = time.perf_counter()
        plan = solve(prof, Budget(avg_bits=avg), spec)
        out.append({"case": "profile-solve", "profile": path, "layers": len(prof.layers), "avg_bits": avg,
                    "pairs": len(prof.interactions), "seconds": round(time.perf_counter() - t0, 3),
                    "status": plan.status, "solver": plan.solver, "loss_model": plan.loss_model})
    t0 = time.perf_counter()
    f = pareto(prof, spec, points=points)
    out.append({"case": "profile-pareto", "profile": path, "layers": len(prof.layers), "points": points,
                "pairs": len(prof.interactions), "seconds": round(time.perf_counter() - t0, 3),
                "status": "/".join(f.settings["statuses"]), "solver": f.settings["solver"]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the small cases")
    ap.add_argument("--cross", action="store_true", help="only the quadratic-model cases")
    ap.add_argument("--cross-profile", metavar="PATH", help="only the solves and sweep on this saved profile")
    ap.add_argument("--points", type=int, default=10, help="limits in the --cross-profile sweep (default 10)")
    a = ap.parse_args(argv)
    if a.cross_profile:
        for row in profile_cases(a.cross_profile, a.points):
            print(json.dumps(row), flush=True)
        return 0
    if a.cross:
        for n, seed in ((20, 1), (20, 2), (40, 1), (40, 2)):
            print(json.dumps(cross_case(random_shapes(n, random.Random(seed)), f"random{n}", seed, 600)), flush=True)
        for seed in (1, 2):
            print(json.dumps(cross_case(resnet50_shapes(), "resnet50", seed, 600)), flush=True)
        print(json.dumps(cross_case(random_shapes(100, random.Random(1)), "random100", 1, 300)), flush=True)
        return 0
    sizes = (100, 300) if a.quick else (100, 300, 1000)
    for n in sizes:
        for r in (0.3, 0.6):
            print(json.dumps(ilp_case(n, seed=n, r=r)), flush=True)
    shapes = resnet50_shapes()
    print(json.dumps(pareto_case(shapes, "resnet50", 50, with_bops=False)), flush=True)
    print(json.dumps(pareto_case(shapes, "resnet50", 50, with_bops=True)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
