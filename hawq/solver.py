"""Budget and Plan; the one-hot ILP that picks a (weight, activation) bit width per layer (PuLP + CBC).

Layers are grouped into units: a tie group (layers that must share one candidate) or a single
layer. Unit u takes one candidate c = (w_bits, a_bits) from its allowed set (every candidate, or
those its pin allows): binary x[u,c] with Σ_c x[u,c] = 1. The plan minimises Σ Ω·x subject to each
limit the budget gives, all optional and all at once:

    weight bits   Σ params·w_bits            ≤ limit   (megabytes, avg_bits or ratio)
    BOPs          Σ MACs·w_bits·a_bits       ≤ limit   (gbops or bops_ratio)
    latency       Σ table[layer][(w, a)]     ≤ limit   (latency_ms, a measured lookup table)

Weight bits and BOPs are integers, so those limits and the feasibility checks are exact (for
totals under 5e8; above that the limit is tightened by 1e-9 of itself to absorb CBC's tolerance).
Ω(w, a) = Ω_w(w) from the profile plus Ω_a(a) when activation sensitivities are given.

A profile with cross-layer terms (sensitivity "perturbed_cross") makes the objective quadratic:
Σ Ω·x + Σ_{u<v} q_uv(c, d)·x[u,c]·x[v,d]. Each product gets a continuous y[u,v,c,d] ≥ 0 tied to
the binaries by Σ_d y[u,v,c,d] = x[u,c] and Σ_c y[u,v,c,d] = x[v,d], which forces y = x·x at every
integer point whatever the signs of q (the usual linearisation of a product of assignments).
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import re
import time
import warnings
from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import pulp

from . import quant
from .artifacts import fingerprint_obj, read_json, write_json
from .errors import ArtifactError, ConfigError, InfeasibleBudgetError

if TYPE_CHECKING:
    from .sensitivity import Profile

log = logging.getLogger(__name__)
FORMAT, VERSION = "plan", 1
# the most pair columns y[u,v,c,d] the quadratic model may have; above, the solver drops the
# cross-layer terms and solves the additive model (with a warning; the plan says "additive").
# HiGHS on random dense terms, 2/4/8 bits, 1 thread: 20 layers (1,710 columns) 0.04–0.4 s;
# 53 layers (11,700) 17–38 s; 100 layers (44,500) over 10 minutes.
MAX_PAIR_COLUMNS = 20_000
LOSS_MODELS = ("additive", "quadratic")
MB = 1e6  # bytes in a megabyte
GIGA = 1e9
Cand = tuple[int, int]  # (w_bits, a_bits)
Pin = Union[int, Cand]  # a weight width (any activation width) or one (w_bits, a_bits) pair
# the budget's units, grouped by the resource each one limits (at most one unit per resource)
BUDGET_UNITS: dict[str, tuple[str, ...]] = {
    "weight_bits": ("megabytes", "avg_bits", "ratio"),
    "bops": ("gbops", "bops_ratio"),
    "latency_ms": ("latency_ms",),
}
BUDGET_KINDS = tuple(k for ks in BUDGET_UNITS.values() for k in ks)
# peak activation memory is a cap on every layer, not a sum: it removes candidates (_cap_activations)
ACT_KIND, KB = "act_kb", 1e3
_INTEGER = ("weight_bits", "bops")  # resources whose per-layer values are integers
_EXACT_BELOW = 5e8  # integer rows below this are held exactly (CBC's 1e-10 tolerance stays < 0.05)
_FLOAT_TOL = 1e-9  # relative tolerance on the latency limit
# CBC options, each checked against brute force on thousands of random instances:
# - increment: CBC prunes nodes that do not beat the incumbent by this (default 1e-5), far too
#   coarse for near-equal plans; dualT/primalT/integerT: default 1e-7 tolerances lose Ω
#   differences of ~1e-7 of the objective;
# - preprocess off: CBC 2.10's default SOS preprocessing returns wrong "optimal" plans on these
#   one-hot models (seen here; upstream coin-or/Cbc issue 283). The models are tiny, so it costs
#   nothing.
_CBC_OPTIONS = ("increment 1e-12", "dualT 1e-11", "primalT 1e-10", "integerT 1e-10", "preprocess off")


# ---------------------------------------------------------------------------------------------
# sizes


def _is_int(v: Any) -> bool:
    """True for integers (Python or NumPy), False for bools and everything else.

    v: the value to check.
    """
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _wa(v: Any) -> Cand:
    """(w_bits, a_bits) from a per-layer entry: an int w (activations at 8) or a (w, a) pair.

    v: an int or a pair of ints.
    """
    return (int(v), 8) if _is_int(v) else (int(v[0]), int(v[1]))


def _widths(profile: Profile, assignment: Mapping[str, Any]) -> dict[str, Cand]:
    """name → (w_bits, a_bits) for every layer of `profile`; ConfigError if one is missing.

    profile: the layers.
    assignment: name → w_bits or (w_bits, a_bits).
    """
    missing = [l.name for l in profile.layers if l.name not in assignment]
    if missing:
        raise ConfigError(f"no bit width given for layers {', '.join(missing[:5])}; give one for every profiled layer")
    return {l.name: _wa(assignment[l.name]) for l in profile.layers}


def _total_bits(profile: Profile, w_bits: Mapping[str, Any]) -> int:
    """Σ params·w_bits over all layers of `profile` (an exact integer).

    profile: the layers and their parameter counts.
    w_bits: name → w_bits or (w_bits, a_bits), for every layer.
    """
    wa = _widths(profile, w_bits)
    return sum(l.params * wa[l.name][0] for l in profile.layers)


def plan_weight_bytes(profile: Profile, w_bits: Mapping[str, Any]) -> int:
    """Weight storage in bytes, ⌈Σ params·b / 8⌉ (weights only, no scales or biases).

    profile: the layers and their parameter counts.
    w_bits: name → w_bits or (w_bits, a_bits), for every layer.
    """
    return -(-_total_bits(profile, w_bits) // 8)


def avg_bits_of(profile: Profile, w_bits: Mapping[str, Any]) -> float:
    """Parameter-weighted mean weight bit width, Σ params·b / Σ params.

    profile: the layers and their parameter counts.
    w_bits: name → w_bits or (w_bits, a_bits), for every layer.
    """
    n = sum(l.params for l in profile.layers)
    return _total_bits(profile, w_bits) / n if n else 0.0


def plan_bops(profile: Profile, assignment: Mapping[str, Any]) -> int:
    """Bit operations Σ MACs·w_bits·a_bits for one input sample (an exact integer).

    profile: the layers and their MACs.
    assignment: name → w_bits (activations at 8) or (w_bits, a_bits), for every layer.
    """
    wa = _widths(profile, assignment)
    return sum(l.macs * wa[l.name][0] * wa[l.name][1] for l in profile.layers)


def _ceil_sig(x: float, digits: int = 6) -> float:
    """The smallest float with at most `digits` significant digits that is ≥ x.

    x: the value to round up (finite).
    digits: significant digits kept.
    """
    d = Decimal(repr(float(x)))
    if d == 0:
        return 0.0
    exp = d.adjusted() - digits + 1
    return float(d.quantize(Decimal(1).scaleb(exp), rounding=ROUND_CEILING))


def _floor_bits(limit_bits: float) -> int:
    """Largest integer within `limit_bits`, forgiving float round-off (1e-12 relative, far below one
    unit for any real model yet above the error of a product like avg_bits·params).

    limit_bits: the limit (bits or BOPs), as a float.
    """
    return math.floor(limit_bits + 1e-12 * max(1.0, abs(limit_bits)))


def _within(resource: str, total: float, cap: float) -> bool:
    """Whether `total` of `resource` satisfies the limit `cap` (exactly for integer resources).

    resource: one of weight_bits, bops, latency_ms.
    total: the plan's total.
    cap: the limit.
    """
    if resource in _INTEGER:
        return total <= _floor_bits(cap)
    return total <= cap + _FLOAT_TOL * max(1.0, abs(cap))


# ---------------------------------------------------------------------------------------------
# candidates, pins, ties


def _candidate_bits(profile: Profile, bits: Sequence[int] | None) -> tuple[int, ...]:
    """The sorted candidate weight widths: `bits` (a subset of profile.bits) or profile.bits.

    profile: its `bits` are the widths Ω was computed for.
    bits: the widths the solver may choose; None for all of profile.bits.
    """
    have = tuple(sorted({int(b) for b in profile.bits}))
    if bits is None:
        return have
    if isinstance(bits, (str, bytes)) or not all(_is_int(b) for b in bits):
        raise ConfigError(f"bits must be a sequence of integers, not {bits!r}; accepted: a subset of {list(have)}")
    cand = tuple(sorted({int(b) for b in bits}))
    bad = [b for b in cand if b not in have]
    if not cand or bad:
        raise ConfigError(f"candidate bits {list(bits)} must be a non-empty subset of the profiled bits {list(have)}; "
                          "profile again with the missing widths or drop them")
    return cand


def _act_bits(a_bits: int | Sequence[int]) -> tuple[int, ...]:
    """The sorted candidate activation widths, each an integer in 2..16.

    a_bits: one width (usually 8) or a sequence of widths.
    """
    seq = (a_bits,) if _is_int(a_bits) else a_bits
    if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) or not seq or \
            not all(_is_int(a) and 2 <= a <= 16 for a in seq):
        raise ConfigError(f"a_bits={a_bits!r} must be an integer in 2..16 (usually 8) or a list of them, e.g. (4, 8)")
    return tuple(sorted({int(a) for a in seq}))


def candidate_pairs(profile: Profile, bits: Sequence[int] | None = None,
                    a_bits: int | Sequence[int] = 8) -> tuple[Cand, ...]:
    """The candidates (w_bits, a_bits): weight widths × activation widths, sorted.

    profile: its `bits` are the weight widths Ω was computed for.
    bits: candidate weight widths (a subset of profile.bits); None for all of them.
    a_bits: one activation width or a sequence of them.
    """
    return tuple((w, a) for w in _candidate_bits(profile, bits) for a in _act_bits(a_bits))


def _fmt_cands(cands: Sequence[Cand]) -> str:
    """Candidates as "W2A8, W4A8".

    cands: (w, a) pairs.
    """
    return ", ".join(f"W{w}A{a}" for w, a in cands)


def default_pins(profile: Profile, bits: int = 8) -> dict[str, int]:
    """Pin the first and the last layer (execution order: input conv, output linear) to `bits`.

    profile: the layers in execution order.
    bits: the weight width for both pinned layers.
    """
    return {profile.layers[0].name: bits, profile.layers[-1].name: bits}


def _pin_value(key: str, v: Any) -> Pin:
    """A pin's value normalised: an int weight width or a (w_bits, a_bits) tuple.

    key: the pin's name or pattern (for the message).
    v: the value given.
    """
    if _is_int(v):
        return int(v)
    if isinstance(v, Sequence) and not isinstance(v, (str, bytes)) and len(v) == 2 and all(_is_int(b) for b in v):
        return (int(v[0]), int(v[1]))
    raise ConfigError(f"pin {key}={v!r} must be a weight width like 8 or a (w_bits, a_bits) pair like (8, 8)")


def _pin_allowed(key: str, v: Pin, cands: Sequence[Cand]) -> tuple[Cand, ...]:
    """The candidates a pin allows: those with its weight width, or exactly its pair.

    key: the pin's name or pattern (for the message).
    v: a normalised pin value.
    cands: all candidates.
    """
    allowed = tuple(c for c in cands if (c[0] == v if isinstance(v, int) else c == v))
    if not allowed:
        raise ConfigError(f"pin {key}={v!r} is not one of the candidate bits ({_fmt_cands(cands)}); "
                          "pin to a candidate, add it to bits, or pass pins={} for no pins")
    return allowed


def _resolve_pins(profile: Profile, pins: Mapping[str, Any] | None, cands: Sequence[Cand]
                  ) -> tuple[dict[str, Pin], dict[str, tuple[Cand, ...]], dict[str, Pin]]:
    """Resolve pin rules to layers: (layer → pin, layer → allowed candidates, the rules as given).

    A rule's key is a layer name or, if no layer has that name, a regular expression that must
    match whole layer names; rules apply in order, so a later rule overrides an earlier one for the
    layers both match. None means default_pins (first and last layer at 8 bits); {} pins nothing.

    profile: the layers that may be pinned.
    pins: rule → weight width or (w_bits, a_bits).
    cands: all candidates.
    """
    rules = default_pins(profile) if pins is None else pins
    if not isinstance(rules, Mapping):
        raise ConfigError(f"pins must map layer names or patterns to bits, e.g. {{'conv1': 8, 'layer3\\..*': 4}}, "
                          f"not {rules!r}")
    names = [l.name for l in profile.layers]
    shown = f"{names[:8]}{' …' if len(names) > 8 else ''}"
    per_layer: dict[str, tuple[Pin, tuple[Cand, ...]]] = {}
    given: dict[str, Pin] = {}
    for key, raw in rules.items():
        if not isinstance(key, str):
            raise ConfigError(f"pin keys must be layer names or regular expressions, not {key!r}")
        v = _pin_value(key, raw)
        if key in names:
            hit = [key]
        else:
            try:
                rx = re.compile(key)
            except re.error as e:
                raise ConfigError(f"pinned layers ['{key}'] is neither a layer name nor a valid regular expression ({e}); "
                                  f"accepted names: {shown}") from e
            hit = [n for n in names if rx.fullmatch(n)]
        if not hit:
            raise ConfigError(f"pinned layers ['{key}'] are not in the profile (no name matches it whole); "
                              f"accepted names: {shown}")
        allowed = _pin_allowed(key, v, cands)
        given[key] = v
        per_layer.update({n: (v, allowed) for n in hit})
    return ({n: per_layer[n][0] for n in names if n in per_layer},
            {n: per_layer[n][1] for n in names if n in per_layer}, given)


GRAPH_TIES = ("inputs", "residual", "graph")


def _tie_groups(profile: Profile, ties: Sequence[Sequence[str]] | str) -> tuple[tuple[str, ...], ...]:
    """Merge overlapping ties into disjoint groups (≥ 2 layers each), in profile order.

    profile: the layers that may be tied.
    ties: groups of layer names that must share one candidate, or one of GRAPH_TIES: "inputs"
        (profile.groups: layers that read the same input tensor), "residual"
        (profile.residual: layers whose outputs meet at a residual add) or "graph" (both).
    """
    if isinstance(ties, str):
        if ties not in GRAPH_TIES:
            raise ConfigError(f"ties must be one of {', '.join(map(repr, GRAPH_TIES))} or a list of lists of layer "
                              f"names, not {ties!r}")
        ties = (profile.groups if ties != "residual" else ()) + (profile.residual if ties != "inputs" else ())
    names = [l.name for l in profile.layers]
    root = {n: n for n in names}

    def find(n: str) -> str:
        while root[n] != n:
            n = root[n]
        return n

    for tie in ties:
        if isinstance(tie, (str, bytes)):
            raise ConfigError(f"each tie must be a list of layer names, not the string {tie!r}")
        unknown = [n for n in tie if n not in root]
        if unknown:
            raise ConfigError(f"tied layers {unknown} are not in the profile; accepted names: {names[:8]}"
                              f"{' …' if len(names) > 8 else ''}")
        for n in tie[1:]:
            root[find(n)] = find(tie[0])
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(find(n), []).append(n)
    return tuple(tuple(g) for g in groups.values() if len(g) > 1)


def _act_omega(profile: Profile, act_omega: Mapping[str, Mapping[int, float]] | None,
               a_set: Sequence[int]) -> dict[str, dict[int, float]]:
    """Validated activation Ω per layer and width; zeros when one width is fixed and none is given.

    profile: the layers.
    act_omega: layer name → {a_bits: Ω_a}, or None for the profile's (when it has every width).
    a_set: the candidate activation widths.
    """
    if act_omega is None and set(a_set) <= set(profile.act_bits):
        act_omega = {l.name: l.act_omega for l in profile.layers}
    if act_omega is None:
        if len(a_set) > 1:
            have = f"only {list(profile.act_bits)}" if profile.act_bits else "none"
            raise ConfigError(f"activation widths {list(a_set)} need activation sensitivities; the profile has {have}, "
                              f"so profile with `--a-bits {','.join(map(str, a_set))}`, give act_omega={{layer: "
                              "{a_bits: Ω}} or choose one activation width (a_bits=8)")
        return {l.name: {a_set[0]: 0.0} for l in profile.layers}
    out = {}
    for l in profile.layers:
        row = act_omega.get(l.name) if isinstance(act_omega, Mapping) else None
        vals = {a: (row or {}).get(a) for a in a_set}
        bad = {a: v for a, v in vals.items() if isinstance(v, bool) or not isinstance(v, numbers.Real)
               or not math.isfinite(v)}
        if bad:
            raise ConfigError(f"act_omega lacks a finite Ω for layer {l.name} at activation widths {sorted(bad)}; "
                              "give one for every layer and every activation width")
        out[l.name] = {a: float(v) for a, v in vals.items()}
    return out


def _latency_rows(profile: Profile, latency: Mapping[str, Mapping[Any, float]] | None,
                  cands: Sequence[Cand]) -> dict[str, dict[Cand, float]] | None:
    """Validated latency table: layer name → {(w, a): ms} for every layer and candidate.

    profile: the layers.
    latency: layer name → {(w_bits, a_bits): milliseconds}, or None.
    cands: the candidates the table must cover.
    """
    if latency is None:
        return None
    if not isinstance(latency, Mapping):
        raise ConfigError(f"latency must map layer names to {{(w_bits, a_bits): ms}}, not {type(latency).__name__}")
    out = {}
    for l in profile.layers:
        row = latency.get(l.name)
        if not isinstance(row, Mapping):
            raise ConfigError(f"the latency table has no row for layer {l.name}; measure it for this model "
                              "(`hawq latency`)")
        vals = {c: row.get(c) for c in cands}
        bad = [c for c, v in vals.items() if isinstance(v, bool) or not isinstance(v, numbers.Real)
               or not math.isfinite(v) or v < 0]
        if bad:
            raise ConfigError(f"the latency table lacks a finite time ≥ 0 for layer {l.name} at {_fmt_cands(bad)}; "
                              "measure every candidate")
        out[l.name] = {c: float(v) for c, v in vals.items()}
    return out


def _check_omega(profile: Profile, wset: Sequence[int]) -> None:
    """ArtifactError if some Ω the ILP needs is missing or not finite.

    profile: the profiled layers.
    wset: the candidate weight widths.
    """
    for l in profile.layers:
        for b in wset:
            v = l.omega.get(b)
            if v is None or not math.isfinite(v):
                raise ArtifactError(f"layer {l.name} has Ω({b} bits) = {v!r}; regenerate the profile")


@dataclass(frozen=True)
class _Problem:
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


def _problem(profile: Profile, *, bits: Sequence[int] | None, a_bits: int | Sequence[int],
             pins: Mapping[str, Any] | None, ties: Sequence[Sequence[str]] | str,
             act_omega: Mapping[str, Mapping[int, float]] | None = None,
             latency: Mapping[str, Mapping[Any, float]] | None = None) -> _Problem:
    """Validate candidates, pins, ties, sensitivities and the latency table; build the units.

    profile: the profiled layers.
    bits: candidate weight widths (subset of profile.bits); None for all.
    a_bits: candidate activation width(s).
    pins: pin rules (see _resolve_pins); None for default_pins, {} for none.
    ties: groups of layer names sharing one candidate, or one of GRAPH_TIES.
    act_omega: layer → {a_bits: Ω_a}; required when a_bits has several widths.
    latency: layer → {(w, a): ms}; required for a latency limit.
    """
    cands = candidate_pairs(profile, bits, a_bits)
    wset = sorted({w for w, _ in cands})
    _check_omega(profile, wset)
    aom = _act_omega(profile, act_omega, sorted({a for _, a in cands}))
    lat = _latency_rows(profile, latency, cands)
    pin_of, allowed_of, rules = _resolve_pins(profile, pins, cands)
    groups = _tie_groups(profile, ties)
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
        ok = [c for c in cands if all(c in allowed_of.get(profile.layers[i].name, cands) for i in members)]
        if not ok:
            names = [profile.layers[i].name for i in members]
            raise ConfigError(f"tied layers {names} are pinned to different widths "
                              f"{ {n: pin_of[n] for n in names if n in pin_of} }; pin them alike or untie them")
        allowed.append(tuple(ok))
    omega = {l.name: {c: l.omega[c[0]] + aom[l.name][c[1]] for c in cands} for l in profile.layers}
    layers = profile.layers
    pairs, inner, quadratic = _unit_pairs(profile, units, allowed)
    cost = tuple(tuple(math.fsum([omega[layers[i].name][c] for i in m] + [inner[u].get(c[0], 0.0)]) for c in al)
                 for u, (m, al) in enumerate(zip(units, allowed)))
    coef: dict[str, tuple[tuple[float, ...], ...]] = {
        "weight_bits": tuple(tuple(sum(layers[i].params * c[0] for i in m) for c in al) for m, al in zip(units, allowed)),
        "bops": tuple(tuple(sum(layers[i].macs * c[0] * c[1] for i in m) for c in al) for m, al in zip(units, allowed)),
    }
    if lat is not None:
        coef["latency_ms"] = tuple(tuple(math.fsum(lat[layers[i].name][c] for i in m) for c in al)
                                   for m, al in zip(units, allowed))
    return _Problem(profile, cands, pin_of, rules, groups, tuple(units), tuple(allowed), cost, coef, omega,
                    sum(l.params for l in layers), lat, pairs, quadratic)


def _unit_pairs(profile: Profile, units: Sequence[tuple[int, ...]], allowed: Sequence[tuple[Cand, ...]]
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
        log.warning("the %d cross-layer terms need %d pair columns, more than MAX_PAIR_COLUMNS=%d: solving the "
                    "additive model (each layer's Ω alone)", len(profile.interactions), columns, MAX_PAIR_COLUMNS)
        return {}, [{} for _ in units], False
    return pairs, inner, True


# ---------------------------------------------------------------------------------------------
# Budget


@dataclass(frozen=True)
class Budget:
    """Limits on weight size, BOPs and latency; each optional, at least one, all held at once.

    megabytes: weight storage limit in MB (1 MB = 1e6 bytes; weights only, params·b/8 per layer).
    avg_bits: limit on the parameter-weighted mean weight width, Σ params·b / Σ params.
    ratio: r in [0, 1] between the smallest plan (every free layer at the lowest candidate) and the
        largest (every free layer at the highest); pinned layers keep their pin in both.
    gbops: limit on bit operations per input sample, Σ MACs·w_bits·a_bits, in units of 1e9.
    bops_ratio: r in [0, 1] between the least and the most BOPs any plan can have.
    latency_ms: limit on Σ per-layer latency from a measured table (solve's `latency=`).
    act_kb: limit on peak activation memory in kB (1 kB = 1e3 bytes): the largest quantized layer
        input of one sample, max over layers of input elements · a_bits / 8 (float intermediates
        and tensors kept for skip connections are not counted).
    At most one of megabytes, avg_bits, ratio and at most one of gbops, bops_ratio.
    """

    megabytes: float | None = None
    avg_bits: float | None = None
    ratio: float | None = None
    gbops: float | None = None
    bops_ratio: float | None = None
    latency_ms: float | None = None
    act_kb: float | None = None

    def __post_init__(self) -> None:
        given = {k: getattr(self, k) for k in BUDGET_KINDS + (ACT_KIND,) if getattr(self, k) is not None}
        if not given:
            raise ConfigError("a budget needs at least one limit: exactly one of megabytes, avg_bits, ratio "
                              "(weights), and/or one of gbops, bops_ratio (BOPs), and/or latency_ms, and/or act_kb; "
                              "got none")
        for kinds in BUDGET_UNITS.values():
            both = {k: v for k, v in given.items() if k in kinds}
            if len(both) > 1:
                raise ConfigError(f"a budget takes exactly one of {', '.join(kinds)}; got {both}")
        for kind, v in given.items():
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ConfigError(f"budget {kind}={v!r} must be a finite number")
            if kind.endswith("ratio") and not 0.0 <= v <= 1.0:
                raise ConfigError(f"budget {kind}={v!r} must be in [0, 1] (0: smallest plan, 1: largest)")
            if not kind.endswith("ratio") and v <= 0:
                raise ConfigError(f"budget {kind}={v!r} must be positive")

    def limits(self) -> dict[str, float]:
        """The limits given, {unit: value}, e.g. {"avg_bits": 4.0, "gbops": 1.2}."""
        return {k: float(getattr(self, k)) for k in BUDGET_KINDS + (ACT_KIND,) if getattr(self, k) is not None}

    def as_dict(self) -> dict[str, float]:
        """The limits given, {unit: value} (as limits())."""
        return self.limits()

    def act_cap(self) -> dict[str, float]:
        """{"act_bytes": the peak activation limit in bytes} if act_kb is set, else {}; for the
        constraint records only (the limit acts by removing candidates, not as an ILP row)."""
        return {} if self.act_kb is None else {"act_bytes": self.act_kb * KB}

    def unit_of(self, resource: str) -> str | None:
        """The unit this budget limits `resource` in, or None if it does not limit it.

        resource: weight_bits, bops or latency_ms.
        """
        return next((k for k in BUDGET_UNITS[resource] if getattr(self, k) is not None), None)

    def _caps(self, p: _Problem) -> dict[str, float]:
        """resource → limit in its own unit (bits, BOPs, ms), for the limits given.

        p: the validated problem.
        """
        caps = {}
        for resource in BUDGET_UNITS:
            kind = self.unit_of(resource)
            if kind is None:
                continue
            v = float(getattr(self, kind))
            if resource == "latency_ms" and "latency_ms" not in p.coef:
                raise ConfigError("a latency_ms limit needs a latency table; pass latency= (see `hawq latency`)")
            cap = {"megabytes": v * MB * 8, "avg_bits": v * p.total_params, "gbops": v * GIGA,
                   "latency_ms": v}.get(kind, p.lo(resource) + v * (p.hi(resource) - p.lo(resource)))
            # a huge but finite limit (1e308 MB) overflows to inf in bits; it limits nothing, so hold it
            # at the largest plan's total, which the integer arithmetic can take
            caps[resource] = p.hi(resource) if math.isinf(cap) else cap
        return caps

    def _value_at(self, resource: str, total: float, p: _Problem) -> float:
        """The value, in this budget's unit for `resource`, that allows exactly `total`.

        resource: weight_bits, bops or latency_ms.
        total: a plan's total of that resource.
        p: the validated problem.
        """
        kind = self.unit_of(resource)
        if kind in ("ratio", "bops_ratio"):
            lo, hi = p.lo(resource), p.hi(resource)
            return (total - lo) / (hi - lo) if hi > lo else 0.0
        return {"megabytes": total / 8 / MB, "avg_bits": total / p.total_params if p.total_params else 0.0,
                "gbops": total / GIGA}.get(kind, total)

    def weight_bytes_limit(self, profile: Profile, pins: Mapping[str, Any] | None, *,
                           bits: Sequence[int] | None = None, ties: Sequence[Sequence[str]] | str = (),
                           a_bits: int | Sequence[int] = 8) -> float:
        """The weight-byte limit this budget means for `profile` (inf if it sets none).

        profile: the profiled layers (params per layer).
        pins: pin rules (None: default_pins; {}: none); matter for `ratio` only.
        bits: candidate weight widths (subset of profile.bits; None: all); matter for `ratio` only.
        ties: groups sharing one width, or one of GRAPH_TIES; matter for `ratio` only.
        a_bits: candidate activation width(s).
        """
        caps = self._caps(_problem(profile, bits=bits, a_bits=a_bits, pins=pins, ties=ties))
        return caps["weight_bits"] / 8 if "weight_bits" in caps else math.inf


# ---------------------------------------------------------------------------------------------
# Plan


@dataclass(frozen=True)
class LayerChoice:
    """The chosen widths of one layer.

    name: fully qualified module name.
    w_bits: weight bit width.
    a_bits: activation bit width of the layer's input.
    params: weight parameter count.
    omega: Ω at (w_bits, a_bits) (second-order loss-increase estimate).
    pinned: whether a pin rule fixed this layer.
    """

    name: str
    w_bits: int
    a_bits: int
    params: int
    omega: float
    pinned: bool


@dataclass(frozen=True)
class Plan:
    """Per-layer bit widths with their totals; the input of the rewriter.

    layers: one choice per profiled layer, in profile order.
    budget: the limits asked (e.g. {"avg_bits": 4.0}) plus the resulting "weight_bytes_limit".
    weight_bytes: ⌈Σ params·w_bits / 8⌉.
    avg_bits: Σ params·w_bits / Σ params.
    omega: Σ Ω over layers at their chosen widths: the ILP's objective.
    status: "Optimal" (proven), "Feasible" (time limit hit) or "Uniform" (not solved).
    solve_seconds: wall time of solve().
    pins: layer name → its pin (a weight width, or a (w_bits, a_bits) pair).
    ties: groups of layers that share one candidate.
    label: short name, e.g. "mixed@4.00b" or "uniform-w4".
    profile_fingerprint: fingerprint of the profile's fingerprints (model, data, settings).
    constraints: "weight_bytes", "bops" and, with a latency table, "latency_ms" →
        {"limit": the limit or None, "value": the plan's total, "slack": limit − value or None}.
    candidates: the (w_bits, a_bits) pairs the plan chose from.
    gap: relative optimality gap (0 when proven optimal; None for uniform plans).
    pin_rules: the pins as given (names or regular expressions → width).
    guard: the measured-loss guard's record, {"chosen": label, "candidates": [...]}, or None.
    solver: the MIP solver that proved it ("highs" or "cbc"; "" for uniform plans).
    loss_model: "quadratic" when omega holds the profile's cross-layer terms (and the ILP minimised
        them), "additive" when it is Σ Ω alone.
    cross_omega: the cross-layer part of omega (0 for the additive model).
    """

    layers: tuple[LayerChoice, ...]
    budget: dict[str, Any]
    weight_bytes: int
    avg_bits: float
    omega: float
    status: str
    solve_seconds: float
    pins: dict[str, Pin] = field(default_factory=dict)
    ties: tuple[tuple[str, ...], ...] = ()
    label: str = ""
    profile_fingerprint: str = ""
    constraints: dict[str, dict[str, float | None]] = field(default_factory=dict)
    candidates: tuple[Cand, ...] = ()
    gap: float | None = None
    pin_rules: dict[str, Pin] = field(default_factory=dict)
    guard: dict[str, Any] | None = None
    solver: str = ""
    loss_model: str = "additive"
    cross_omega: float = 0.0

    def assignment(self) -> dict[str, tuple[int, int]]:
        """Layer name → (w_bits, a_bits), in profile order."""
        return {l.name: (l.w_bits, l.a_bits) for l in self.layers}

    def check_profile(self, profile: Profile) -> None:
        """Raise ArtifactError unless this plan was made from `profile` (same fingerprints, layers).

        profile: the profile of the model the plan is about to be applied to.
        """
        if self.profile_fingerprint != profile_fingerprint(profile) or \
                [l.name for l in self.layers] != [l.name for l in profile.layers]:
            raise ArtifactError("the plan was made from another profile (model, data or settings differ); "
                                "solve again with this profile")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with "format": "hawq.plan/1"."""
        d = {
            "format": f"hawq.{FORMAT}/{VERSION}", "label": self.label, "status": self.status,
            "objective": self.omega, "gap": self.gap, "solver": self.solver, "solve_seconds": self.solve_seconds,
            "weight_bytes": self.weight_bytes, "avg_bits": self.avg_bits, "omega": self.omega,
            "loss_model": self.loss_model, "cross_omega": self.cross_omega,
            "budget": dict(self.budget), "constraints": {k: dict(v) for k, v in self.constraints.items()},
            "candidates": [list(c) for c in self.candidates],
            "pins": {k: _pin_json(v) for k, v in self.pins.items()},
            "pin_rules": {k: _pin_json(v) for k, v in self.pin_rules.items()},
            "ties": [list(t) for t in self.ties], "profile_fingerprint": self.profile_fingerprint,
            "layers": [{"name": l.name, "w_bits": l.w_bits, "a_bits": l.a_bits, "params": l.params,
                        "omega": l.omega, "pinned": l.pinned} for l in self.layers],
        }
        if self.guard is not None:
            d["guard"] = self.guard
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """Parse and validate a dict made by to_dict; ArtifactError if malformed.

        d: the decoded JSON object.
        """
        try:
            if d.get("format") != f"hawq.{FORMAT}/{VERSION}":
                raise ValueError(f"format {d.get('format')!r}, expected 'hawq.{FORMAT}/{VERSION}'")
            layers = tuple(LayerChoice(_str(l["name"]), _int(l["w_bits"]), _int(l["a_bits"]), _int(l["params"]),
                                       _float(l["omega"]), _bool(l["pinned"])) for l in d["layers"])
            guard = d.get("guard")
            if guard is not None and not (isinstance(guard, dict) and isinstance(guard.get("chosen"), str)
                                          and isinstance(guard.get("candidates"), list)):
                raise ValueError("guard must be {'chosen': label, 'candidates': [...]}")
            gap = d.get("gap")
            plan = cls(
                layers=layers, budget={_str(k): v for k, v in d["budget"].items()},
                weight_bytes=_int(d["weight_bytes"]), avg_bits=_float(d["avg_bits"]), omega=_float(d["omega"]),
                status=_str(d["status"]), solve_seconds=_float(d["solve_seconds"]),
                pins={_str(k): _pin_load(v) for k, v in d["pins"].items()},
                ties=tuple(tuple(_str(n) for n in t) for t in d["ties"]), label=_str(d["label"]),
                profile_fingerprint=_str(d["profile_fingerprint"]),
                constraints={_str(k): {_str(f): (None if x is None else _float(x)) for f, x in v.items()}
                             for k, v in d.get("constraints", {}).items()},
                candidates=tuple((_int(c[0]), _int(c[1])) for c in d.get("candidates", ())),
                gap=None if gap is None else _float(gap),
                pin_rules={_str(k): _pin_load(v) for k, v in d.get("pin_rules", {}).items()},
                guard=guard, solver=_str(d.get("solver", "")),
                loss_model=_str(d.get("loss_model", "additive")), cross_omega=_float(d.get("cross_omega", 0.0)),
            )
            _check_consistent(plan, d)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise ArtifactError(f"malformed plan ({e.__class__.__name__}: {e}); regenerate it with `hawq solve`") from e
        return plan

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON, atomically.

        path: destination file.
        """
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan written by save(); ArtifactError if missing, of another format or malformed.

        path: the plan file.
        """
        d = read_json(path, FORMAT, VERSION)
        try:
            return cls.from_dict(d)
        except ArtifactError as e:
            raise ArtifactError(f"{path}: {e}") from e


def _pin_json(v: Pin) -> int | list[int]:
    """A pin as JSON: an int weight width or a [w_bits, a_bits] list.

    v: a normalised pin.
    """
    return v if isinstance(v, int) else list(v)


def _pin_load(v: Any) -> Pin:
    """A pin from JSON (an int or a pair of ints), else TypeError.

    v: the decoded JSON value.
    """
    if _is_int(v):
        return int(v)
    if isinstance(v, list) and len(v) == 2:
        return (_int(v[0]), _int(v[1]))
    raise TypeError(f"expected a width or a [w_bits, a_bits] pair, got {v!r}")


def _int(v: Any) -> int:
    """`v` if it is an integer (not a bool), else TypeError (a malformed plan field).

    v: the decoded JSON value.
    """
    if not _is_int(v):
        raise TypeError(f"expected an integer, got {v!r}")
    return int(v)


def _float(v: Any) -> float:
    """`v` if it is a number (not a bool), else TypeError (a malformed plan field).

    v: the decoded JSON value.
    """
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"expected a number, got {v!r}")
    return float(v)


