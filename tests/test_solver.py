"""The bit-width ILP against brute force, budgets, pins, ties, and the plan artifact."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import re

import pytest

from hawq.errors import ArtifactError, ConfigError, InfeasibleBudgetError
from hawq.sensitivity import LayerProfile, Profile
from hawq.solver import (Budget, Plan, SolveSpec, alternatives, avg_bits_of, default_pins, plan_weight_bytes, profile_fingerprint,
                         solve, solver_backend, sweep, uniform_plan, uniform_plans_within)

# CBC proves optimality to 1e-12 of the objective; HiGHS to its tolerances (~1e-8 of the largest
# per-layer Ω range, which these instances spread over 1e-8..1e2).
SOLVERS = ["cbc"] + (["highs"] if solver_backend("auto", units=10**6) == "highs" else [])
REL_TOL = {"cbc": 1e-9, "highs": 1e-7}


def make_profile(params: list[int], omega: list[dict[int, float]], bits: tuple[int, ...]) -> Profile:
    layers = tuple(
        LayerProfile(name=f"layer{i}.conv", kind="Conv2d", weight_shape=(p,), params=p, macs=p, trace=1.0,
                     trace_se=0.0, probes=1, sq_error=dict(om), omega=dict(om))
        for i, (p, om) in enumerate(zip(params, omega)))
    return Profile(layers=layers, bits=bits, fingerprints={"weights": "w0", "data": "d0", "settings": "s0"})


def decreasing_omega(rng: random.Random, bits: tuple[int, ...]) -> dict[int, float]:
    """Ω falling with bits, at a random scale in 1e-8 .. 1e2."""
    v, out = 10 ** rng.uniform(-8, 2), {}
    for b in sorted(bits):
        out[b] = v
        v *= rng.uniform(0.02, 0.9)
    return out


def small_profile(bits: tuple[int, ...] = (2, 4, 8), n: int = 5, seed: int = 0) -> Profile:
    rng = random.Random(seed)
    return make_profile([rng.randint(50, 5000) for _ in range(n)], [decreasing_omega(rng, bits) for _ in range(n)],
                        bits)


def brute_force(profile: Profile, cand, pins, ties, limit_bits: int) -> tuple[float, dict[str, int]] | None:
    """Least Σ Ω over every assignment obeying pins, ties and Σ params·b ≤ limit_bits (None: none fits)."""
    names = [l.name for l in profile.layers]
    options = [[pins[n]] if n in pins else list(cand) for n in names]
    best = None
    for combo in itertools.product(*options):
        w = dict(zip(names, combo))
        if any(len({w[n] for n in t}) > 1 for t in ties):
            continue
        if sum(l.params * w[l.name] for l in profile.layers) > limit_bits:
            continue
        obj = math.fsum(l.omega[w[l.name]] for l in profile.layers)
        if best is None or obj < best[0]:
            best = (obj, w)
    return best


def random_instance(rng: random.Random):
    n = rng.randint(3, 6)
    profile_bits = (2, 3, 4, 8)
    cand = tuple(sorted(rng.sample(profile_bits, rng.randint(1, 4))))
    params = [rng.choice([rng.randint(1, 60), rng.randint(100, 5000), 16 * rng.randint(1, 300)]) for _ in range(n)]
    omegas = [decreasing_omega(rng, profile_bits) for _ in range(n)]
    if rng.random() < 0.2:  # exact duplicates: several optimal plans
        params[1], omegas[1] = params[0], dict(omegas[0])
    profile = make_profile(params, omegas, profile_bits)
    names = [l.name for l in profile.layers]
    order = rng.sample(names, n)
    ties, i = [], 0
    for _ in range(rng.randint(0, 2)):
        k = rng.randint(2, 3)
        if i + k <= n:
            ties.append(order[i:i + k])
            i += k
    pins: dict[str, int] = {}
    for name in rng.sample(names, rng.randint(0, 2)):
        tied = next((t for t in ties if name in t), [name])
        pins[name] = next((pins[m] for m in tied if m in pins), rng.choice(cand))
    return profile, cand, pins, ties


def random_budget(rng: random.Random, profile: Profile, cand, pins, ties) -> tuple[Budget, int]:
    """A random budget and its limit in bits (computed independently of the solver)."""
    total = sum(l.params for l in profile.layers)
    kind = rng.choice(["avg_bits", "megabytes", "ratio"])
    if kind == "ratio":
        fixed = dict(pins)
        for t in ties:
            pinned = [pins[m] for m in t if m in pins]
            fixed.update({m: pinned[0] for m in t} if pinned else {})
        lo = sum(l.params * fixed.get(l.name, cand[0]) for l in profile.layers)
        hi = sum(l.params * fixed.get(l.name, cand[-1]) for l in profile.layers)
        r = rng.random()
        return Budget(ratio=r), math.floor(lo + r * (hi - lo))
    avg = rng.uniform(cand[0] - 1.0, cand[-1] + 0.5)
    if kind == "avg_bits":
        return Budget(avg_bits=max(avg, 0.1)), math.floor(max(avg, 0.1) * total)
    mb = max(avg, 0.1) * total / 8 / 1e6
    return Budget(megabytes=mb), math.floor(mb * 1e6 * 8)


@pytest.mark.parametrize("solver", SOLVERS)
def test_ilp_matches_brute_force_on_random_instances(solver):
    rng = random.Random(1234)
    feasible = infeasible = 0
    for _ in range(200):
        profile, cand, pins, ties = random_instance(rng)
        budget, limit = random_budget(rng, profile, cand, pins, ties)
        best = brute_force(profile, cand, pins, ties, limit)
        if best is None:
            with pytest.raises(InfeasibleBudgetError):
                solve(profile, budget, spec=SolveSpec(bits=cand, pins=pins, ties=ties, solver=solver))
            infeasible += 1
            continue
        plan = solve(profile, budget, spec=SolveSpec(bits=cand, pins=pins, ties=ties, solver=solver))
        feasible += 1
        w = {l.name: l.w_bits for l in plan.layers}
        assert plan.status == "Optimal" and plan.solver == solver
        assert math.isclose(plan.omega, best[0], rel_tol=REL_TOL[solver], abs_tol=0.0), (plan.omega, best, w)
        assert sum(l.params * w[l.name] for l in profile.layers) <= limit
        assert all(w[n] == b for n, b in pins.items())
        assert all(len({w[n] for n in t}) == 1 for t in ties)
        assert set(w.values()) <= set(cand)
        assert plan.weight_bytes == plan_weight_bytes(profile, w)
    assert feasible >= 120 and infeasible >= 15, (feasible, infeasible)


@pytest.mark.parametrize("solver, rel_tol", [("cbc", 1e-12)] + [("highs", 1e-9)] * ("highs" in SOLVERS))
def test_tiny_and_huge_omega_scales_are_exact(solver, rel_tol):
    """Ω differences of 1e-8 next to Ω of 1e2: CBC must still upgrade the cheap tiny layer; HiGHS
    may miss it by its tolerance (1e-10 of Ω here)."""
    bits = (2, 4, 8)
    omega = [{2: 100.0, 4: 99.0, 8: 98.0}, {2: 3e-8, 4: 2e-8, 8: 1e-8}, {2: 2e-8, 4: 1.5e-8, 8: 1.4e-8}]
    profile = make_profile([10, 10, 10], omega, bits)
    for limit_avg in (2.0, 3.4, 4.0, 5.4, 6.7, 8.0):
        plan = solve(profile, Budget(avg_bits=limit_avg), spec=SolveSpec(pins={}, solver=solver))
        best = brute_force(profile, bits, {}, [], math.floor(limit_avg * 30))
        assert math.isclose(plan.omega, best[0], rel_tol=rel_tol), (limit_avg, plan.assignment(), best)


def test_regression_cbc_sos_preprocessing():
    """CBC's default preprocessing returned a plan with 4x the optimal Ω on this instance."""
    bits = (2, 3, 4, 8)
    omega = [
        {2: 2.4217495711239613e-05, 3: 1.437837203666661e-05, 4: 9.740155622249301e-06, 8: 1.3296452518377894e-06},
        {2: 2.4217495711239613e-05, 3: 1.437837203666661e-05, 4: 9.740155622249301e-06, 8: 1.3296452518377894e-06},
        {2: 0.002122815805180354, 3: 0.0018964367924725137, 4: 0.0003393631515023967, 8: 0.00030004992381609647},
        {2: 0.10076600593843985, 3: 0.032883655187977895, 4: 0.02903341371672562, 8: 0.0047632652837453614},
        {2: 0.09422052796930286, 3: 0.07578597504144909, 4: 0.013550959250407932, 8: 0.011948194334489994},
        {2: 1.557410852419011e-08, 3: 1.3738064618797024e-08, 4: 7.4442962000718055e-09, 8: 2.9175345936562506e-10},
    ]
    profile = make_profile([4624, 4624, 3376, 686, 4032, 4080], omega, bits)
    pins, ties = {"layer3.conv": 8, "layer5.conv": 8}, [["layer2.conv", "layer3.conv"]]
    plan = solve(profile, Budget(ratio=0.12142123963598173), spec=SolveSpec(bits=(3, 4, 8), pins=pins, ties=ties, solver="cbc"))
    best = brute_force(profile, (3, 4, 8), pins, ties, 113038)
    assert math.isclose(plan.omega, best[0], rel_tol=1e-9), (plan.assignment(), best)


