"""The one-hot ILP over a Problem: its formulation (with the quadratic model's pair columns), the
exclusions that make alternatives, the infeasibility messages, and widening among equal optima.

Unit u takes one candidate c from its allowed set: binary x[u,c] with Σ_c x[u,c] = 1. The plan
minimises Σ Ω·x subject to each limit the budget gives, all optional and all at once:

    weight bits   Σ params·w_bits            ≤ limit   (megabytes, avg_bits or ratio)
    BOPs          Σ MACs·w_bits·a_bits       ≤ limit   (gbops or bops_ratio)
    latency       Σ table[layer][(w, a)]     ≤ limit   (latency_ms, a measured lookup table)

Weight bits and BOPs are integers, so those limits and the feasibility checks are exact (for
totals under 5e8; above that the limit is tightened by 1e-9 of itself to absorb CBC's tolerance).

A profile with cross-layer terms (sensitivity "perturbed_cross") makes the objective quadratic:
Σ Ω·x + Σ_{u<v} q_uv(c, d)·x[u,c]·x[v,d], linearised exactly by quadratic.py's product columns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from ..errors import ConfigError, InfeasibleBudgetError
from .mip import BACKENDS, LinearModel, SolverCrash, run_cbc, solver_backend
from .problem import Problem
from .quadratic import add_products, residuals
from .sizes import FLOAT_TOL, INTEGER_RESOURCES, Cand, ceil_sig, floor_bits, within
from .spec import fmt_cands

if TYPE_CHECKING:
    from .budget import Budget

EXACT_BELOW = 5e8  # integer rows below this are held exactly (CBC's 1e-10 tolerance stays < 0.05)


@dataclass(frozen=True)
class Exclusion:
    """Exclude plans close to an earlier one: Σ_u params_u·[u keeps prev[u]] ≤ keep_params.

    prev: per unit, the candidate the earlier plan chose.
    keep_params: most parameters a new plan may leave at the earlier plan's choice.
    """

    prev: tuple[Cand, ...]
    keep_params: int


def build_model(p: Problem, caps: Mapping[str, float], *, objective: str | None, cuts: Sequence[Exclusion],
                phase1: bool = False) -> tuple[LinearModel, dict[tuple[int, int], int]] | None:
    """Build the one-hot ILP over the free units: (model, column of x[u, k]), or None when a limit
    is below even its least possible total.

    The objective is Σ Ω less each unit's least Ω, divided by the largest such difference (Ω spans
    1e-8..1e2). Each limit row has every unit's least value taken out and is scaled to a
    right-hand side of about 1; integer rows keep half a unit of room, which their integer totals
    cannot use.

    p: the validated problem.
    caps: resource → limit (bits, BOPs, ms).
    objective: None minimises Σ Ω; a resource name minimises that resource instead.
    cuts: plans to stay away from (see Exclusion).
    phase1: minimise the total violation of the rows instead (each row gets a slack ≥ 0): a model
        that is always feasible, with optimum 0 exactly when the real one is feasible.
    With cross-layer terms (p.pairs) and the Ω objective, each pair of free units adds its product
    columns (quadratic.py), and HiGHS solves the model without presolve (see run_highs); a pair
    with one unit fixed adds to the other's cost.
    """
    n = len(p.units)
    free = [u for u in range(n) if len(p.allowed[u]) > 1]
    cost = [list(row) for row in (p.cost if objective is None else p.coef[objective])]
    blocks = {} if objective is not None or phase1 else residuals(p, cost)
    base = {u: min(cost[u]) for u in free}
    scale = max([c - base[u] for u in free for c in cost[u]]
                + [abs(t) for m in blocks.values() for row in m for t in row], default=0.0) or 1.0
    lp = LinearModel()
    x = {(u, k): lp.col(0.0 if phase1 else (cost[u][k] - base[u]) / scale)
         for u in free for k in range(len(p.allowed[u]))}
    for u in free:
        lp.row([(x[u, k], 1.0) for k in range(len(p.allowed[u]))], 1.0, 1.0)
    lp.presolve = not add_products(lp, p, x, blocks, scale)

    def row(terms: list[tuple[int, float]], rhs: float) -> None:
        if phase1:
            terms = terms + [(lp.col(1.0, 0.0, math.inf, False), -1.0)]
        lp.row(terms, -math.inf, rhs)

    for r, cap in caps.items():
        if r == objective:
            continue
        rows = p.coef[r]
        least = {u: min(rows[u]) for u in range(n)}
        if r in INTEGER_RESOURCES:
            rhs = floor_bits(cap) - sum(least.values())
            sc = max(rhs, 1)
            rhs_f = (rhs + 0.5) / sc if floor_bits(cap) < EXACT_BELOW else rhs * (1 - 1e-9) / sc
        else:
            rhs = cap + FLOAT_TOL * max(1.0, abs(cap)) - math.fsum(least.values())
            sc = max(rhs, 1e-12)
            rhs_f = rhs / sc
        if rhs < 0:
            return None
        row([(j, (rows[u][k] - least[u]) / sc) for (u, k), j in x.items() if rows[u][k] != least[u]], rhs_f)
    for cut in cuts:
        keep = cut.keep_params - sum(p.unit_params(u) for u in range(n) if u not in base and p.allowed[u][0] == cut.prev[u])
        if keep < 0:
            return None
        sc = max(keep, 1)
        row([(x[u, p.allowed[u].index(cut.prev[u])], p.unit_params(u) / sc) for u in free
             if cut.prev[u] in p.allowed[u]], (keep + 0.5) / sc)
    return lp, x


def solve_ilp(p: Problem, caps: Mapping[str, float], *, objective: str | None = None, cuts: Sequence[Exclusion] = (),
         time_limit: float | None = None, solver: str = "auto") -> tuple[list[Cand], str, float] | None:
    """Solve the one-hot ILP; (per unit its candidate, status, relative gap), None if infeasible.

    p: the validated problem.
    caps: resource → limit (bits, BOPs, ms).
    objective: None minimises Σ Ω; a resource name minimises that resource instead.
    cuts: plans to stay away from (see Exclusion).
    time_limit: solver wall-clock limit in seconds, or None.
    solver: "auto", "highs" or "cbc" (see solver_backend).
    """
    n = len(p.units)
    built = build_model(p, caps, objective=objective, cuts=cuts)
    if built is None:
        return None
    lp, x = built
    if not x:
        chosen = [p.allowed[u][0] for u in range(n)]
        return (chosen, "Optimal", 0.0) if fits(p, chosen, caps) and clear_of(p, chosen, cuts) else None
    run = BACKENDS[solver_backend(solver, len({u for u, _ in x}), p.quadratic)]
    try:
        res = run(lp, time_limit)
    except SolverCrash:
        # CBC 2.10 with preprocessing off crashes when its bound tightening proves a model
        # infeasible ("Problem is infeasible - tightenPrimalBounds!"); confirm infeasibility on the
        # phase-1 model, which is always feasible, and report anything else.
        phase1 = build_model(p, caps, objective=objective, cuts=cuts, phase1=True)
        assert phase1 is not None
        check = run_cbc(phase1[0], time_limit)
        if check.status == "Optimal" and math.fsum(c * v for c, v in zip(phase1[0].cost, check.values)) > 1e-9:
            return None
        raise ConfigError("the CBC solver failed on a feasible model; please report this with the profile") from None
    if res.status == "Infeasible":
        return None
    if res.status == "NoSolution":
        raise ConfigError(f"the solver found no plan within time_limit={time_limit}s; raise the time limit")
    pick = {u: max(range(len(p.allowed[u])), key=lambda k: res.values[x[u, k]]) for u in {u for u, _ in x}}
    chosen = [p.allowed[u][pick[u]] if u in pick else p.allowed[u][0] for u in range(n)]
    return chosen, res.status, res.gap


def clear_of(p: Problem, chosen: Sequence[Cand], cuts: Sequence[Exclusion]) -> bool:
    """Whether a per-unit choice keeps at most each cut's parameters at the cut plan's choice.

    p: the validated problem.
    chosen: per unit, its candidate.
    cuts: plans to stay away from.
    """
    return all(sum(p.unit_params(u) for u, c in enumerate(chosen) if c == cut.prev[u]) <= cut.keep_params
               for cut in cuts)


def fits(p: Problem, chosen: Sequence[Cand], caps: Mapping[str, float]) -> bool:
    """Whether a per-unit choice satisfies every limit (exactly for integer resources).

    p: the validated problem.
    chosen: per unit, its candidate.
    caps: resource → limit.
    """
    for r, cap in caps.items():
        rows = p.coef[r]
        total = [rows[u][p.allowed[u].index(c)] for u, c in enumerate(chosen)]
        if not within(r, sum(total) if r in INTEGER_RESOURCES else math.fsum(total), cap):
            return False
    return True


def per_layer(p: Problem, chosen: Sequence[Cand]) -> dict[str, Cand]:
    """Layer name → candidate from a per-unit choice.

    p: the validated problem.
    chosen: per unit, its candidate.
    """
    out = {}
    for members, c in zip(p.units, chosen):
        out.update({p.profile.layers[i].name: c for i in members})
    return {l.name: out[l.name] for l in p.profile.layers}


def _pinned_text(p: Problem) -> str:
    """"conv1=8, fc=8" or "none".

    p: the validated problem.
    """
    return ", ".join(f"{n}={v}" for n, v in p.pins.items()) or "none"


def check_feasible(p: Problem, budget: Budget, caps: Mapping[str, float]) -> None:
    """InfeasibleBudgetError naming each limit below the least any plan can reach.

    p: the validated problem.
    budget: the budget asked for.
    caps: resource → limit.
    """
    bad = []
    for r, cap in caps.items():
        lo = p.lo(r)
        if not within(r, lo, cap):
            kind = budget.unit_of(r)
            bad.append(f"budget {kind}={getattr(budget, kind):g} is infeasible; the smallest feasible budget is "
                       f"{kind}={ceil_sig(budget.value_at(r, lo, p))!r}")
    if bad:
        raise InfeasibleBudgetError(
            "; ".join(bad) + f" (every free layer at its cheapest candidate of {fmt_cands(p.cands)}"
            + (f" that {p.target} runs on it" if p.target else "") + f"; pinned: "
            f"{_pinned_text(p)}); raise the budget, add a lower candidate bit width, or pin fewer layers")


def jointly_infeasible(p: Problem, budget: Budget, caps: Mapping[str, float],
                        solver: str = "auto") -> InfeasibleBudgetError:
    """The error for limits each reachable alone but not together: per limit, the least value that
    the other limits allow (found by minimising that resource under the others).

    p: the validated problem.
    budget: the budget asked for.
    caps: resource → limit.
    """
    parts = []
    for r in caps:
        kind = budget.unit_of(r)
        others = {k: v for k, v in caps.items() if k != r}
        res = solve_ilp(p, others, objective=r, solver=solver) if others else None
        if res is None:
            parts.append(f"{kind}={getattr(budget, kind):g}: no value fits the other limits")
            continue
        rows = p.coef[r]
        total = sum(rows[u][p.allowed[u].index(c)] for u, c in enumerate(res[0]))
        parts.append(f"{kind}={getattr(budget, kind):g}: with the other limits the smallest feasible budget is "
                     f"{kind}={ceil_sig(budget.value_at(r, total, p))!r}")
    return InfeasibleBudgetError("the limits are feasible one at a time but not together; " + "; ".join(parts)
                                 + "; raise one of them")


def solve_checked(p: Problem, budget: Budget, caps: Mapping[str, float], *, cuts: Sequence[Exclusion] = (),
           time_limit: float | None = None, solver: str = "auto") -> tuple[list[Cand], str, float] | None:
    """Solve and check the plan against every limit; None if the cuts leave no plan.

    p: the validated problem.
    budget: the budget asked for.
    caps: resource → limit.
    cuts: plans to stay away from.
    time_limit: solver limit in seconds, or None.
    solver: "auto", "highs" or "cbc".
    """
    res = solve_ilp(p, caps, cuts=cuts, time_limit=time_limit, solver=solver)
    if res is None:
        if cuts:
            return None
        raise jointly_infeasible(p, budget, caps, solver)
    if not fits(p, res[0], caps):  # guard against solver tolerances
        raise InfeasibleBudgetError("the solver returned a plan over a limit; raise the budget slightly")
    return widen_ties(p, res[0], caps, cuts), res[1], res[2]


def widen_ties(p: Problem, chosen: Sequence[Cand], caps: Mapping[str, float],
                cuts: Sequence[Exclusion] = ()) -> list[Cand]:
    """Among plans of equal objective, the wider: each unit whose candidate ties in the objective
    with a wider one (a layer whose trace is clamped to 0 has the same Ω at every width) takes the
    widest tied candidate that keeps every limit and cut. The objective does not change.

    p: the validated problem.
    chosen: per unit, its candidate (an optimum).
    caps: resource → limit.
    cuts: plans to stay away from.
    """
    chosen = list(chosen)
    for u, al in enumerate(p.allowed):
        value = p.unit_value(chosen, u, chosen[u])
        for k in sorted((k for k, c in enumerate(al) if c > chosen[u]), key=al.__getitem__, reverse=True):
            trial = chosen[:u] + [al[k]] + chosen[u + 1:]
            if p.unit_value(chosen, u, al[k]) == value and fits(p, trial, caps) and clear_of(p, trial, cuts):
                chosen = trial
                break
    return chosen