def _str(v: Any) -> str:
    """`v` if it is a string, else TypeError (a malformed plan field).

    v: the decoded JSON value.
    """
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _bool(v: Any) -> bool:
    """`v` if it is a bool, else TypeError (a malformed plan field).

    v: the decoded JSON value.
    """
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {v!r}")
    return v


def _check_consistent(plan: Plan, d: Mapping[str, Any]) -> None:
    """ValueError if the plan's layers contradict its totals or repeat a name.

    plan: a freshly parsed plan.
    d: the dict it was parsed from (for the recorded objective).
    """
    names = [l.name for l in plan.layers]
    if not names or len(set(names)) != len(names):
        raise ValueError("layers must be non-empty with unique names")
    for l in plan.layers:
        lo, hi = quant.MIN_BITS, quant.MAX_BITS
        if not (lo <= l.w_bits <= hi and (lo <= l.a_bits <= hi or l.a_bits == quant.WEIGHT_ONLY) and l.params >= 1):
            raise ValueError(f"layer {l.name}: W{l.w_bits}A{l.a_bits} with {l.params} params; widths must be in "
                             f"{lo}..{hi} (a_bits {quant.WEIGHT_ONLY}: weight-only) and params at least 1")
        if plan.candidates and not l.pinned and (l.w_bits, l.a_bits) not in plan.candidates:
            raise ValueError(f"layer {l.name}: W{l.w_bits}A{l.a_bits} is not among the plan's candidates "
                             f"{[list(c) for c in plan.candidates]}")
    total = sum(l.params * l.w_bits for l in plan.layers)
    if -(-total // 8) != plan.weight_bytes:
        raise ValueError(f"weight_bytes {plan.weight_bytes} does not match its layers ({-(-total // 8)})")
    w = plan.constraints.get("weight_bytes", {}).get("value")
    if w is not None and w != total / 8:
        raise ValueError(f"constraints.weight_bytes.value {w} does not match its layers ({total / 8})")
    if plan.loss_model not in LOSS_MODELS:
        raise ValueError(f"loss_model {plan.loss_model!r} is not one of {', '.join(LOSS_MODELS)}")
    if "objective" in d and _float(d["objective"]) != plan.omega:
        raise ValueError(f"objective {d['objective']} differs from omega {plan.omega}")


def profile_fingerprint(profile: Profile) -> str:
    """A short hash of the profile's fingerprints (model weights, data, settings).

    profile: the profile a plan is made from.
    """
    return fingerprint_obj(getattr(profile, "fingerprints", {}))


def _totals(profile: Profile, wa: Mapping[str, Cand], latency: Mapping[str, Mapping[Any, float]] | None
            ) -> dict[str, float]:
    """A plan's totals: weight bits and BOPs (exact integers) and, with a table, latency in ms.

    profile: the layers (params, MACs).
    wa: name → (w_bits, a_bits) for every layer.
    latency: layer → {(w, a): ms}, or None.
    """
    out: dict[str, float] = {"weight_bits": sum(l.params * wa[l.name][0] for l in profile.layers),
                             "bops": sum(l.macs * wa[l.name][0] * wa[l.name][1] for l in profile.layers)}
    if latency is not None:
        try:
            out["latency_ms"] = math.fsum(float(latency[l.name][wa[l.name]]) for l in profile.layers)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"the latency table has no time for {e}; measure every width the plan uses") from e
    return out