def test_budget_forms_agree_on_the_same_limit():
    profile = small_profile(n=6, seed=3)
    total = sum(l.params for l in profile.layers)
    pins = default_pins(profile)
    lo = sum(l.params * pins.get(l.name, 2) for l in profile.layers)
    hi = sum(l.params * pins.get(l.name, 8) for l in profile.layers)
    limit_bits = 8 * ((lo + hi) // 16)  # a whole number of bytes between the extremes
    plans = [solve(profile, b) for b in (Budget(megabytes=limit_bits / 8 / 1e6), Budget(avg_bits=limit_bits / total),
                                         Budget(ratio=(limit_bits - lo) / (hi - lo)))]
    assert plans[0].assignment() == plans[1].assignment() == plans[2].assignment()
    for p in plans:
        assert p.budget["weight_bytes_limit"] == pytest.approx(limit_bits / 8, rel=1e-12)
    assert Budget(avg_bits=4).weight_bytes_limit(profile, spec=SolveSpec(pins=pins)) == pytest.approx(total * 4 / 8)
    assert Budget(megabytes=0.5).weight_bytes_limit(profile, spec=SolveSpec(pins={})) == 5e5


def test_ratio_extremes():
    profile = small_profile(n=5, seed=4)
    first, last = profile.layers[0].name, profile.layers[-1].name
    low = solve(profile, Budget(ratio=0.0)).assignment()
    high = solve(profile, Budget(ratio=1.0)).assignment()
    assert low[first] == low[last] == (8, 8) and high[first] == high[last] == (8, 8)
    assert all(low[l.name][0] == 2 and high[l.name][0] == 8 for l in profile.layers[1:-1])
    pinned4 = solve(profile, Budget(ratio=1.0), spec=SolveSpec(pins={first: 4})).assignment()
    assert pinned4[first][0] == 4 and all(pinned4[l.name][0] == 8 for l in profile.layers[1:])
    assert solve(profile, Budget(ratio=0.0), spec=SolveSpec(bits=(4, 8), pins={})).assignment()[first][0] == 4


@pytest.mark.parametrize("kind", ["avg_bits", "megabytes"])
def test_infeasible_budget_names_the_smallest_feasible_value(kind):
    profile = small_profile(n=5, seed=5)
    total = sum(l.params for l in profile.layers)
    pins = default_pins(profile)
    lo_bits = sum(l.params * pins.get(l.name, 2) for l in profile.layers)
    exact = lo_bits / total if kind == "avg_bits" else lo_bits / 8 / 1e6
    with pytest.raises(InfeasibleBudgetError) as e:
        solve(profile, Budget(**{kind: exact * 0.9}))
    m = re.search(rf"smallest feasible budget is {kind}=([0-9.eE+-]+)", str(e.value))
    assert m, str(e.value)
    named = float(m.group(1))
    assert exact <= named <= exact * (1 + 1e-5)
    for value in (exact, named):  # at the named value, and exactly at the minimum, a plan exists
        plan = solve(profile, Budget(**{kind: value}))
        assert sum(l.params * l.w_bits for l in plan.layers) == lo_bits
    with pytest.raises(InfeasibleBudgetError):
        solve(profile, Budget(**{kind: exact * (1 - 1e-6)}))


def test_infeasible_with_pins_in_ties():
    profile = small_profile(n=4, seed=6)
    names = [l.name for l in profile.layers]
    # layer 1 is tied to the pinned layer 0, so it is fixed at 8 bits too
    lo_bits = sum(l.params * (8 if l.name in names[:2] else 2) for l in profile.layers)
    total = sum(l.params for l in profile.layers)
    with pytest.raises(InfeasibleBudgetError, match="smallest feasible"):
        solve(profile, Budget(avg_bits=lo_bits / total * 0.99), spec=SolveSpec(pins={names[0]: 8}, ties=[names[:2]]))
    plan = solve(profile, Budget(avg_bits=lo_bits / total), spec=SolveSpec(pins={names[0]: 8}, ties=[names[:2]]))
    assert [l.w_bits for l in plan.layers] == [8, 8, 2, 2]
    assert [l.pinned for l in plan.layers] == [True, False, False, False]


def test_pins_and_ties_respected():
    profile = small_profile(n=6, seed=7)
    n = [l.name for l in profile.layers]
    plan = solve(profile, Budget(ratio=0.5), spec=SolveSpec(pins={n[2]: 2, n[5]: 8}, ties=[[n[0], n[1]], [n[1], n[3]], [n[4], n[2]]]))
    a = {k: v[0] for k, v in plan.assignment().items()}
    assert a[n[2]] == a[n[4]] == 2 and a[n[5]] == 8
    assert a[n[0]] == a[n[1]] == a[n[3]]
    assert plan.ties == ((n[0], n[1], n[3]), (n[2], n[4]))  # overlapping ties merged, profile order
    assert plan.pins == {n[2]: 2, n[5]: 8}
    assert all(v[1] == 8 for v in plan.assignment().values())
    assert {l.name for l in plan.layers if l.pinned} == {n[2], n[5]}


@pytest.mark.parametrize("kwargs, match", [
    ({"pins": {"nope": 8}}, "nope"),
    ({"pins": {"layer0.conv": 3}}, "candidate"),
    ({"bits": (2, 4)}, "candidate"),  # default pins at 8 bits, 8 not a candidate
    ({"bits": (2, 16)}, "subset"),
    ({"bits": ()}, "subset"),
    ({"ties": [["layer0.conv", "ghost"]]}, "ghost"),
    ({"ties": ["layer0.conv"]}, "list of layer names"),
    ({"pins": {"layer0.conv": 8, "layer1.conv": 2}, "ties": [["layer0.conv", "layer1.conv"]]}, "different"),
    ({"a_bits": 0}, "a_bits"),
    ({"time_limit": -1}, "time_limit"),
])
def test_bad_options_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        solve(small_profile(), Budget(avg_bits=4.0), SolveSpec(**kwargs))


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"),
    ({"avg_bits": 4.0, "megabytes": 1.0}, "exactly one"),
    ({"avg_bits": -1.0}, "-1.0"),
    ({"megabytes": 0.0}, "positive"),
    ({"ratio": 1.5}, r"\[0, 1\]"),
    ({"ratio": float("nan")}, "finite"),
    ({"avg_bits": "4"}, "number"),
])
def test_bad_budget_raises_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Budget(**kwargs)


