"""The solver's verbs, each taking one SolveSpec: solve (the optimum under a budget), alternatives
(the next-best plans that differ in many weights), sweep (the optimum along one resource),
uniform_plan / uniform_plans_within (the baselines a mixed plan must beat) and fixed_plan (widths
chosen elsewhere, with the same records)."""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import ConfigError, InfeasibleBudgetError
from ..target import runs_as
from .budget import Budget
from .ilp import Exclusion, check_feasible, fits, jointly_infeasible, per_layer, solve_checked, solve_ilp
from .mip import solver_backend
from .plan import LayerChoice, Plan, profile_fingerprint
from .problem import Problem, build_problem, cap_activations
from .sizes import GIGA, MB, Cand, avg_bits_of, constraint_records, is_int, plan_weight_bytes, totals, widths_of, within
from .spec import SolveSpec, act_bits, fmt_cands

if TYPE_CHECKING:
    from ..sensitivity import Profile

SWEEP_AXES = {"weight": "weight_bits", "bops": "bops"}


def make_plan(p: Problem, wa: Mapping[str, Cand], *, caps: Mapping[str, float], budget: Budget | None,
              record: dict[str, Any], status: str, gap: float | None, seconds: float, label: str,
              solver: str = "") -> Plan:
    """Assemble a Plan from chosen widths; totals computed exactly.

    p: the validated problem (profile, pins, ties, Ω).
    wa: layer name → (w_bits, a_bits), every layer.
    caps: resource → limit, for the constraint records.
    budget: the budget asked for (its act_kb limit is recorded too), or None.
    record: the plan's "budget" field.
    status: solver status string.
    gap: relative optimality gap, or None.
    seconds: solve wall time.
    label: plan label.
    solver: the MIP backend that proved it ("" when not solved).
    """
    profile = p.profile
    layers = tuple(LayerChoice(l.name, wa[l.name][0], wa[l.name][1], int(l.params), float(p.omega[l.name][wa[l.name]]),
                               l.name in p.pins) for l in profile.layers)
    cross = profile.cross_omega({n: c[0] for n, c in wa.items()}) if p.quadratic else 0.0
    caps = {**caps, **(budget.act_cap() if budget is not None else {})}
    return Plan(layers=layers, budget=record, weight_bytes=plan_weight_bytes(profile, wa),
                avg_bits=avg_bits_of(profile, wa), omega=math.fsum([l.omega for l in layers] + [cross]), status=status,
                solve_seconds=seconds, pins=dict(p.pins), ties=p.groups, label=label,
                profile_fingerprint=profile_fingerprint(profile),
                constraints=constraint_records(profile, wa, caps, p.latency),
                candidates=p.cands, gap=gap, pin_rules=dict(p.pin_rules), solver=solver,
                loss_model="quadratic" if p.quadratic else "additive", cross_omega=cross,
                float_layers=profile.skipped, target=p.target or "")


def budget_record(budget: Budget, caps: Mapping[str, float]) -> dict[str, Any]:
    """The plan's "budget" field: the limits given plus the weight-byte limit they mean.

    budget: the budget asked for.
    caps: resource → limit.
    """
    rec: dict[str, Any] = dict(budget.limits())
    if "weight_bits" in caps:
        rec["weight_bytes_limit"] = caps["weight_bits"] / 8
    return rec


def _checked(profile: Profile, budget: Any, spec: Any) -> tuple[Problem, dict[str, float]]:
    """(the problem with the budget's activation limit applied, the budget's limits), after
    checking the arguments' types and that each limit alone is reachable.

    profile: the profile.
    budget: should be a Budget.
    spec: should be a SolveSpec.
    """
    if not isinstance(budget, Budget):
        raise ConfigError(f"budget must be a hawq Budget, e.g. Budget(avg_bits=4), not {budget!r}")
    p = build_problem(profile, _spec(spec))
    caps = budget.caps(p)
    p = cap_activations(p, budget)
    check_feasible(p, budget, caps)
    return p, caps


def _spec(spec: Any) -> SolveSpec:
    """`spec` if it is a SolveSpec, else ConfigError.

    spec: the value given.
    """
    if not isinstance(spec, SolveSpec):
        raise ConfigError(f"spec must be a hawq SolveSpec, e.g. SolveSpec(bits=(2, 4, 8)), not {spec!r}")
    return spec


