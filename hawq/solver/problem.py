"""The problem the ILP solves, built once from a profile and a SolveSpec: units (a tie group or one
layer), the candidates each may take, their Ω and resource totals, and the cross-layer terms per
pair of units."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

from ..errors import ConfigError, InfeasibleBudgetError
from .sizes import KB, Cand, Pin, ceil_sig
from .spec import (SolveSpec, act_omegas, candidate_pairs, check_omega, fmt_cands, latency_rows, resolve_pins,
                   target_candidates, tie_groups)

if TYPE_CHECKING:
    from ..sensitivity import Profile
    from .budget import Budget

log = logging.getLogger(__name__)
# the most pair terms (k_u·k_v per pair of free units; quadratic.py makes (k_u−1)(k_v−1) product
# columns of them) the quadratic model may have; above, the solver drops the cross-layer terms and
# solves the additive model (with a warning; the plan says "additive"). HiGHS on dense synthetic
# terms, 2/4/8 bits, 1 thread, with the previous formulation (benchmarks/solver_scale.py --cross):
# 20 layers (1,710 terms) 0.3–0.5 s, 40 (7,020) 0.9–1.2 s, ResNet-50's 54 (12,879) 6 s, all proven
# optimal; 100 layers (44,550) not proven in 300 s (gap 0.4%).
MAX_PAIR_COLUMNS = 20_000


@dataclass(frozen=True)
class Problem:
    """Everything the limits and the ILP need, validated once.

    units: layer indices per unit (a tie group or one layer), ordered by first member.
    allowed: per unit, the candidates it may take (one for a pinned unit).
    cost: per unit and allowed candidate, Σ Ω over its layers.
    coef: resource → per unit and allowed candidate, its total (integers for weight bits, BOPs).
    """

    profile: Profile
    cands: tuple[Cand, ...]
    pins: dict[str, Pin]
    pin_rules: dict[str, Pin]
    groups: tuple[tuple[str, ...], ...]
    units: tuple[tuple[int, ...], ...]
    allowed: tuple[tuple[Cand, ...], ...]
    cost: tuple[tuple[float, ...], ...]
    coef: dict[str, tuple[tuple[float, ...], ...]]
    omega: dict[str, dict[Cand, float]]  # layer → candidate → Ω_w + Ω_a
    total_params: int
    latency: dict[str, dict[Cand, float]] | None  # the validated table, or None
    # units (u, v), u < v → (w_bits of u, w_bits of v) → the cross-layer terms between their layers
    # (those inside one unit are in `cost`); empty for the additive model
    pairs: dict[tuple[int, int], dict[tuple[int, int], float]] = field(default_factory=dict)
    quadratic: bool = False  # whether cost and pairs hold the profile's cross-layer terms
    target: str | None = None  # the runtime whose candidates `allowed` holds (SolveSpec.target)

    def unit_value(self, chosen: Sequence[Cand], u: int, c: Cand) -> float:
        """The part of the objective that unit u's candidate changes, with u at `c` and every
        other unit as in `chosen`: its cost plus its pair terms (equal values: equal objectives).

        chosen: per unit, its candidate.
        u: the unit.
        c: its candidate to value.
        """
        at = lambda v: c if v == u else chosen[v]  # noqa: E731
        return math.fsum([self.cost[u][self.allowed[u].index(c)]]
                         + [q[at(a)[0], at(b)[0]] for (a, b), q in self.pairs.items() if u in (a, b)])

    def lo(self, resource: str) -> float:
        """Least total of `resource` over all plans (each unit at its cheapest candidate).

        resource: weight_bits, bops or latency_ms.
        """
        return sum(min(row) for row in self.coef[resource])

    def hi(self, resource: str) -> float:
        """Largest total of `resource` over all plans.

        resource: weight_bits, bops or latency_ms.
        """
        return sum(max(row) for row in self.coef[resource])

    @property
    def free(self) -> int:
        """Units with more than one allowed candidate."""
        return sum(len(al) > 1 for al in self.allowed)

    def unit_params(self, u: int) -> int:
        """Weight parameters in unit `u`.

        u: unit index.
        """
        return sum(self.profile.layers[i].params for i in self.units[u])


def build_problem(profile: Profile, spec: SolveSpec) -> Problem:
    """Check `spec` against the profile (candidate widths, Ω, activation sensitivities, latency
    table, pins, ties) and build the units; ConfigError or ArtifactError on the first problem.

    profile: the profiled layers.
    spec: what may be chosen.
    """
    asked = candidate_pairs(profile, spec.bits, spec.a_bits)
    pin_of, pin_allowed, rules = resolve_pins(profile, spec.pins, asked)
    allowed_of = target_candidates(profile, spec.target, asked, pin_allowed, pin_of)
    cands = tuple(sorted({c for al in allowed_of.values() for c in al}))
    missing = sorted({w for w, _ in cands} - {int(b) for b in profile.bits})
    if missing:  # only a target's widths can be missing: the asked ones are profiled widths
        raise ConfigError(f"{spec.target} runs some layers only at {missing} bits, which the profile lacks "
                          f"(it has {sorted(profile.bits)}); profile with them too, e.g. --bits "
                          f"{','.join(map(str, sorted({*profile.bits, *missing})))}")
    check_omega(profile, sorted({w for w, _ in cands}))
    act_omega = act_omegas(profile, spec.act_omega, sorted({a for _, a in cands}))
    lat = latency_rows(profile, spec.latency, allowed_of)
    groups = tie_groups(profile, spec.ties)
    index = {l.name: i for i, l in enumerate(profile.layers)}
    in_group = {n: g for g in groups for n in g}
    units: list[tuple[int, ...]] = []
    seen: set[str] = set()
    for l in profile.layers:
        if l.name not in seen:
            members = in_group.get(l.name, (l.name,))
            seen.update(members)
            units.append(tuple(index[n] for n in members))
    allowed = []
    for members in units:
        ok = [c for c in cands if all(c in allowed_of[profile.layers[i].name] for i in members)]
        if not ok:
            names = [profile.layers[i].name for i in members]
            if spec.target is not None and not any(n in pin_of for n in names):
                raise ConfigError(f"tied layers {names} have no candidate in common that {spec.target} runs on all of "
                                  f"them ({ {n: fmt_cands(allowed_of[n]) for n in names} }); untie them")
            raise ConfigError(f"tied layers {names} are pinned to different widths "
                              f"{ {n: pin_of[n] for n in names if n in pin_of} }; pin them alike or untie them")
        allowed.append(tuple(ok))
    omega = {l.name: {c: l.omega[c[0]] + act_omega[l.name][c[1]] for c in cands} for l in profile.layers}
    layers = profile.layers
    pairs, inner, quadratic = unit_pairs(profile, units, allowed)
    cost = tuple(tuple(math.fsum([omega[layers[i].name][c] for i in m] + [inner[u].get(c[0], 0.0)]) for c in al)
                 for u, (m, al) in enumerate(zip(units, allowed)))
    coef: dict[str, tuple[tuple[float, ...], ...]] = {
        "weight_bits": tuple(tuple(sum(layers[i].params * c[0] for i in m) for c in al) for m, al in zip(units, allowed)),
        "bops": tuple(tuple(sum(layers[i].macs * c[0] * c[1] for i in m) for c in al) for m, al in zip(units, allowed)),
    }
    if lat is not None:
        coef["latency_ms"] = tuple(tuple(math.fsum(lat[layers[i].name][c] for i in m) for c in al)
                                   for m, al in zip(units, allowed))
    return Problem(profile, cands, pin_of, rules, groups, tuple(units), tuple(allowed), cost, coef, omega,
                   sum(l.params for l in layers), lat, pairs, quadratic, spec.target)


def pinned_layers(profile: Profile, spec: SolveSpec) -> dict[str, Pin]:
    """Layer name → its pin, after the spec's pin rules (names or patterns) are resolved.

    profile: the profiled layers.
    spec: the pins and candidates.
    """
    return build_problem(profile, spec).pins


def unit_pairs(profile: Profile, units: Sequence[tuple[int, ...]], allowed: Sequence[tuple[Cand, ...]]
               ) -> tuple[dict[tuple[int, int], dict[tuple[int, int], float]], list[dict[int, float]], bool]:
    """The profile's cross-layer terms summed per pair of units, and per unit those between its own
    layers (a tie group shares one width): (pairs, inner, quadratic). Both empty and quadratic
    False without interactions, or when the quadratic model would need more than
    MAX_PAIR_COLUMNS columns.

    profile: the profiled layers and their interactions.
    units: layer indices per unit.
    allowed: per unit, its candidates.
    """
    inner: list[dict[int, float]] = [{} for _ in units]
    if not profile.interactions:
        return {}, inner, False
    unit_of = {profile.layers[i].name: u for u, m in enumerate(units) for i in m}
    at = {b: i for i, b in enumerate(profile.bits)}
    widths = [sorted({c[0] for c in al}) for al in allowed]
    pairs: dict[tuple[int, int], dict[tuple[int, int], float]] = {}
    for it in profile.interactions:
        u, v = unit_of[it.a], unit_of[it.b]
        if u == v:
            for w in widths[u]:
                inner[u][w] = inner[u].get(w, 0.0) + it.terms[at[w]][at[w]]
            continue
        flip = u > v
        if flip:
            u, v = v, u
        q = pairs.setdefault((u, v), {})
        for wu in widths[u]:
            for wv in widths[v]:
                t = it.terms[at[wv]][at[wu]] if flip else it.terms[at[wu]][at[wv]]
                q[wu, wv] = q.get((wu, wv), 0.0) + t
    columns = sum(len(allowed[u]) * len(allowed[v]) for u, v in pairs if len(allowed[u]) > 1 and len(allowed[v]) > 1)
    if columns > MAX_PAIR_COLUMNS:
        log.warning("the %d cross-layer terms make %d pair terms, more than MAX_PAIR_COLUMNS=%d: solving the "
                    "additive model (each layer's Ω alone)", len(profile.interactions), columns, MAX_PAIR_COLUMNS)
        return {}, [{} for _ in units], False
    return pairs, inner, True


def cap_activations(p: Problem, budget: Budget) -> Problem:
    """The problem without the candidates whose activation width puts a layer input of the unit
    above the budget's act_kb; unchanged without that limit.

    p: the validated problem.
    budget: the budget asked for.
    """
    if budget.act_kb is None:
        return p
    layers = p.profile.layers
    if any(l.act_elems <= 0 for l in layers):
        raise ConfigError("an act_kb limit needs each layer's input size, which this profile lacks; "
                          "regenerate it with `hawq profile`")
    cap = budget.act_kb * KB
    need = [[max(layers[i].act_elems * c[1] / 8 for i in m) for c in al] for m, al in zip(p.units, p.allowed)]
    keep = [[j for j, b in enumerate(row) if b <= cap] for row in need]
    if not all(keep):
        u = max(range(len(need)), key=lambda u: min(need[u]))
        widest = max(p.units[u], key=lambda i: layers[i].act_elems)
        a = min(c[1] for c in p.allowed[u])
        raise InfeasibleBudgetError(
            f"budget act_kb={budget.act_kb:g} is infeasible; the smallest feasible budget is "
            f"act_kb={ceil_sig(min(need[u]) / KB)!r} ({layers[widest].name}'s input, {layers[widest].act_elems} "
            f"elements, at {a} bits, its lowest allowed activation width); raise it, add a lower activation width "
            "or pin fewer layers")
    pick = lambda rows: tuple(tuple(row[j] for j in k) for row, k in zip(rows, keep))  # noqa: E731
    return replace(p, allowed=pick(p.allowed), cost=pick(p.cost), coef={r: pick(rows) for r, rows in p.coef.items()})
