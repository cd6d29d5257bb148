"""The quadratic loss model: cross-layer terms in the profile, and the ILP that optimises them,
against brute force and against the exact terms of a small network."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hawq import solver as S
from hawq.solver import problem
from hawq.errors import ArtifactError, InfeasibleBudgetError
from hawq.perturbation import perturbation_terms
from hawq.graph import fold_bn
from hawq.sensitivity import Interaction, Profile, profile
from hawq.solver import Plan, SolveSpec, solve, uniform_plan
from test_solver import REL_TOL, SOLVERS, random_budget, random_instance


def with_interactions(prof: Profile, rng: random.Random, density: float = 1.0) -> Profile:
    """The profile plus random cross terms of either sign, about the size of the layers' Ω."""
    names, nb = prof.names, len(prof.bits)
    scale = [max(l.omega.values()) for l in prof.layers]
    its = []
    for i, j in itertools.combinations(range(len(names)), 2):
        if rng.random() < density:
            s = math.sqrt(scale[i] * scale[j])
            its.append(Interaction(names[i], names[j],
                                   tuple(tuple(rng.uniform(-0.5, 1.0) * s for _ in range(nb)) for _ in range(nb))))
    return dataclasses.replace(prof, interactions=tuple(its))


def quadratic_brute_force(prof: Profile, cand, pins, ties, limit_bits: int, keep=lambda w: True):
    """Least Σ Ω + Σ cross terms over every assignment obeying pins, ties, the bit limit and `keep`."""
    names = prof.names
    best = None
    for combo in itertools.product(*[[pins[n]] if n in pins else list(cand) for n in names]):
        w = dict(zip(names, combo))
        if any(len({w[n] for n in t}) > 1 for t in ties) or sum(l.params * w[l.name] for l in prof.layers) > limit_bits \
                or not keep(w):
            continue
        obj = math.fsum([l.omega[w[l.name]] for l in prof.layers] + [prof.cross_omega(w)])
        if best is None or obj < best[0]:
            best = (obj, w)
    return best


@pytest.mark.parametrize("solver", SOLVERS)
def test_quadratic_ilp_matches_brute_force(solver):
    rng = random.Random(77)
    feasible = differs = 0
    for _ in range(120):
        base, cand, pins, ties = random_instance(rng)
        prof = with_interactions(base, rng, density=rng.choice([0.3, 1.0]))
        budget, limit = random_budget(rng, prof, cand, pins, ties)
        best = quadratic_brute_force(prof, cand, pins, ties, limit)
        if best is None:
            with pytest.raises(InfeasibleBudgetError):
                solve(prof, budget, spec=SolveSpec(bits=cand, pins=pins, ties=ties, solver=solver))
            continue
        feasible += 1
        plan = solve(prof, budget, spec=SolveSpec(bits=cand, pins=pins, ties=ties, solver=solver))
        w = {l.name: l.w_bits for l in plan.layers}
        assert plan.status == "Optimal" and plan.solver == solver
        assert plan.loss_model == ("quadratic" if prof.interactions else "additive")
        assert plan.cross_omega == pytest.approx(prof.cross_omega(w), rel=1e-12, abs=1e-300)
        scale = max(abs(best[0]), max(max(l.omega.values()) for l in prof.layers))
        assert abs(plan.omega - best[0]) <= REL_TOL[solver] * 10 * scale, (plan.omega, best)
        assert sum(l.params * w[l.name] for l in prof.layers) <= limit
        assert all(w[n] == b for n, b in pins.items()) and all(len({w[n] for n in t}) == 1 for t in ties)
        additive = solve(base, budget, spec=SolveSpec(bits=cand, pins=pins, ties=ties, solver=solver))
        differs += additive.assignment() != plan.assignment()
    # the cross terms must change the optimum on a good share of instances, or this tests nothing
    assert feasible >= 60 and differs >= 10, (feasible, differs)


def test_quadratic_alternatives_match_brute_force():
    """Each alternative of the quadratic model is the least Σ Ω + cross terms among the plans that
    change enough weights against every plan before it (the exclusions)."""
    rng = random.Random(91)
    checked = 0
    for _ in range(40):
        base, cand, pins, ties = random_instance(rng)
        prof = with_interactions(base, rng, density=rng.choice([0.3, 1.0]))
        budget, limit = random_budget(rng, prof, cand, pins, ties)
        if quadratic_brute_force(prof, cand, pins, ties, limit) is None:
            continue
        plans = S.alternatives(prof, budget, spec=SolveSpec(bits=cand, pins=pins, ties=ties), count=2, min_change=0.2)
        total = sum(l.params for l in prof.layers)
        for i, plan in enumerate(plans[1:], 1):
            best = quadratic_brute_force(prof, cand, pins, ties, limit, keep=lambda w: all(
                sum(l.params for l in prof.layers if w[l.name] != q.assignment()[l.name][0]) >= math.ceil(0.2 * total)
                for q in plans[:i]))[0]
            scale = max(abs(best), max(max(l.omega.values()) for l in prof.layers))
            assert abs(plan.omega - best) <= REL_TOL["highs"] * 10 * scale, (i, plan.omega, best)
            checked += 1
    assert checked >= 15, checked