def test_plan_json_round_trip(tmp_path):
    profile = small_profile(n=5, seed=8)
    n = [l.name for l in profile.layers]
    plan = solve(profile, Budget(ratio=0.4), spec=SolveSpec(ties=[[n[1], n[2]]]))
    path = plan.save(tmp_path / "sub" / "plan.json")
    assert json.loads(path.read_text())["format"] == "hawq.plan/1"
    loaded = Plan.load(path)
    assert loaded == plan
    assert loaded.assignment() == plan.assignment()
    assert loaded.profile_fingerprint == profile_fingerprint(profile)
    loaded.check_profile(profile)
    other = make_profile([l.params for l in profile.layers], [dict(l.omega) for l in profile.layers], profile.bits)
    object.__setattr__(other, "fingerprints", {"weights": "other"})
    with pytest.raises(ArtifactError, match="another profile"):
        loaded.check_profile(other)


def _mutations(d):
    yield {k: v for k, v in d.items() if k != "layers"}
    yield {**d, "layers": [{**d["layers"][0], "w_bits": "4"}] + d["layers"][1:]}
    yield {**d, "layers": [{k: v for k, v in d["layers"][0].items() if k != "params"}] + d["layers"][1:]}
    yield {**d, "weight_bytes": d["weight_bytes"] + 1}
    yield {**d, "layers": d["layers"] + d["layers"][:1]}
    yield {**d, "pins": ["layer0.conv"]}
    yield {**d, "layers": "none"}


def test_malformed_or_foreign_plan_files_raise_artifact_error(tmp_path):
    plan = solve(small_profile(), Budget(ratio=0.5))
    d = plan.to_dict()
    for i, bad in enumerate(_mutations(d)):
        p = tmp_path / f"bad{i}.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(ArtifactError, match="regenerate"):
            Plan.load(p)
    (tmp_path / "profile.json").write_text(json.dumps({**d, "format": "hawq.profile/1"}))
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    for name in ("profile.json", "junk.json", "list.json", "missing.json"):
        with pytest.raises(ArtifactError):
            Plan.load(tmp_path / name)