def solve(profile: Profile, budget: Budget, spec: SolveSpec = SolveSpec()) -> Plan:
    """The plan of least total Ω that meets every limit of the budget (one-hot ILP; HiGHS or CBC).

    profile: per-layer params, MACs and Ω(bits), layers in execution order.
    budget: the limits (weight size, BOPs, latency), each optional, held at once.
    spec: the candidates, pins, ties, sensitivities, latency table and MIP solver (see SolveSpec).
    Raises InfeasibleBudgetError naming each violated limit and its smallest feasible value, and
    ConfigError for bad bits, pins, ties or options.
    """
    t0 = time.perf_counter()
    return _optimum(*_checked(profile, budget, spec), budget, spec, t0)


def _optimum(p: Problem, caps: dict[str, float], budget: Budget, spec: SolveSpec, t0: float,
             cuts: Sequence[Exclusion] = (), label: str = "") -> Plan | None:
    """The least-Ω plan of problem `p` under `caps` and `cuts` (None when the cuts leave none).

    p, caps: from _checked.
    budget, spec: as in solve().
    t0: when the solve began (perf_counter).
    cuts: plans to stay away from (alternatives).
    label: appended to the plan's label, e.g. "-alt1".
    """
    res = solve_checked(p, budget, caps, cuts=cuts, time_limit=spec.time_limit, solver=spec.solver)
    if res is None:
        return None
    wa = per_layer(p, res[0])
    return make_plan(p, wa, caps=caps, budget=budget, record=budget_record(budget, caps), status=res[1], gap=res[2],
                     seconds=time.perf_counter() - t0, label=f"mixed@{avg_bits_of(p.profile, wa):.2f}b{label}",
                     solver=solver_backend(spec.solver, p.free, p.quadratic))


def alternatives(profile: Profile, budget: Budget, spec: SolveSpec = SolveSpec(), *, count: int = 3,
                 min_change: float = 0.1) -> list[Plan]:
    """The optimal plan, then up to `count` next-best ones, each the least-Ω plan that changes the
    widths of at least `min_change` of the weights against every plan before it.

    The alternatives are what the measured-loss guard checks next to the optimum: plans that the
    second-order estimate ranks close, yet that differ where it is least trustworthy (the layers
    holding many weights). Fewer come back when the budget leaves no more.

    profile, budget, spec: as in solve().
    count: how many alternatives at most (≥ 0).
    min_change: fraction of all weight parameters (0 < f ≤ 1) whose widths must differ.
    """
    if not is_int(count) or count < 0:
        raise ConfigError(f"count={count!r} must be an integer ≥ 0")
    if isinstance(min_change, bool) or not isinstance(min_change, (int, float)) or not 0 < min_change <= 1:
        raise ConfigError(f"min_change={min_change!r} must be a fraction in (0, 1]")
    t0 = time.perf_counter()
    p, caps = _checked(profile, budget, spec)
    keep = p.total_params - math.ceil(min_change * p.total_params)
    plans: list[Plan] = [_optimum(p, caps, budget, spec, t0)]  # type: ignore[list-item]
    cuts: list[Exclusion] = []
    for i in range(1, count + 1):
        prev = plans[-1].assignment()
        cuts.append(Exclusion(tuple(prev[profile.layers[m[0]].name] for m in p.units), keep))
        plan = _optimum(p, caps, budget, spec, time.perf_counter(), cuts, f"-alt{i}")
        if plan is None:
            break
        plans.append(plan)
    return plans