def test_cross_terms_steer_the_plan_away_from_compounding_layers():
    """Layers that each tolerate 2 bits but compound when two are at 2 bits: the additive model
    puts two of three at 2 bits (and one at 8), the quadratic one all three at 4."""
    rng = random.Random(0)
    base, *_ = random_instance(rng)
    layers = tuple(dataclasses.replace(l, params=100, omega={2: 1.0, 3: 0.95, 4: 0.9, 8: 0.0}) for l in base.layers[:3])
    prof = dataclasses.replace(base, layers=layers, interactions=())
    budget = S.Budget(avg_bits=4)
    assert sorted(l.w_bits for l in solve(prof, budget, spec=SolveSpec(bits=(2, 4, 8), pins={})).layers) == [2, 2, 8]
    both_at_2 = tuple(tuple(5.0 if (i, k) == (0, 0) else 0.0 for k in range(4)) for i in range(4))
    pairs = tuple(Interaction(a, b, both_at_2) for a, b in itertools.combinations(prof.names, 2))
    quad = solve(dataclasses.replace(prof, interactions=pairs), budget, spec=SolveSpec(bits=(2, 4, 8), pins={}))
    assert [l.w_bits for l in quad.layers] == [4, 4, 4]
    assert quad.loss_model == "quadratic" and quad.cross_omega == 0.0 and quad.omega == pytest.approx(2.7)


def test_too_many_pair_columns_fall_back_to_the_additive_model(monkeypatch, caplog):
    rng = random.Random(3)
    base, cand, pins, ties = random_instance(rng)
    prof = with_interactions(base, rng)
    budget = S.Budget(avg_bits=4)
    monkeypatch.setattr(problem, "MAX_PAIR_COLUMNS", 0)
    with caplog.at_level(logging.WARNING, logger="hawq.solver"):
        plan = solve(prof, budget, spec=SolveSpec(bits=(2, 4, 8), pins={}))
    assert plan.loss_model == "additive" and plan.cross_omega == 0.0
    assert "MAX_PAIR_COLUMNS=0" in caplog.text and "additive" in caplog.text
    assert plan.assignment() == solve(base, budget, spec=SolveSpec(bits=(2, 4, 8), pins={})).assignment()


def test_profile_and_plan_round_trip_their_cross_terms(tmp_path):
    rng = random.Random(5)
    base, *_ = random_instance(rng)
    prof = with_interactions(base, rng)
    assert Profile.load(prof.save(tmp_path / "p.json")) == prof
    plan = uniform_plan(prof, 4)
    assert plan.loss_model == "quadratic"
    w = {l.name: l.w_bits for l in plan.layers}
    assert plan.omega == pytest.approx(sum(l.omega for l in plan.layers) + prof.cross_omega(w), rel=1e-12)
    assert Plan.load(plan.save(tmp_path / "plan.json")) == plan


@pytest.mark.parametrize("bad", [
    lambda n, t: Interaction(n[1], n[0], t),  # out of order
    lambda n, t: Interaction(n[0], "nope", t),  # unknown layer
    lambda n, t: Interaction(n[0], n[1], t[:1]),  # wrong shape
    lambda n, t: Interaction(n[0], n[1], ((math.nan,) * len(t),) * len(t)),  # not finite
])
def test_malformed_interactions_are_refused(bad):
    rng = random.Random(6)
    base, *_ = random_instance(rng)
    terms = tuple(tuple(0.0 for _ in base.bits) for _ in base.bits)
    with pytest.raises(ArtifactError, match="interaction"):
        dataclasses.replace(base, interactions=(bad(base.names, terms),))
    d = dataclasses.replace(base).to_dict()
    d["interactions"] = [dataclasses.asdict(bad(base.names, terms))]
    with pytest.raises(ArtifactError, match="malformed profile"):
        Profile.from_dict(d)


def test_perturbed_cross_profile_holds_the_exact_gauss_newton_terms():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    batches = [(torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))) for _ in range(2)]
    bits = (2, 4, 8)
    prof = profile(model, F.cross_entropy, batches, bits, sensitivity="perturbed_cross")
    plain = profile(model, F.cross_entropy, batches, bits, sensitivity="perturbed")
    assert [l.omega for l in prof.layers] == [l.omega for l in plain.layers]
    assert plain.interactions == () and len(prof.interactions) == 1 and prof.measured
    folded = fold_bn(model).eval()
    mods = dict(folded.named_modules())
    terms = perturbation_terms(folded, F.cross_entropy, batches, {n: mods[n] for n in prof.names}, bits, curvature="ggn")
    for wa, wb in itertools.product(bits, bits):
        w = dict(zip(prof.names, (wa, wb)))
        exact = terms.predict(w) - terms.predict(w, cross=False)  # ½ (Δ_aᵀGΔ_b + Δ_bᵀGΔ_a)
        assert prof.cross_omega(w) == pytest.approx(exact, rel=1e-6, abs=1e-12)
    assert "forward-mode products" in prof.effort and prof.settings["cross_seconds"] >= 0