def test_uniform_plan_sizes():
    profile = small_profile(bits=(2, 3, 4, 8), n=5, seed=9)
    names = [l.name for l in profile.layers]
    plan = uniform_plan(profile, 3)
    w = {l.name: l.w_bits for l in plan.layers}
    assert w[names[0]] == w[names[-1]] == 8 and all(w[n] == 3 for n in names[1:-1])
    bits = sum(l.params * w[l.name] for l in profile.layers)
    assert plan.weight_bytes == -(-bits // 8)
    assert plan.avg_bits == pytest.approx(bits / sum(l.params for l in profile.layers))
    assert plan.avg_bits == avg_bits_of(profile, w)
    assert plan.omega == pytest.approx(sum(l.omega[w[l.name]] for l in profile.layers))
    assert plan.label == "uniform-w3" and plan.status == "Uniform"
    assert [l.pinned for l in plan.layers] == [True, False, False, False, True]
    assert all(l.w_bits == 4 for l in uniform_plan(profile, 4, spec=SolveSpec(pins={})).layers)
    with pytest.raises(ConfigError, match="accepted"):
        uniform_plan(profile, 5)
    # the demo's comparison: profile (2, 3, 4, 8), uniform at 3 bits, mixed over (2, 4, 8) at that size
    mixed = solve(profile, Budget(megabytes=plan.weight_bytes / 1e6), spec=SolveSpec(bits=(2, 4, 8)))
    assert mixed.weight_bytes <= plan.weight_bytes
    assert {l.w_bits for l in mixed.layers} <= {2, 4, 8}
    assert mixed.label.startswith("mixed@")


def test_solve_is_deterministic_and_time_limit_accepted():
    profile = small_profile(bits=(2, 3, 4, 8), n=6, seed=10)
    a = solve(profile, Budget(ratio=0.37))
    b = solve(profile, Budget(ratio=0.37), spec=SolveSpec(time_limit=30))
    assert a.assignment() == b.assignment() and a.omega == b.omega and b.status == "Optimal"


# ---------------------------------------------------------------------------------------------
# several limits at once, (w, a) candidates, regex pins, graph ties, alternatives


def _floor(x: float) -> int:
    return math.floor(x + 1e-12 * max(1.0, abs(x)))


def multi_instance(rng: random.Random):
    """A small random problem: (profile, w set, a set, act_omega, latency, pins, ties)."""
    n = rng.randint(3, 5)
    wset = tuple(sorted(rng.sample((2, 3, 4, 8), rng.randint(1, 3))))
    aset = rng.choice([(8,), (4, 8)])
    if len(wset) * len(aset) ** 1 > 4:
        n = min(n, 4)
    params = [rng.choice([rng.randint(1, 60), rng.randint(100, 3000)]) for _ in range(n)]
    profile = make_profile(params, [decreasing_omega(rng, (2, 3, 4, 8)) for _ in range(n)], (2, 3, 4, 8))
    layers = tuple(LayerProfile(l.name, l.kind, l.weight_shape, l.params, rng.randint(1, 400), l.trace, l.trace_se,
                                l.probes, l.sq_error, l.omega) for l in profile.layers)
    profile = Profile(layers=layers, bits=profile.bits, groups=((layers[0].name, layers[1].name),),
                      fingerprints=profile.fingerprints, residual=((layers[1].name, layers[-1].name),))
    act = {l.name: decreasing_omega(rng, aset) for l in layers} if len(aset) > 1 else None
    lat = {l.name: {(w, a): rng.uniform(0.01, 1.0) * (1 + (w == 2)) for w in (2, 3, 4, 8) for a in (4, 8)}
           for l in layers}
    names = [l.name for l in layers]
    ties = rng.choice([[], "graph", "inputs", "residual", [names[-2:]]])
    pins: dict = {}
    if rng.random() < 0.5:
        w = rng.choice(wset)
        pins[rng.choice(names)] = w if rng.random() < 0.5 else (w, rng.choice(aset))
    if rng.random() < 0.3:  # a regular expression matching several layers
        pins[r"layer[12]\.conv"] = rng.choice(wset)
    return profile, wset, aset, act, lat, pins, ties


class PinConflict(Exception):
    """Tied layers pinned to different candidates: solve() must refuse with a ConfigError."""


def brute_force_multi(profile, wset, aset, act, lat, pins, ties, caps):
    """Least Σ Ω over assignments obeying pins (names or regexes, later win), ties and every cap."""
    names = [l.name for l in profile.layers]
    cands = [(w, a) for w in wset for a in aset]
    allowed = {n: cands for n in names}
    for key, v in pins.items():
        hit = [key] if key in names else [n for n in names if re.fullmatch(key, n)]
        for n in hit:
            allowed[n] = [c for c in cands if (c[0] == v if isinstance(v, int) else c == tuple(v))]
    graph = {"inputs": profile.groups, "residual": profile.residual, "graph": profile.groups + profile.residual}
    groups = [set(g) for g in graph[ties]] if isinstance(ties, str) else [set(t) for t in ties]
    merged: list[set] = []
    for g in groups:  # overlapping ties share one candidate: merge them
        for m in [m for m in merged if m & g]:
            merged.remove(m)
            g = g | m
        merged.append(g)
    if any(not set.intersection(*(set(allowed[n]) for n in g)) for g in merged):
        raise PinConflict
    best = None
    for combo in itertools.product(*(allowed[n] for n in names)):
        wa = dict(zip(names, combo))
        if any(len({wa[n] for n in g}) > 1 for g in groups):
            continue
        tot = {"w": sum(l.params * wa[l.name][0] for l in profile.layers),
               "b": sum(l.macs * wa[l.name][0] * wa[l.name][1] for l in profile.layers),
               "l": math.fsum(lat[l.name][wa[l.name]] for l in profile.layers)}
        if "w" in caps and tot["w"] > _floor(caps["w"]) or "b" in caps and tot["b"] > _floor(caps["b"]) or \
                "l" in caps and tot["l"] > caps["l"] * (1 + 1e-9):
            continue
        if "a" in caps and max(l.act_elems * wa[l.name][1] / 8 for l in profile.layers) > caps["a"]:
            continue
        obj = math.fsum(l.omega[wa[l.name][0]] + (act[l.name][wa[l.name][1]] if act else 0.0) for l in profile.layers)
        if best is None or obj < best[0]:
            best = (obj, wa)
    return best


@pytest.mark.parametrize("solver", SOLVERS)
def test_multi_constraint_ilp_matches_brute_force(solver):
    """At least 100 feasible random instances: weight, BOPs and latency limits in random subsets,
    (w, a) candidates with activation Ω, pins by name, pair and regex, ties given or from the graph."""
    rng, act_rng = random.Random(99), random.Random(98)
    feasible = infeasible = 0
    for _ in range(320):
        profile, wset, aset, act, lat, pins, ties = multi_instance(rng)
        sizes = [act_rng.randint(1, 500) for _ in profile.layers]  # input elements: a peak-memory limit
        profile = dataclasses.replace(profile, layers=tuple(dataclasses.replace(l, act_elems=n)
                                                            for l, n in zip(profile.layers, sizes)))
        P = sum(l.params for l in profile.layers)
        M = sum(l.macs for l in profile.layers)
        kinds = [k for k in ("w", "b", "l") if rng.random() < 0.7] or ["b"]
        limits, caps = {}, {}
        if "w" in kinds:
            avg = rng.uniform(min(wset) - 0.5, max(wset) + 0.5)
            if rng.random() < 0.5:
                limits["avg_bits"], caps["w"] = avg, avg * P
            else:
                limits["megabytes"] = avg * P / 8 / 1e6
                caps["w"] = limits["megabytes"] * 1e6 * 8
        if "b" in kinds:
            wa = rng.uniform(min(wset) * min(aset) * 0.8, max(wset) * max(aset))
            limits["gbops"] = wa * M / 1e9
            caps["b"] = limits["gbops"] * 1e9
        if "l" in kinds:
            limits["latency_ms"] = caps["l"] = rng.uniform(0.3, 1.2) * len(profile.layers)
        if act_rng.random() < 0.4:
            caps["a"] = act_rng.uniform(0.3, 1.0) * max(sizes) * max(aset) / 8
            limits["act_kb"] = caps["a"] / 1e3
        spec = SolveSpec(bits=wset, a_bits=aset, act_omega=act, latency=lat, pins=pins, ties=ties, solver=solver)
        try:
            best = brute_force_multi(profile, wset, aset, act, lat, pins, ties, caps)
        except KeyError:
            continue
        except PinConflict:
            with pytest.raises(ConfigError, match="pinned to different widths"):
                solve(profile, Budget(**limits), spec)
            continue
        if best is None:
            with pytest.raises(InfeasibleBudgetError):
                solve(profile, Budget(**limits), spec)
            infeasible += 1
            continue
        plan = solve(profile, Budget(**limits), spec)
        feasible += 1
        assert plan.status == "Optimal" and plan.gap == 0.0
        assert math.isclose(plan.omega, best[0], rel_tol=REL_TOL[solver], abs_tol=0.0), (plan.assignment(), best)
        wa = plan.assignment()
        if "w" in caps:
            assert sum(l.params * wa[l.name][0] for l in profile.layers) <= _floor(caps["w"])
        if "b" in caps:
            assert sum(l.macs * wa[l.name][0] * wa[l.name][1] for l in profile.layers) <= _floor(caps["b"])
            assert plan.constraints["bops"]["slack"] >= 0
        if "a" in caps:
            assert plan.constraints["act_bytes"]["value"] <= caps["a"] and plan.constraints["act_bytes"]["slack"] >= 0
        assert set(wa.values()) <= {(w, a) for w in wset for a in aset}
    assert feasible >= 100 and infeasible >= 10, (feasible, infeasible)


def test_constraint_records_objective_and_json(tmp_path):
    profile = small_profile(n=6, seed=11)
    plan = solve(profile, Budget(avg_bits=4.5, gbops=5.0 * sum(l.macs for l in profile.layers) * 8 / 1e9))
    c = plan.constraints
    wbits = sum(l.params * l.w_bits for l in plan.layers)
    assert c["weight_bytes"]["value"] == wbits / 8 and c["weight_bytes"]["slack"] >= 0
    assert c["weight_bytes"]["limit"] == pytest.approx(c["weight_bytes"]["value"] + c["weight_bytes"]["slack"])
    macs = {l.name: l.macs for l in profile.layers}
    assert c["bops"]["value"] == sum(macs[l.name] * l.w_bits * l.a_bits for l in plan.layers) <= c["bops"]["limit"]
    d = plan.to_dict()
    assert d["objective"] == plan.omega and d["gap"] == 0.0 and d["candidates"] == [[2, 8], [4, 8], [8, 8]]
    assert Plan.load(plan.save(tmp_path / "p.json")) == plan
    d["objective"] = plan.omega * 2
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="objective"):
        Plan.load(tmp_path / "bad.json")
    only_bops = solve(profile, Budget(bops_ratio=0.5))
    assert only_bops.constraints["weight_bytes"]["limit"] is None and only_bops.constraints["bops"]["limit"] > 0