def uniform_plan(profile: Profile, w_bits: int, spec: SolveSpec = SolveSpec(), *, a_bits: int = 8) -> Plan:
    """Every unpinned layer at (w_bits, a_bits): the baseline a mixed plan must beat.

    profile: per-layer params and Ω(bits).
    w_bits: the weight width for unpinned layers; must be one of profile.bits (Ω is needed).
    spec: its pins (widths among profile.bits), ties (a group with a pinned layer takes the pin)
        and latency table (to record the plan's latency); its bits and a_bits are not used.
    a_bits: activation width for every layer (a pinned pair keeps its own).
    """
    have = sorted(int(b) for b in profile.bits)
    if not is_int(w_bits) or w_bits not in have:
        raise ConfigError(f"w_bits={w_bits!r} is not a profiled width; accepted: {have} "
                          "(profile with this width to get its Ω)")
    if not is_int(a_bits):
        raise ConfigError(f"a_bits={a_bits!r} must be one integer for a uniform plan")
    p = build_problem(profile, replace(_spec(spec), bits=None, a_bits=act_bits(a_bits), act_omega=None, latency=None))
    want = (int(w_bits), int(a_bits))
    chosen = [_uniform_choice(p, u, want) for u in range(len(p.units))]
    wa = per_layer(p, chosen)
    label = f"uniform-w{w_bits}" + ("" if a_bits == 8 else f"a{a_bits}")
    plan = make_plan(p, wa, caps={}, budget=None, record={"uniform_w_bits": w_bits, "weight_bytes_limit":
                                                            float(plan_weight_bytes(profile, wa))},
                     status="Uniform", gap=None, seconds=0.0, label=label)
    if spec.latency is None:
        return plan
    return replace(plan, constraints=constraint_records(profile, wa, {}, spec.latency))


def _uniform_choice(p: Problem, u: int, want: Cand) -> Cand:
    """Unit u's candidate in the uniform plan at `want`: `want`, else what the problem's target
    runs for it, else the first allowed one with its activation width (a pin), else the first.

    p: the validated problem.
    u: the unit.
    want: the uniform (w_bits, a_bits).
    """
    al = p.allowed[u]
    if want in al:
        return want
    if p.target is not None:
        layer = p.profile.layers[p.units[u][0]]
        runs = runs_as(p.target, layer.kind, layer.weight_shape, want)[0]
        if runs in al:
            return runs
    return next((c for c in al if c[1] == want[1]), al[0])


def fixed_plan(profile: Profile, assignment: Mapping[str, Any], *, label: str, spec: SolveSpec = SolveSpec(),
               budget: Budget | None = None) -> Plan:
    """A Plan for widths chosen elsewhere (a baseline allocator, a hand-written plan), with the
    same totals, Ω and constraint records as a solved plan; status "Fixed".

    profile: per-layer params, MACs and Ω(bits).
    assignment: layer name → weight width or (w_bits, a_bits) pair, for every profiled layer.
    label: the plan's short name.
    spec: its pins (the assignment must respect them) and candidate bits (None: profile.bits);
        the activation widths are the assignment's, and nothing is tied.
    budget: limits to record the plan's slack against (not enforced).
    """
    wa = widths_of(profile, assignment)
    p = build_problem(profile, replace(_spec(spec), a_bits=sorted({a for _, a in wa.values()}), ties=(),
                                       act_omega=None, latency=None))
    for u, members in enumerate(p.units):
        name = profile.layers[members[0]].name
        if wa[name] not in p.allowed[u]:
            raise ConfigError(f"layer {name} at {wa[name]} is not allowed (candidates {fmt_cands(p.allowed[u])})")
    caps = budget.caps(p) if budget is not None else {}
    record = budget_record(budget, caps) if budget is not None else {}
    return make_plan(p, wa, caps=caps, budget=None, record=record, status="Fixed", gap=None, seconds=0.0, label=label)