def _constraint_records(profile: Profile, wa: Mapping[str, Cand], caps: Mapping[str, float],
                        latency: Mapping[str, Mapping[Any, float]] | None) -> dict[str, dict[str, float | None]]:
    """Each constraint's limit (None if not limited), the plan's value and the slack.

    profile: the layers.
    wa: name → (w_bits, a_bits) for every layer.
    caps: resource → limit (bits, BOPs, ms).
    latency: layer → {(w, a): ms}, or None.
    """
    out = {}
    for r, total in _totals(profile, wa, latency).items():
        div = 8 if r == "weight_bits" else 1
        cap = caps.get(r)
        limit = None if cap is None else (_floor_bits(cap) if r in _INTEGER else cap) / div
        out["weight_bytes" if r == "weight_bits" else r] = {
            "limit": limit, "value": total / div, "slack": None if limit is None else limit - total / div}
    peak = peak_act_bytes(profile, wa)
    if peak is not None:
        limit = caps.get("act_bytes")
        out["act_bytes"] = {"limit": limit, "value": peak, "slack": None if limit is None else limit - peak}
    return out


def peak_act_bytes(profile: Profile, wa: Mapping[str, Cand]) -> float | None:
    """The largest quantized layer input of one sample, in bytes (input elements · a_bits / 8), or
    None when the profile lacks the layers' input sizes.

    profile: the layers (act_elems).
    wa: name → (w_bits, a_bits) for every layer.
    """
    if any(l.act_elems <= 0 for l in profile.layers):
        return None
    return max(l.act_elems * wa[l.name][1] / 8 for l in profile.layers)