def test_infeasible_names_each_violated_limit():
    profile = small_profile(n=5, seed=12)
    pins = default_pins(profile)
    lo_bits = sum(l.params * pins.get(l.name, 2) for l in profile.layers)
    lo_bops = sum(l.macs * pins.get(l.name, 2) * 8 for l in profile.layers)
    with pytest.raises(InfeasibleBudgetError) as e:
        solve(profile, Budget(megabytes=lo_bits / 8e6 * 0.9, gbops=lo_bops / 1e9 * 0.5))
    msg = str(e.value)
    mb = float(re.search(r"smallest feasible budget is megabytes=([0-9.eE+-]+)", msg).group(1))
    gb = float(re.search(r"smallest feasible budget is gbops=([0-9.eE+-]+)", msg).group(1))
    assert lo_bits / 8e6 <= mb <= lo_bits / 8e6 * (1 + 1e-5) and lo_bops / 1e9 <= gb <= lo_bops / 1e9 * (1 + 1e-5)
    solve(profile, Budget(megabytes=mb, gbops=gb))  # the named values are feasible together
    with pytest.raises(InfeasibleBudgetError, match="gbops") as e:  # only the violated one is named
        solve(profile, Budget(avg_bits=8, gbops=lo_bops / 1e9 * 0.5))
    assert "avg_bits" not in str(e.value)