def uniform_plans_within(profile: Profile, budget: Budget, spec: SolveSpec = SolveSpec()) -> list[Plan]:
    """Every uniform plan (each profiled weight width × each activation width of the spec) that
    meets every limit of `budget`, with the spec's pins and ties; their constraint records carry
    its limits. A ratio limit is read between the spec's candidate bits; a uniform plan at a width
    the latency table lacks is left out.

    profile: per-layer params, MACs and Ω(bits).
    budget: the limits to meet.
    spec: as in solve() (act_omega is validated with several activation widths, not used).
    A plan with the same widths as a wider one (its target runs both alike) is left out.
    """
    p = build_problem(profile, _spec(spec))
    caps = budget.caps(p)
    out = []
    for a in act_bits(spec.a_bits):
        for w in sorted(profile.bits):
            plan = uniform_plan(profile, w, replace(spec, latency=None), a_bits=a)
            try:
                sums = totals(profile, plan.assignment(), spec.latency)
            except ConfigError:
                continue  # its latency was not measured: it cannot be shown to fit
            records = constraint_records(profile, plan.assignment(), {**caps, **budget.act_cap()}, spec.latency)
            act = records.get("act_bytes")
            if all(within(r, sums[r], cap) for r, cap in caps.items()) and \
                    (budget.act_kb is None or act is not None and act["slack"] >= 0):
                out.append(replace(plan, constraints=records))
    # a target may run two widths alike (tensorrt: W2 convs at W8): keep the wider label of the two
    last = {tuple(plan.assignment().items()): i for i, plan in enumerate(out)}
    return [plan for i, plan in enumerate(out) if last[tuple(plan.assignment().items())] == i]


def sweep(profile: Profile, spec: SolveSpec = SolveSpec(), *, axis: str = "weight", points: int = 50,
          budget: Budget | None = None) -> list[Plan]:
    """The optimal plan at `points` evenly spaced limits on one resource (the ε-constraint sweep).

    The limits run from the least the resource can be under the other limits to what the
    unconstrained optimum uses (above that every limit gives the same plan). Plans come back in
    sweep order, one per limit, duplicates included; see hawq.pareto for the frontier. Unlike
    solve(), ties in Σ Ω are not widened: that adds size for no change in Σ Ω, which a frontier
    of Σ Ω against size counts as dominated.

    profile, spec: as in solve().
    axis: "weight" (weight bits, recorded as megabytes) or "bops" (recorded as gbops).
    points: number of limits (≥ 2).
    budget: other limits held fixed during the sweep (none on the swept resource).
    """
    if axis not in SWEEP_AXES:
        raise ConfigError(f"axis={axis!r} is not one of {sorted(SWEEP_AXES)}")
    if not is_int(points) or points < 2:
        raise ConfigError(f"points={points!r} must be an integer ≥ 2")
    r = SWEEP_AXES[axis]
    if budget is not None and budget.unit_of(r) is not None:
        raise ConfigError(f"the sweep varies the {axis} limit; drop {budget.unit_of(r)} from the budget")
    if budget is not None:
        p, fixed = _checked(profile, budget, spec)
    else:
        p, fixed = build_problem(profile, _spec(spec)), {}
    solver, time_limit = spec.solver, spec.time_limit

    def usage(chosen: Sequence[Cand]) -> int:
        return sum(p.coef[r][u][p.allowed[u].index(c)] for u, c in enumerate(chosen))

    least = solve_ilp(p, fixed, objective=r, solver=solver) if fixed else ([al[0] for al in p.allowed], "Optimal", 0.0)
    if least is None:
        raise jointly_infeasible(p, budget, fixed, solver)  # type: ignore[arg-type]
    lo = usage(least[0]) if fixed else int(p.lo(r))
    top = solve_ilp(p, fixed, time_limit=time_limit, solver=solver) if fixed else None
    hi = usage(top[0]) if top is not None else int(p.hi(r))
    unit, div = ("megabytes", 8 * MB) if axis == "weight" else ("gbops", GIGA)
    plans = []
    for i in range(points):
        t0 = time.perf_counter()
        cap = lo + (hi - lo) * i // (points - 1)
        caps = {**fixed, r: cap}
        res = solve_ilp(p, caps, time_limit=time_limit, solver=solver)
        if res is None or not fits(p, res[0], caps):
            raise InfeasibleBudgetError(f"the sweep found no plan at {unit}={cap / div:g}, which a plan reaches; "
                                        "this is a solver failure, please report it")
        wa = per_layer(p, res[0])
        record = {**(budget.limits() if budget is not None else {}), unit: cap / div}
        if r == "weight_bits":
            record["weight_bytes_limit"] = cap / 8
        plans.append(make_plan(p, wa, caps=caps, budget=budget, record=record, status=res[1], gap=res[2],
                               seconds=time.perf_counter() - t0, label=f"mixed@{avg_bits_of(profile, wa):.2f}b",
                               solver=solver_backend(solver, p.free, p.quadratic)))
    return plans