def _cap_activations(p: _Problem, budget: Budget) -> _Problem:
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
            f"act_kb={_ceil_sig(min(need[u]) / KB)!r} ({layers[widest].name}'s input, {layers[widest].act_elems} "
            f"elements, at {a} bits, its lowest allowed activation width); raise it, add a lower activation width "
            "or pin fewer layers")
    pick = lambda rows: tuple(tuple(row[j] for j in k) for row, k in zip(rows, keep))  # noqa: E731
    return replace(p, allowed=pick(p.allowed), cost=pick(p.cost), coef={r: pick(rows) for r, rows in p.coef.items()})


def _make_plan(p: _Problem, wa: Mapping[str, Cand], *, caps: Mapping[str, float], budget: dict[str, Any],
               status: str, gap: float | None, seconds: float, label: str) -> Plan:
    """Assemble a Plan from chosen widths; totals computed exactly.

    p: the validated problem (profile, pins, ties, Ω).
    wa: layer name → (w_bits, a_bits), every layer.
    caps: resource → limit, for the constraint records.
    budget: the budget record to store.
    status: solver status string.
    gap: relative optimality gap, or None.
    seconds: solve wall time.
    label: plan label.
    """
    profile = p.profile
    layers = tuple(LayerChoice(l.name, wa[l.name][0], wa[l.name][1], int(l.params), float(p.omega[l.name][wa[l.name]]),
                               l.name in p.pins) for l in profile.layers)
    cross = profile.cross_omega({n: c[0] for n, c in wa.items()}) if p.quadratic else 0.0
    return Plan(layers=layers, budget=budget, weight_bytes=plan_weight_bytes(profile, wa),
                avg_bits=avg_bits_of(profile, wa), omega=math.fsum([l.omega for l in layers] + [cross]), status=status,
                solve_seconds=seconds, pins=dict(p.pins), ties=p.groups, label=label,
                profile_fingerprint=profile_fingerprint(profile),
                constraints=_constraint_records(profile, wa, caps, p.latency),
                candidates=p.cands, gap=gap, pin_rules=dict(p.pin_rules),
                loss_model="quadratic" if p.quadratic else "additive", cross_omega=cross)