def test_jointly_infeasible_limits_name_the_least_value_under_the_others():
    """8-bit kernels are the fast ones: a tight size limit and a tight latency limit conflict."""
    profile = small_profile(n=4, seed=13)
    lat = {l.name: {(2, 8): 3.0, (4, 8): 2.0, (8, 8): 1.0} for l in profile.layers}
    budget = Budget(avg_bits=3.0, latency_ms=5.0)
    with pytest.raises(InfeasibleBudgetError, match="not together") as e:
        solve(profile, budget, spec=SolveSpec(latency=lat, pins={}))
    msg = str(e.value)
    ms = float(re.search(r"smallest feasible budget is latency_ms=([0-9.eE+-]+)", msg).group(1))
    avg = float(re.search(r"smallest feasible budget is avg_bits=([0-9.eE+-]+)", msg).group(1))
    plan = solve(profile, Budget(avg_bits=3.0, latency_ms=ms), spec=SolveSpec(latency=lat, pins={}))
    assert plan.constraints["latency_ms"]["value"] <= ms
    solve(profile, Budget(avg_bits=avg, latency_ms=5.0), spec=SolveSpec(latency=lat, pins={}))
    with pytest.raises(InfeasibleBudgetError):
        solve(profile, Budget(avg_bits=3.0, latency_ms=ms * 0.99), spec=SolveSpec(latency=lat, pins={}))
    with pytest.raises(ConfigError, match="latency table"):
        solve(profile, Budget(latency_ms=5.0))
    with pytest.raises(ConfigError, match="no row"):
        solve(profile, budget, spec=SolveSpec(latency={"layer0.conv": lat["layer0.conv"]}))


def test_regex_pins_pairs_and_graph_ties_show_in_the_plan():
    profile = small_profile(n=6, seed=14)
    profile = Profile(layers=profile.layers, bits=profile.bits, groups=(("layer1.conv", "layer2.conv"),),
                      fingerprints=profile.fingerprints)
    plan = solve(profile, Budget(ratio=0.5), spec=SolveSpec(pins={r"layer[0-5]\.conv": 4, "layer5.conv": (8, 8)}, ties="graph"))
    a = plan.assignment()
    assert all(a[f"layer{i}.conv"] == (4, 8) for i in range(5)) and a["layer5.conv"] == (8, 8)
    assert plan.pin_rules == {r"layer[0-5]\.conv": 4, "layer5.conv": (8, 8)}
    assert plan.pins["layer5.conv"] == (8, 8) and plan.pins["layer0.conv"] == 4
    assert plan.ties == (("layer1.conv", "layer2.conv"),)
    free = solve(profile, Budget(ratio=0.3), spec=SolveSpec(pins={}, ties="graph")).assignment()
    assert free["layer1.conv"] == free["layer2.conv"]
    for pins, match in (({"conv9.*": 4}, "conv9"), ({"layer[": 4}, "regular expression"), ({"fc": "8"}, "width"),
                        ({"layer1.conv": (8, 4)}, "candidate")):
        with pytest.raises(ConfigError, match=re.escape(match)):
            solve(profile, Budget(ratio=0.5), spec=SolveSpec(pins=pins))
    with pytest.raises(ConfigError, match="'graph'"):
        solve(profile, Budget(ratio=0.5), spec=SolveSpec(ties="shared"))


def test_activation_widths_need_activation_sensitivities():
    profile = small_profile(n=4, seed=15)
    with pytest.raises(ConfigError, match="activation sensitivities"):
        solve(profile, Budget(avg_bits=4), spec=SolveSpec(a_bits=(4, 8)))
    act = {l.name: {4: 1.0, 8: 0.0} for l in profile.layers}
    plan = solve(profile, Budget(avg_bits=8, bops_ratio=0.0), spec=SolveSpec(a_bits=(4, 8), act_omega=act, pins={}))
    assert {l.a_bits for l in plan.layers} == {4}  # the BOPs floor forces 4-bit activations
    with pytest.raises(ConfigError, match="act_omega"):
        solve(profile, Budget(avg_bits=4), spec=SolveSpec(a_bits=(4, 8), act_omega={"layer0.conv": {4: 1.0, 8: 0.0}}))


def test_profiled_activation_omega_is_used_when_it_covers_the_widths():
    rng = random.Random(21)
    base = small_profile(n=5, seed=21)
    act = {l.name: decreasing_omega(rng, (4, 8)) for l in base.layers}
    layers = tuple(dataclasses.replace(l, act_omega=act[l.name]) for l in base.layers)
    profile = dataclasses.replace(base, layers=layers, act_bits=(4, 8))
    budget = Budget(avg_bits=5, bops_ratio=0.4)
    implicit = solve(profile, budget, spec=SolveSpec(a_bits=(4, 8), pins={}))
    assert implicit.assignment() == solve(base, budget, spec=SolveSpec(a_bits=(4, 8), act_omega=act, pins={})).assignment()
    assert implicit.omega == pytest.approx(sum(l.omega[w] + act[l.name][a] for l, (w, a) in
                                               zip(layers, (implicit.assignment()[l.name] for l in layers))))
    with pytest.raises(ConfigError, match="only \\[4, 8\\].*--a-bits 2,8"):
        solve(profile, budget, spec=SolveSpec(a_bits=(2, 8), pins={}))