def _budget_record(budget: Budget, caps: Mapping[str, float]) -> dict[str, Any]:
    """The plan's "budget" field: the limits given plus the weight-byte limit they mean.

    budget: the budget asked for.
    caps: resource → limit.
    """
    rec: dict[str, Any] = dict(budget.limits())
    if "weight_bits" in caps:
        rec["weight_bytes_limit"] = caps["weight_bits"] / 8
    return rec


# ---------------------------------------------------------------------------------------------
# solving


SOLVERS = ("auto", "highs", "cbc")
AUTO_CBC_UNITS = 300  # "auto" takes CBC (exact to 1e-12) up to this many free units, HiGHS beyond
# HiGHS options: prove optimality exactly (no gap), and hold rows and integrality to 1e-10 so that
# Ω differences of 1e-10 of the objective still count (checked against brute force like CBC's).
_HIGHS_OPTIONS = (("output_flag", False), ("mip_rel_gap", 0.0), ("mip_abs_gap", 0.0),
                  ("mip_feasibility_tolerance", 1e-10), ("primal_feasibility_tolerance", 1e-10),
                  ("dual_feasibility_tolerance", 1e-10), ("threads", 1))


def _highspy() -> Any:
    """The highspy module, or None when it is not installed.

    HiGHS prints a banner the first time a solver is made in a process; it goes to /dev/null.
    """
    try:
        import highspy
    except ImportError:
        return None
    if not getattr(_highspy, "quiet", False):
        out = os.dup(1)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                highspy.Highs()
        finally:
            os.dup2(out, 1)
            os.close(out)
        _highspy.quiet = True  # type: ignore[attr-defined]
    return highspy