def test_peak_activation_limit_removes_wide_inputs_and_names_the_least_feasible():
    base = small_profile(n=4, seed=22)
    sizes = [4000, 1000, 2000, 500]
    profile = dataclasses.replace(base, layers=tuple(dataclasses.replace(l, act_elems=n)
                                                     for l, n in zip(base.layers, sizes)))
    act = {l.name: {4: 1.0, 8: 0.0} for l in profile.layers}
    plan = solve(profile, Budget(act_kb=2.0), spec=SolveSpec(a_bits=(4, 8), act_omega=act, pins={}))
    assert [l.a_bits for l in plan.layers] == [4, 8, 8, 8]  # 4000 inputs at 8 bits are 4 kB
    assert plan.constraints["act_bytes"] == {"limit": 2000.0, "value": 2000.0, "slack": 0.0}
    assert plan.budget["act_kb"] == 2.0
    with pytest.raises(InfeasibleBudgetError, match=r"act_kb=1\.9 is infeasible.*act_kb=2\b.*layer0\.conv"):
        solve(profile, Budget(act_kb=1.9), spec=SolveSpec(a_bits=(4, 8), act_omega=act, pins={}))
    fit = uniform_plans_within(profile, Budget(act_kb=3.0), spec=SolveSpec(a_bits=(4, 8), pins={}, act_omega=act))
    assert len(fit) == len(profile.bits) and all(set(u.assignment().values()) == {(u.layers[0].w_bits, 4)} for u in fit)
    with pytest.raises(ConfigError, match="input size.*hawq profile"):
        solve(base, Budget(act_kb=2.0), spec=SolveSpec(a_bits=(4, 8), act_omega=act, pins={}))


def test_ties_in_omega_go_to_the_wider_candidate():
    """A layer with Ω 0 at every width (a trace clamped to 0) stays wide when the budget allows."""
    om = [{2: 0.0, 4: 0.0, 8: 0.0}, {2: 5.0, 4: 1.0, 8: 0.0}, {2: 3.0, 4: 2.0, 8: 0.0}]
    profile = make_profile([100, 100, 100], om, (2, 4, 8))
    roomy = solve(profile, Budget(avg_bits=8), spec=SolveSpec(pins={}))
    assert [l.w_bits for l in roomy.layers] == [8, 8, 8] and roomy.omega == 0.0
    tight = solve(profile, Budget(avg_bits=6), spec=SolveSpec(pins={}))  # the free layer gives way first
    assert [l.w_bits for l in tight.layers] == [2, 8, 8] and tight.omega == 0.0
    mid = solve(profile, Budget(avg_bits=5), spec=SolveSpec(pins={}))
    assert [l.w_bits for l in mid.layers] == [2, 4, 8] and mid.omega == 1.0


def test_alternatives_are_the_next_best_plans_that_change_enough_weights():
    rng = random.Random(16)
    for _ in range(6):
        profile, cand, pins, ties = random_instance(rng)
        budget, limit = random_budget(rng, profile, cand, pins, ties)
        if brute_force(profile, cand, pins, ties, limit) is None:
            continue
        plans = alternatives(profile, budget, spec=SolveSpec(bits=cand, pins=pins, ties=ties), count=2, min_change=0.2)
        total = sum(l.params for l in profile.layers)
        for i, p in enumerate(plans):
            assert sum(l.params * l.w_bits for l in p.layers) <= limit
            for q in plans[:i]:
                changed = sum(l.params for l, m in zip(p.layers, q.layers) if l.w_bits != m.w_bits)
                assert changed >= 0.2 * total
        if len(plans) > 1:  # the first alternative is the best plan that far from the optimum
            names = [l.name for l in profile.layers]
            opt = plans[0].assignment()
            best = None
            for combo in itertools.product(*([[pins[n]] if n in pins else list(cand) for n in names])):
                w = dict(zip(names, combo))
                if any(len({w[n] for n in t}) > 1 for t in ties) or \
                        sum(l.params * w[l.name] for l in profile.layers) > limit:
                    continue
                if sum(l.params for l in profile.layers if w[l.name] != opt[l.name][0]) < math.ceil(0.2 * total):
                    continue
                obj = math.fsum(l.omega[w[l.name]] for l in profile.layers)
                best = obj if best is None else min(best, obj)
            assert math.isclose(plans[1].omega, best, rel_tol=1e-9)
            assert plans[1].label.endswith("-alt1")


def test_uniform_plans_within_and_sweep():
    profile = small_profile(bits=(2, 3, 4, 8), n=6, seed=17)
    u4 = uniform_plan(profile, 4)
    fit = uniform_plans_within(profile, Budget(megabytes=u4.weight_bytes / 1e6))
    assert [p.label for p in fit] == ["uniform-w2", "uniform-w3", "uniform-w4"]
    assert all(p.constraints["weight_bytes"]["slack"] >= 0 for p in fit)
    plans = sweep(profile, spec=SolveSpec(bits=(2, 4, 8)), points=7)
    sizes = [p.budget["megabytes"] for p in plans]
    assert sizes == sorted(sizes) and len(plans) == 7
    assert all(p.weight_bytes <= p.budget["weight_bytes_limit"] + 1 for p in plans)
    assert [p.omega for p in plans] == sorted((p.omega for p in plans), reverse=True)
    with pytest.raises(ConfigError, match="drop megabytes"):
        sweep(profile, budget=Budget(megabytes=1.0))


@pytest.mark.parametrize("limit", [{"megabytes": 1e308}, {"gbops": 1e300}, {"avg_bits": 1e305},
                                   {"megabytes": 1e308, "gbops": 1e300}])
def test_a_huge_finite_budget_limits_nothing(limit):
    profile = small_profile()
    plan = solve(profile, Budget(**limit), spec=SolveSpec(pins={}))
    assert set(plan.assignment().values()) == {(8, 8)} and plan.status == "Optimal"