def solver_backend(solver: str = "auto", units: int = 0, quadratic: bool = False) -> str:
    """The MIP solver `solver` means for a model of `units` free units: "highs" or "cbc".

    CBC (bundled with PuLP) proves optimality to 1e-12 of the objective and is fast up to a few
    hundred layers; beyond, with its preprocessing kept off (see _CBC_OPTIONS), it can branch for
    minutes where HiGHS (the highspy package) closes the gap at the root in seconds, optimal to its
    tolerances (about 1e-8 of the largest per-layer Ω range).

    solver: "auto" (CBC up to AUTO_CBC_UNITS free units, HiGHS beyond when highspy is installed),
        "highs" or "cbc".
    units: free units (layers or tie groups not fixed by a pin) in the model.
    quadratic: whether the model has cross-layer pair columns; "auto" then takes HiGHS at any size.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"solver={solver!r} is not one of {', '.join(SOLVERS)}")
    if solver == "cbc" or (solver == "auto" and ((units <= AUTO_CBC_UNITS and not quadratic) or _highspy() is None)):
        return "cbc"
    if _highspy() is None:
        raise ConfigError("solver='highs' needs the highspy package (pip install highspy); or use solver='cbc'")
    return "highs"


@dataclass
class _Lp:
    """A minimisation model in neutral form: columns (cost, bounds, integrality), rows lo ≤ a·x ≤ hi."""

    cost: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    rows: list[tuple[list[int], list[float], float, float]] = field(default_factory=list)

    def col(self, cost: float = 0.0, lower: float = 0.0, upper: float = 1.0, integer: bool = True) -> int:
        """Add a column; its index.

        cost: objective coefficient.
        lower, upper: bounds.
        integer: integrality.
        """
        self.cost.append(cost)
        self.lower.append(lower)
        self.upper.append(upper)
        self.integer.append(integer)
        return len(self.cost) - 1

    def row(self, terms: Sequence[tuple[int, float]], lo: float, hi: float) -> None:
        """Add the row lo ≤ Σ value·x[index] ≤ hi (skipped when it has no terms).

        terms: (column, coefficient) pairs.
        lo, hi: bounds (±inf for none).
        """
        if terms:
            self.rows.append(([i for i, _ in terms], [v for _, v in terms], lo, hi))


@dataclass(frozen=True)
class _Result:
    """status: "Optimal", "Feasible" (time limit, with a solution), "Infeasible" or "NoSolution"."""

    status: str
    values: tuple[float, ...] = ()
    gap: float = 0.0


class _SolverCrash(Exception):
    """CBC died instead of answering (see _ilp)."""


def _run_cbc(lp: _Lp, time_limit: float | None) -> _Result:
    """Solve `lp` with PuLP's bundled CBC and the exact options of _CBC_OPTIONS.

    lp: the model.
    time_limit: seconds, or None.
    """
    prob = pulp.LpProblem("hawq_bits", pulp.LpMinimize)
    xs = [prob.add_variable(f"c{j}", lowBound=lo, upBound=None if hi == math.inf else hi,
                            cat=pulp.LpBinary if integ and (lo, hi) == (0, 1)
                            else pulp.LpInteger if integ else pulp.LpContinuous)
          for j, (lo, hi, integ) in enumerate(zip(lp.lower, lp.upper, lp.integer))]
    prob += pulp.LpAffineExpression([(xs[j], c) for j, c in enumerate(lp.cost) if c])
    for idx, vals, lo, hi in lp.rows:
        expr = pulp.LpAffineExpression(list(zip((xs[i] for i in idx), vals)))
        if lo == hi:
            prob.addConstraint(expr == hi)
        else:
            if hi < math.inf:
                prob.addConstraint(expr <= hi)
            if lo > -math.inf:
                prob.addConstraint(expr >= lo)

    def cbc(mip: bool, limit: float | None) -> pulp.LpSolver:
        with warnings.catch_warnings():  # PuLP 3.x announces PULP_CBC_CMD's removal in 4.0
            warnings.filterwarnings("ignore", message="PULP_CBC_CMD is deprecated", category=DeprecationWarning)
            return pulp.PULP_CBC_CMD(msg=False, mip=mip, timeLimit=limit, gapRel=0, gapAbs=0, options=list(_CBC_OPTIONS))

    try:
        prob.solve(cbc(True, time_limit))
    except pulp.PulpSolverError as e:
        raise _SolverCrash(str(e)) from e
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return _Result("Infeasible" if prob.status == pulp.LpStatusInfeasible or time_limit is None else "NoSolution")
    values = tuple(v.varValue or 0.0 for v in xs)
    if prob.sol_status == pulp.LpSolutionOptimal:
        return _Result("Optimal", values)
    found = math.fsum(c * v for c, v in zip(lp.cost, values))
    prob.solve(cbc(False, None))  # the LP relaxation bounds the gap
    bound = pulp.value(prob.objective) or 0.0
    return _Result("Feasible", values, max(0.0, found - bound) / max(abs(found), 1e-300))


def _run_highs(lp: _Lp, time_limit: float | None) -> _Result:
    """Solve `lp` with HiGHS (highspy) and the exact options of _HIGHS_OPTIONS.

    lp: the model.
    time_limit: seconds, or None.
    """
    import numpy as np

    hs = _highspy()
    h = hs.Highs()
    for k, v in _HIGHS_OPTIONS:
        h.setOptionValue(k, v)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    m = hs.HighsLp()
    m.num_col_, m.num_row_ = len(lp.cost), len(lp.rows)
    m.col_cost_, m.col_lower_, m.col_upper_ = (np.asarray(a, dtype=float) for a in (lp.cost, lp.lower, lp.upper))
    m.row_lower_ = np.asarray([r[2] for r in lp.rows], dtype=float)
    m.row_upper_ = np.asarray([r[3] for r in lp.rows], dtype=float)
    a = m.a_matrix_
    a.format_, a.num_col_, a.num_row_ = hs.MatrixFormat.kRowwise, len(lp.cost), len(lp.rows)
    a.start_ = np.cumsum([0] + [len(r[0]) for r in lp.rows]).astype(np.int32)
    a.index_ = np.asarray([i for r in lp.rows for i in r[0]], dtype=np.int32)
    a.value_ = np.asarray([v for r in lp.rows for v in r[1]], dtype=float)
    m.integrality_ = [hs.HighsVarType.kInteger if i else hs.HighsVarType.kContinuous for i in lp.integer]
    h.passModel(m)
    h.run()
    status, info = h.getModelStatus(), h.getInfo()
    if status == hs.HighsModelStatus.kOptimal:
        return _Result("Optimal", tuple(h.getSolution().col_value))
    if status == hs.HighsModelStatus.kInfeasible:
        return _Result("Infeasible")
    if info.primal_solution_status == hs.SolutionStatus.kSolutionStatusFeasible:
        return _Result("Feasible", tuple(h.getSolution().col_value), max(0.0, float(info.mip_gap)))
    return _Result("NoSolution")


@dataclass(frozen=True)
class _Cut:
    """Exclude plans close to an earlier one: Σ_u params_u·[u keeps prev[u]] ≤ keep_params.

    prev: per unit, the candidate the earlier plan chose.
    keep_params: most parameters a new plan may leave at the earlier plan's choice.
    """

    prev: tuple[Cand, ...]
    keep_params: int


def _model(p: _Problem, caps: Mapping[str, float], *, objective: str | None, cuts: Sequence[_Cut],
           phase1: bool = False) -> tuple[_Lp, dict[tuple[int, int], int]] | None:
    """Build the one-hot ILP over the free units: (model, column of x[u, k]), or None when a limit
    is below even its least possible total.

    The objective is Σ Ω less each unit's least Ω, divided by the largest such difference (Ω spans
    1e-8..1e2). Each limit row has every unit's least value taken out and is scaled to a
    right-hand side of about 1; integer rows keep half a unit of room, which their integer totals
    cannot use.

    p: the validated problem.
    caps: resource → limit (bits, BOPs, ms).
    objective: None minimises Σ Ω; a resource name minimises that resource instead.
    cuts: plans to stay away from (see _Cut).
    phase1: minimise the total violation of the rows instead (each row gets a slack ≥ 0): a model
        that is always feasible, with optimum 0 exactly when the real one is feasible.
    With cross-layer terms (p.pairs) and the Ω objective, a pair of free units adds its product
    columns y (see the module's docstring); a pair with one unit fixed adds to the other's cost.
    Each pair's block has its least term taken out (Σ y = 1 per pair) before the common scaling.
    """
    n = len(p.units)
    free = [u for u in range(n) if len(p.allowed[u]) > 1]
    cost = [list(row) for row in (p.cost if objective is None else p.coef[objective])]
    blocks = {} if objective is not None or phase1 else _pair_blocks(p, cost)
    base = {u: min(cost[u]) for u in free}
    least = {key: min(map(min, m)) for key, m in blocks.items()}
    scale = max([c - base[u] for u in free for c in cost[u]]
                + [t - least[key] for key, m in blocks.items() for row in m for t in row], default=0.0) or 1.0
    lp = _Lp()
    x = {(u, k): lp.col(0.0 if phase1 else (cost[u][k] - base[u]) / scale)
         for u in free for k in range(len(p.allowed[u]))}
    for u in free:
        lp.row([(x[u, k], 1.0) for k in range(len(p.allowed[u]))], 1.0, 1.0)
    for (u, v), m in blocks.items():
        y = [[lp.col((t - least[u, v]) / scale, 0.0, 1.0, False) for t in row] for row in m]
        for k, row in enumerate(y):
            lp.row([(j, 1.0) for j in row] + [(x[u, k], -1.0)], 0.0, 0.0)
        for k2 in range(len(m[0])):
            lp.row([(row[k2], 1.0) for row in y] + [(x[v, k2], -1.0)], 0.0, 0.0)

    def row(terms: list[tuple[int, float]], rhs: float) -> None:
        if phase1:
            terms = terms + [(lp.col(1.0, 0.0, math.inf, False), -1.0)]
        lp.row(terms, -math.inf, rhs)

    for r, cap in caps.items():
        if r == objective:
            continue
        rows = p.coef[r]
        least = {u: min(rows[u]) for u in range(n)}
        if r in _INTEGER:
            rhs = _floor_bits(cap) - sum(least.values())
            sc = max(rhs, 1)
            rhs_f = (rhs + 0.5) / sc if _floor_bits(cap) < _EXACT_BELOW else rhs * (1 - 1e-9) / sc
        else:
            rhs = cap + _FLOAT_TOL * max(1.0, abs(cap)) - math.fsum(least.values())
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


def _pair_blocks(p: _Problem, cost: list[list[float]]) -> dict[tuple[int, int], list[list[float]]]:
    """The pair terms of the quadratic objective over the allowed candidates: per pair of free
    units its matrix [k][k2]; a pair with one fixed unit is added to the free unit's `cost` (in
    place), a pair of fixed units is a constant and dropped.

    p: the validated problem.
    cost: per unit and allowed candidate, its Ω (changed in place).
    """
    blocks = {}
    for (u, v), q in p.pairs.items():
        au, av = p.allowed[u], p.allowed[v]
        if len(au) > 1 and len(av) > 1:
            blocks[u, v] = [[q[c[0], d[0]] for d in av] for c in au]
        elif len(au) > 1:
            cost[u] = [t + q[c[0], av[0][0]] for t, c in zip(cost[u], au)]
        elif len(av) > 1:
            cost[v] = [t + q[au[0][0], d[0]] for t, d in zip(cost[v], av)]
    return blocks


def _ilp(p: _Problem, caps: Mapping[str, float], *, objective: str | None = None, cuts: Sequence[_Cut] = (),
         time_limit: float | None = None, solver: str = "auto") -> tuple[list[Cand], str, float] | None:
    """Solve the one-hot ILP; (per unit its candidate, status, relative gap), None if infeasible.

    p: the validated problem.
    caps: resource → limit (bits, BOPs, ms).
    objective: None minimises Σ Ω; a resource name minimises that resource instead.
    cuts: plans to stay away from (see _Cut).
    time_limit: solver wall-clock limit in seconds, or None.
    solver: "auto", "highs" or "cbc" (see solver_backend).
    """
    n = len(p.units)
    built = _model(p, caps, objective=objective, cuts=cuts)
    if built is None:
        return None
    lp, x = built
    if not x:
        chosen = [p.allowed[u][0] for u in range(n)]
        return (chosen, "Optimal", 0.0) if _fits(p, chosen, caps) and _clear_of(p, chosen, cuts) else None
    run = _run_highs if solver_backend(solver, len({u for u, _ in x}), p.quadratic) == "highs" else _run_cbc
    try:
        res = run(lp, time_limit)
    except _SolverCrash:
        # CBC 2.10 with preprocessing off crashes when its bound tightening proves a model
        # infeasible ("Problem is infeasible - tightenPrimalBounds!"); confirm infeasibility on the
        # phase-1 model, which is always feasible, and report anything else.
        phase1 = _model(p, caps, objective=objective, cuts=cuts, phase1=True)
        assert phase1 is not None
        check = _run_cbc(phase1[0], time_limit)
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


def _clear_of(p: _Problem, chosen: Sequence[Cand], cuts: Sequence[_Cut]) -> bool:
    """Whether a per-unit choice keeps at most each cut's parameters at the cut plan's choice.

    p: the validated problem.
    chosen: per unit, its candidate.
    cuts: plans to stay away from.
    """
    return all(sum(p.unit_params(u) for u, c in enumerate(chosen) if c == cut.prev[u]) <= cut.keep_params
               for cut in cuts)


def _fits(p: _Problem, chosen: Sequence[Cand], caps: Mapping[str, float]) -> bool:
    """Whether a per-unit choice satisfies every limit (exactly for integer resources).

    p: the validated problem.
    chosen: per unit, its candidate.
    caps: resource → limit.
    """
    for r, cap in caps.items():
        rows = p.coef[r]
        total = [rows[u][p.allowed[u].index(c)] for u, c in enumerate(chosen)]
        if not _within(r, sum(total) if r in _INTEGER else math.fsum(total), cap):
            return False
    return True


def _per_layer(p: _Problem, chosen: Sequence[Cand]) -> dict[str, Cand]:
    """Layer name → candidate from a per-unit choice.

    p: the validated problem.
    chosen: per unit, its candidate.
    """
    out = {}
    for members, c in zip(p.units, chosen):
        out.update({p.profile.layers[i].name: c for i in members})
    return {l.name: out[l.name] for l in p.profile.layers}


def _pinned_text(p: _Problem) -> str:
    """"conv1=8, fc=8" or "none".

    p: the validated problem.
    """
    return ", ".join(f"{n}={v}" for n, v in p.pins.items()) or "none"


def _check_feasible(p: _Problem, budget: Budget, caps: Mapping[str, float]) -> None:
    """InfeasibleBudgetError naming each limit below the least any plan can reach.

    p: the validated problem.
    budget: the budget asked for.
    caps: resource → limit.
    """
    bad = []
    for r, cap in caps.items():
        lo = p.lo(r)
        if not _within(r, lo, cap):
            kind = budget.unit_of(r)
            bad.append(f"budget {kind}={getattr(budget, kind):g} is infeasible; the smallest feasible budget is "
                       f"{kind}={_ceil_sig(budget._value_at(r, lo, p))!r}")
    if bad:
        raise InfeasibleBudgetError(
            "; ".join(bad) + f" (every free layer at its cheapest candidate of {_fmt_cands(p.cands)}; pinned: "
            f"{_pinned_text(p)}); raise the budget, add a lower candidate bit width, or pin fewer layers")


def _jointly_infeasible(p: _Problem, budget: Budget, caps: Mapping[str, float],
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
        res = _ilp(p, others, objective=r, solver=solver) if others else None
        if res is None:
            parts.append(f"{kind}={getattr(budget, kind):g}: no value fits the other limits")
            continue
        rows = p.coef[r]
        total = sum(rows[u][p.allowed[u].index(c)] for u, c in enumerate(res[0]))
        parts.append(f"{kind}={getattr(budget, kind):g}: with the other limits the smallest feasible budget is "
                     f"{kind}={_ceil_sig(budget._value_at(r, total, p))!r}")
    return InfeasibleBudgetError("the limits are feasible one at a time but not together; " + "; ".join(parts)
                                 + "; raise one of them")


def _check_time_limit(time_limit: Any) -> None:
    """ConfigError unless `time_limit` is None or a positive number.

    time_limit: the value given.
    """
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))
                                   or not time_limit > 0):
        raise ConfigError(f"time_limit={time_limit!r} must be a positive number of seconds or None")


def _solve(p: _Problem, budget: Budget, caps: Mapping[str, float], *, cuts: Sequence[_Cut] = (),
           time_limit: float | None = None, solver: str = "auto") -> tuple[list[Cand], str, float] | None:
    """Solve and check the plan against every limit; None if the cuts leave no plan.

    p: the validated problem.
    budget: the budget asked for.
    caps: resource → limit.
    cuts: plans to stay away from.
    time_limit: solver limit in seconds, or None.
    solver: "auto", "highs" or "cbc".
    """
    res = _ilp(p, caps, cuts=cuts, time_limit=time_limit, solver=solver)
    if res is None:
        if cuts:
            return None
        raise _jointly_infeasible(p, budget, caps, solver)
    if not _fits(p, res[0], caps):  # guard against solver tolerances
        raise InfeasibleBudgetError("the solver returned a plan over a limit; raise the budget slightly")
    return _widen_ties(p, res[0], caps, cuts), res[1], res[2]


def _widen_ties(p: _Problem, chosen: Sequence[Cand], caps: Mapping[str, float],
                cuts: Sequence[_Cut] = ()) -> list[Cand]:
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
            if p.unit_value(chosen, u, al[k]) == value and _fits(p, trial, caps) and _clear_of(p, trial, cuts):
                chosen = trial
                break
    return chosen


def solve(profile: Profile, budget: Budget, *, bits: Sequence[int] | None = None,
          pins: Mapping[str, Any] | None = None, ties: Sequence[Sequence[str]] | str = (),
          a_bits: int | Sequence[int] = 8, act_omega: Mapping[str, Mapping[int, float]] | None = None,
          latency: Mapping[str, Mapping[Any, float]] | None = None, time_limit: float | None = None,
          solver: str = "auto") -> Plan:
    """The plan of least total Ω that meets every limit of the budget (one-hot ILP; HiGHS or CBC).

    profile: per-layer params, MACs and Ω(bits), layers in execution order.
    budget: the limits (weight size, BOPs, latency), each optional, held at once.
    bits: candidate weight widths, a subset of profile.bits; None for all of them.
    pins: layer name or regular expression (matching whole names) → weight width or (w_bits,
        a_bits) pair; later rules override earlier ones. None pins the first and last layer to 8
        bits (default_pins); {} pins nothing.
    ties: groups of layer names that must share one candidate, or one of GRAPH_TIES (see _tie_groups)
        (layers reading the same tensor); overlapping groups merge; a group with a pinned layer
        takes that pin.
    a_bits: candidate activation width(s); candidates are bits × a_bits.
    act_omega: layer name → {a_bits: Ω_a}, added to the weights' Ω; needed when a_bits has
        several widths and the profile has no activation sensitivities for them (None: the profile's).
    latency: layer name → {(w_bits, a_bits): ms}, for a latency_ms limit.
    time_limit: solver wall-clock limit in seconds; None for no limit. If hit, the best plan found
        is returned with status "Feasible" and its relative gap to the best bound.
    solver: "auto" (CBC up to 300 free layers, HiGHS beyond when highspy is installed), "highs" or
        "cbc"; see solver_backend.
    Raises InfeasibleBudgetError naming each violated limit and its smallest feasible value, and
    ConfigError for bad bits, pins, ties or options.
    """
    t0 = time.perf_counter()
    if not isinstance(budget, Budget):
        raise ConfigError(f"budget must be a hawq Budget, e.g. Budget(avg_bits=4), not {budget!r}")
    _check_time_limit(time_limit)
    p = _problem(profile, bits=bits, a_bits=a_bits, pins=pins, ties=ties, act_omega=act_omega, latency=latency)
    caps = budget._caps(p)
    p = _cap_activations(p, budget)
    _check_feasible(p, budget, caps)
    chosen, status, gap = _solve(p, budget, caps, time_limit=time_limit, solver=solver)  # type: ignore[misc]
    wa = _per_layer(p, chosen)
    return replace(_make_plan(p, wa, caps=caps | budget.act_cap(), budget=_budget_record(budget, caps), status=status, gap=gap,
                              seconds=time.perf_counter() - t0, label=f"mixed@{avg_bits_of(profile, wa):.2f}b"),
                   solver=solver_backend(solver, p.free, p.quadratic))


def alternatives(profile: Profile, budget: Budget, count: int = 3, *, min_change: float = 0.1,
                 bits: Sequence[int] | None = None, pins: Mapping[str, Any] | None = None,
                 ties: Sequence[Sequence[str]] | str = (), a_bits: int | Sequence[int] = 8,
                 act_omega: Mapping[str, Mapping[int, float]] | None = None,
                 latency: Mapping[str, Mapping[Any, float]] | None = None,
                 time_limit: float | None = None, solver: str = "auto") -> list[Plan]:
    """The optimal plan, then up to `count` next-best ones, each the least-Ω plan that changes the
    widths of at least `min_change` of the weights against every plan before it.

    The alternatives are what the measured-loss guard checks next to the optimum: plans that the
    second-order estimate ranks close, yet that differ where it is least trustworthy (the layers
    holding many weights). Fewer come back when the budget leaves no more.

    profile, budget, bits, pins, ties, a_bits, act_omega, latency, time_limit, solver: as in solve().
    count: how many alternatives at most (≥ 0).
    min_change: fraction of all weight parameters (0 < f ≤ 1) whose widths must differ.
    """
    if not _is_int(count) or count < 0:
        raise ConfigError(f"count={count!r} must be an integer ≥ 0")
    if isinstance(min_change, bool) or not isinstance(min_change, (int, float)) or not 0 < min_change <= 1:
        raise ConfigError(f"min_change={min_change!r} must be a fraction in (0, 1]")
    first = solve(profile, budget, bits=bits, pins=pins, ties=ties, a_bits=a_bits, act_omega=act_omega,
                  latency=latency, time_limit=time_limit, solver=solver)
    p = _problem(profile, bits=bits, a_bits=a_bits, pins=pins, ties=ties, act_omega=act_omega, latency=latency)
    caps = budget._caps(p)
    p = _cap_activations(p, budget)
    keep = p.total_params - math.ceil(min_change * p.total_params)
    layers = profile.layers
    plans, cuts = [first], []
    for i in range(1, count + 1):
        t0 = time.perf_counter()
        prev = plans[-1].assignment()
        cuts.append(_Cut(tuple(prev[layers[m[0]].name] for m in p.units), keep))
        res = _solve(p, budget, caps, cuts=cuts, time_limit=time_limit, solver=solver)
        if res is None:
            break
        wa = _per_layer(p, res[0])
        plans.append(replace(_make_plan(p, wa, caps=caps | budget.act_cap(), budget=_budget_record(budget, caps),
                                        status=res[1],
                                        gap=res[2], seconds=time.perf_counter() - t0,
                                        label=f"mixed@{avg_bits_of(profile, wa):.2f}b-alt{i}"),
                             solver=first.solver))
    return plans


def uniform_plan(profile: Profile, w_bits: int, *, pins: Mapping[str, Any] | None = None, a_bits: int = 8,
                 ties: Sequence[Sequence[str]] | str = (),
                 latency: Mapping[str, Mapping[Any, float]] | None = None) -> Plan:
    """Every unpinned layer at (w_bits, a_bits): the baseline a mixed plan must beat.

    profile: per-layer params and Ω(bits).
    w_bits: the weight width for unpinned layers; must be one of profile.bits (Ω is needed).
    pins: pin rules (see solve; widths among profile.bits); None for default_pins, {} for none.
    a_bits: activation width for every layer (a pinned pair keeps its own).
    ties: groups sharing one candidate (a group with a pinned layer takes the pin).
    latency: layer → {(w, a): ms}, to record the plan's latency.
    """
    have = sorted(int(b) for b in profile.bits)
    if not _is_int(w_bits) or w_bits not in have:
        raise ConfigError(f"w_bits={w_bits!r} is not a profiled width; accepted: {have} "
                          "(profile with this width to get its Ω)")
    if not _is_int(a_bits):
        raise ConfigError(f"a_bits={a_bits!r} must be one integer for a uniform plan")
    p = _problem(profile, bits=None, a_bits=_act_bits(a_bits), pins=pins, ties=ties)
    want = (int(w_bits), int(a_bits))
    chosen = [want if want in al else next((c for c in al if c[1] == a_bits), al[0]) for al in p.allowed]
    wa = _per_layer(p, chosen)
    label = f"uniform-w{w_bits}" + ("" if a_bits == 8 else f"a{a_bits}")
    plan = _make_plan(p, wa, caps={}, budget={"uniform_w_bits": w_bits, "weight_bytes_limit":
                                              float(plan_weight_bytes(profile, wa))},
                      status="Uniform", gap=None, seconds=0.0, label=label)
    return plan if latency is None else replace(plan, constraints=_constraint_records(profile, wa, {}, latency))


def fixed_plan(profile: Profile, assignment: Mapping[str, Any], *, label: str, pins: Mapping[str, Any] | None = None,
               bits: Sequence[int] | None = None, budget: Budget | None = None) -> Plan:
    """A Plan for widths chosen elsewhere (a baseline allocator, a hand-written plan), with the
    same totals, Ω and constraint records as a solved plan; status "Fixed".

    profile: per-layer params, MACs and Ω(bits).
    assignment: layer name → weight width or (w_bits, a_bits) pair, for every profiled layer.
    label: the plan's short name.
    pins: pin rules the assignment must respect (see solve); None for default_pins, {} for none.
    bits: the candidate weight widths (None: profile.bits).
    budget: limits to record the plan's slack against (not enforced).
    """
    wa = _widths(profile, assignment)
    p = _problem(profile, bits=bits, a_bits=sorted({a for _, a in wa.values()}), pins=pins, ties=())
    for u, members in enumerate(p.units):
        name = profile.layers[members[0]].name
        if wa[name] not in p.allowed[u]:
            raise ConfigError(f"layer {name} at {wa[name]} is not allowed (candidates {_fmt_cands(p.allowed[u])})")
    caps = budget._caps(p) if budget is not None else {}
    record = _budget_record(budget, caps) if budget is not None else {}
    return _make_plan(p, wa, caps=caps, budget=record, status="Fixed", gap=None, seconds=0.0, label=label)


def uniform_plans_within(profile: Profile, budget: Budget, *, pins: Mapping[str, Any] | None = None,
                         a_bits: int | Sequence[int] = 8, ties: Sequence[Sequence[str]] | str = (),
                         bits: Sequence[int] | None = None,
                         latency: Mapping[str, Mapping[Any, float]] | None = None,
                         act_omega: Mapping[str, Mapping[int, float]] | None = None) -> list[Plan]:
    """Every uniform plan (each profiled weight width × each activation width) that meets every
    limit of `budget`, with the same pins and ties; their constraint records carry its limits.

    profile: per-layer params, MACs and Ω(bits).
    budget: the limits to meet (ratio limits are read between the candidates `bits`).
    pins, ties: as in solve().
    a_bits: activation width(s).
    bits: the candidate weight widths a ratio limit refers to (None: profile.bits).
    latency: layer → {(w, a): ms}; a uniform plan at a width the table lacks is left out.
    act_omega: as in solve(); validated with several activation widths, not used for the plans.
    """
    p = _problem(profile, bits=bits, a_bits=a_bits, pins=pins, ties=ties, latency=latency, act_omega=act_omega)
    caps = budget._caps(p)
    out = []
    for a in _act_bits(a_bits):
        for w in sorted(profile.bits):
            plan = uniform_plan(profile, w, pins=pins, a_bits=a, ties=ties)
            try:
                totals = _totals(profile, plan.assignment(), latency)
            except ConfigError:
                continue  # its latency was not measured: it cannot be shown to fit
            records = _constraint_records(profile, plan.assignment(), caps | budget.act_cap(), latency)
            act = records.get("act_bytes")
            if all(_within(r, totals[r], cap) for r, cap in caps.items()) and \
                    (budget.act_kb is None or act is not None and act["slack"] >= 0):
                out.append(replace(plan, constraints=records))
    return out


SWEEP_AXES = {"weight": "weight_bits", "bops": "bops"}


def sweep(profile: Profile, *, axis: str = "weight", points: int = 50, budget: Budget | None = None,
          bits: Sequence[int] | None = None, pins: Mapping[str, Any] | None = None,
          ties: Sequence[Sequence[str]] | str = (), a_bits: int | Sequence[int] = 8,
          act_omega: Mapping[str, Mapping[int, float]] | None = None,
          latency: Mapping[str, Mapping[Any, float]] | None = None,
          time_limit: float | None = None, solver: str = "auto") -> list[Plan]:
    """The optimal plan at `points` evenly spaced limits on one resource (the ε-constraint sweep).

    The limits run from the least the resource can be under the other limits to what the
    unconstrained optimum uses (above that every limit gives the same plan). Plans come back in
    sweep order, one per limit, duplicates included; see hawq.pareto for the frontier. Unlike
    solve(), ties in Σ Ω are not widened: that adds size for no change in Σ Ω, which a frontier
    of Σ Ω against size counts as dominated.

    profile, bits, pins, ties, a_bits, act_omega, latency, time_limit, solver: as in solve().
    axis: "weight" (weight bits, recorded as megabytes) or "bops" (recorded as gbops).
    points: number of limits (≥ 2).
    budget: other limits held fixed during the sweep (none on the swept resource).
    """
    if axis not in SWEEP_AXES:
        raise ConfigError(f"axis={axis!r} is not one of {sorted(SWEEP_AXES)}")
    if not _is_int(points) or points < 2:
        raise ConfigError(f"points={points!r} must be an integer ≥ 2")
    _check_time_limit(time_limit)
    r = SWEEP_AXES[axis]
    p = _problem(profile, bits=bits, a_bits=a_bits, pins=pins, ties=ties, act_omega=act_omega, latency=latency)
    fixed = budget._caps(p) if budget is not None else {}
    if budget is not None:
        p = _cap_activations(p, budget)
    if budget is not None and budget.unit_of(r) is not None:
        raise ConfigError(f"the sweep varies the {axis} limit; drop {budget.unit_of(r)} from the budget")
    if budget is not None:
        _check_feasible(p, budget, fixed)

    def usage(chosen: Sequence[Cand]) -> int:
        return sum(p.coef[r][u][p.allowed[u].index(c)] for u, c in enumerate(chosen))

    least = _ilp(p, fixed, objective=r, solver=solver) if fixed else ([al[0] for al in p.allowed], "Optimal", 0.0)
    if least is None:
        raise _jointly_infeasible(p, budget, fixed, solver)  # type: ignore[arg-type]
    lo = usage(least[0]) if fixed else int(p.lo(r))
    top = _ilp(p, fixed, time_limit=time_limit, solver=solver) if fixed else None
    hi = usage(top[0]) if top is not None else int(p.hi(r))
    unit, div = ("megabytes", 8 * MB) if axis == "weight" else ("gbops", GIGA)
    plans = []
    for i in range(points):
        t0 = time.perf_counter()
        cap = lo + (hi - lo) * i // (points - 1)
        caps = {**fixed, r: cap}
        res = _ilp(p, caps, time_limit=time_limit, solver=solver)
        if res is None or not _fits(p, res[0], caps):
            raise InfeasibleBudgetError(f"the sweep found no plan at {unit}={cap / div:g}, which a plan reaches; "
                                        "this is a solver failure, please report it")
        wa = _per_layer(p, res[0])
        record = {**(budget.limits() if budget is not None else {}), unit: cap / div}
        if r == "weight_bits":
            record["weight_bytes_limit"] = cap / 8
        plans.append(replace(_make_plan(p, wa, caps=caps | (budget.act_cap() if budget else {}), budget=record,
                                        status=res[1], gap=res[2],
                                        seconds=time.perf_counter() - t0,
                                        label=f"mixed@{avg_bits_of(profile, wa):.2f}b"),
                             solver=solver_backend(solver, p.free, p.quadratic)))
    return plans