# ------------------------------------------------------------------ candidates a target runs

def kinds_profile(seed: int = 0) -> Profile:
    """Two convs and three Linears (K a multiple of 64 and N even, the INT4 blocks TensorRT takes,
    except `fc_odd` with K = 40), Ω falling with the width."""
    rng = random.Random(seed)
    shapes = [("conv1", "Conv2d", (16, 3, 3, 3)), ("conv2", "Conv2d", (32, 16, 3, 3)), ("fc1", "Linear", (96, 128)),
              ("fc_odd", "Linear", (64, 40)), ("fc2", "Linear", (10, 64))]
    layers = tuple(LayerProfile(name=n, kind=k, weight_shape=s, params=math.prod(s), macs=math.prod(s), trace=1.0,
                                trace_se=0.0, probes=1, sq_error={}, omega=decreasing_omega(rng, (2, 4, 8)))
                   for n, k, s in shapes)
    return Profile(layers=layers, bits=(2, 4, 8), fingerprints={"weights": "w", "data": "d", "settings": "s"})


def test_tensorrt_plans_hold_only_what_it_runs_and_are_optimal_among_them():
    """SolveSpec(target="tensorrt"): convs at W8A8, 4-bit Linears (K % 64 = 0) as INT4 weight-only,
    no INT2; the ILP's optimum equals brute force over exactly those candidates at every size."""
    from hawq.target import runs_as
    prof = kinds_profile()
    spec = SolveSpec(target="tensorrt", pins={})
    legal = {"conv1": [(8, 8)], "conv2": [(8, 8)], "fc1": [(4, 32), (8, 8)], "fc_odd": [(8, 8)], "fc2": [(4, 32), (8, 8)]}
    lo = sum(l.params * min(w for w, _ in legal[l.name]) for l in prof.layers)
    hi = sum(l.params * 8 for l in prof.layers)
    for limit in range(lo, hi + 1, (hi - lo) // 7):
        plan = solve(prof, Budget(megabytes=limit / 8e6), spec)
        assert plan.target == "tensorrt" and set(plan.candidates) == {(4, 32), (8, 8)}
        wa = plan.assignment()
        for l in prof.layers:
            assert wa[l.name] in legal[l.name] and runs_as("tensorrt", l.kind, l.weight_shape, wa[l.name])[1] == ""
        best = min(math.fsum(l.omega[c[0]] for l, c in zip(prof.layers, combo))
                   for combo in itertools.product(*legal.values())
                   if sum(l.params * c[0] for l, c in zip(prof.layers, combo)) <= limit)
        assert plan.omega == pytest.approx(best, rel=1e-9, abs=1e-12)
    # without a target every layer takes every candidate, W2 convs included
    assert set(solve(prof, Budget(ratio=0.0), SolveSpec(pins={})).assignment().values()) == {(2, 8)}


def test_tensorrt_uniform_plan_is_the_one_it_runs_and_sizes_below_it_are_infeasible():
    prof = kinds_profile()
    spec = SolveSpec(target="tensorrt", pins={})
    uni = uniform_plan(prof, 4, spec)
    assert uni.assignment() == {"conv1": (8, 8), "conv2": (8, 8), "fc1": (4, 32), "fc_odd": (8, 8), "fc2": (4, 32)}
    assert uniform_plan(prof, 2, spec).assignment() == {n: (8, 8) for n in uni.assignment()}
    # W2 and W4 differ only on the Linears; W2 runs as W8 everywhere, the same plan as W8, so it is listed once
    assert [p.label for p in uniform_plans_within(prof, Budget(avg_bits=8), spec)] == ["uniform-w4", "uniform-w8"]
    with pytest.raises(InfeasibleBudgetError, match=r"smallest feasible budget is megabytes=.* that tensorrt runs"):
        solve(prof, Budget(megabytes=(uni.weight_bytes - 1) / 1e6), spec)
    assert solve(prof, Budget(megabytes=uni.weight_bytes / 1e6), spec).assignment() == uni.assignment()


def test_tensorrt_pins_and_ties_it_cannot_run_are_refused():
    prof = kinds_profile()
    with pytest.raises(ConfigError, match=r"pin conv1=4: tensorrt does not run .* not Conv2d\); pin it to W8"):
        solve(prof, Budget(avg_bits=8), SolveSpec(target="tensorrt", pins={"conv1": 4}))
    plan = solve(prof, Budget(avg_bits=8), SolveSpec(target="tensorrt", pins={"fc1": 4}))
    assert plan.assignment()["fc1"] == (4, 32) and plan.layers[2].pinned
    # a conv tied to a Linear shares the one candidate both run
    tied = solve(prof, Budget(avg_bits=8), SolveSpec(target="tensorrt", pins={}, ties=[["conv2", "fc1"]]))
    assert tied.assignment()["fc1"] == (8, 8)
    with pytest.raises(ConfigError, match="target=.* must be one of"):
        SolveSpec(target="tflite")
    low = dataclasses.replace(prof, bits=(2, 4), layers=tuple(dataclasses.replace(l, omega={2: l.omega[2], 4: l.omega[4]})
                                                              for l in prof.layers))
    with pytest.raises(ConfigError, match=r"tensorrt runs some layers only at \[8\] bits.*--bits 2,4,8"):
        solve(low, Budget(avg_bits=8), SolveSpec(target="tensorrt", pins={}))


def test_plan_keeps_its_target(tmp_path):
    plan = solve(kinds_profile(), Budget(avg_bits=6), SolveSpec(target="tensorrt", pins={}))
    loaded = Plan.load(plan.save(tmp_path / "p.json"))
    assert loaded == plan and loaded.target == "tensorrt"
    d = json.loads((tmp_path / "p.json").read_text())
    with pytest.raises(ArtifactError, match="target"):
        Plan.from_dict({**d, "target": "tflite"})
    assert "target" not in solve(kinds_profile(), Budget(avg_bits=6), SolveSpec(pins={})).to_dict()
