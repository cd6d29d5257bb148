"""What the solver may choose, as one value: SolveSpec (candidate widths, pins, ties, activation
sensitivities, a latency table, the MIP solver and its time limit), and the checks that resolve it
against a profile (which widths exist, which layers a pin or a tie names)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import ArtifactError, ConfigError
from ..graph import match_layers
from ..quant import WEIGHT_ONLY
from ..target import TARGETS, runs_as
from .mip import SOLVERS
from .sizes import Cand, Pin, is_int

if TYPE_CHECKING:
    from ..sensitivity import Profile

DEFAULT_PINS = "default"  # pins="default": the first and the last layer at 8 bits (default_pins)
GRAPH_TIES = ("inputs", "residual", "graph")


@dataclass(frozen=True)
class SolveSpec:
    """What a plan may be made of, and how the MIP is solved; every verb of the solver takes one.

    bits: candidate weight widths, a subset of the profile's bits; None for all of them.
    a_bits: candidate activation width(s); the candidates are bits × a_bits.
    pins: layer name or regular expression (matching whole names) → weight width or (w_bits,
        a_bits) pair; later rules override earlier ones. DEFAULT_PINS ("default") pins the first
        and the last layer to 8 bits; {} pins nothing.
    ties: groups of layer names that must share one candidate, or one of GRAPH_TIES ("inputs":
        layers reading the same tensor, "residual": layers meeting at a residual add, "graph":
        both); overlapping groups merge; a group with a pinned layer takes that pin.
    act_omega: layer name → {a_bits: Ω_a}, added to the weights' Ω; needed when a_bits has several
        widths and the profile has no activation sensitivities for them (None: the profile's).
    latency: layer name → {(w_bits, a_bits): ms}, for a latency_ms limit.
    solver: "auto" (CBC up to 300 free units, HiGHS beyond or for cross-layer terms when highspy
        is installed), "highs" or "cbc"; see mip.solver_backend.
    time_limit: solver wall-clock limit in seconds; None proves optimality. When hit, the best plan
        found comes back with status "Feasible" and its relative gap.
    target: the runtime the plan is for ("ort" | "tensorrt"), or None for any. Each layer then
        chooses among what that runtime runs (hawq.target.runs_as): on tensorrt a conv takes W8A8,
        a 3-4-bit Linear becomes INT4 weight-only (W4A32), INT2 is not offered. The plan is priced
        as the runtime stores it, and the legaliser changes nothing at export.
    The checks that need no profile run here; those against a profile in problem.build_problem.
    """

    bits: Sequence[int] | None = None
    a_bits: int | Sequence[int] = 8
    pins: Mapping[str, Any] | str = DEFAULT_PINS
    ties: Sequence[Sequence[str]] | str = ()
    act_omega: Mapping[str, Mapping[int, float]] | None = None
    latency: Mapping[str, Mapping[Any, float]] | None = None
    solver: str = "auto"
    time_limit: float | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        if self.bits is not None and (isinstance(self.bits, (str, bytes)) or not isinstance(self.bits, Sequence)
                                      or not all(is_int(b) for b in self.bits)):
            raise ConfigError(f"bits must be a sequence of integers, not {self.bits!r}; e.g. (2, 4, 8)")
        act_bits(self.a_bits)
        if isinstance(self.pins, str) and self.pins != DEFAULT_PINS or \
                not isinstance(self.pins, (str, Mapping)):
            raise ConfigError(f"pins must map layer names or patterns to bits, e.g. {{'conv1': 8, 'layer3\\..*': 4}}, "
                              f"or be {DEFAULT_PINS!r} (first and last layer at 8 bits) or {{}} (none); not {self.pins!r}")
        if isinstance(self.ties, str) and self.ties not in GRAPH_TIES:
            raise ConfigError(f"ties must be one of {', '.join(map(repr, GRAPH_TIES))} or a list of lists of layer "
                              f"names, not {self.ties!r}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver={self.solver!r} is not one of {', '.join(SOLVERS)}")
        if self.target is not None and self.target not in TARGETS:
            raise ConfigError(f"target={self.target!r} must be one of {', '.join(TARGETS)} or None (any runtime)")
        t = self.time_limit
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0):
            raise ConfigError(f"time_limit={t!r} must be a positive number of seconds or None")


def candidate_bits(profile: Profile, bits: Sequence[int] | None) -> tuple[int, ...]:
    """The sorted candidate weight widths: `bits` (a subset of profile.bits) or profile.bits.

    profile: its `bits` are the widths Ω was computed for.
    bits: the widths the solver may choose; None for all of profile.bits.
    """
    have = tuple(sorted({int(b) for b in profile.bits}))
    if bits is None:
        return have
    if isinstance(bits, (str, bytes)) or not all(is_int(b) for b in bits):
        raise ConfigError(f"bits must be a sequence of integers, not {bits!r}; accepted: a subset of {list(have)}")
    cand = tuple(sorted({int(b) for b in bits}))
    bad = [b for b in cand if b not in have]
    if not cand or bad:
        raise ConfigError(f"candidate bits {list(bits)} must be a non-empty subset of the profiled bits {list(have)}; "
                          "profile again with the missing widths or drop them")
    return cand


def act_bits(a_bits: int | Sequence[int]) -> tuple[int, ...]:
    """The sorted candidate activation widths, each an integer in 2..16 or WEIGHT_ONLY (32: the
    layer's input stays float, weight-only quantization).

    a_bits: one width (usually 8) or a sequence of widths.
    """
    seq = (a_bits,) if is_int(a_bits) else a_bits
    if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) or not seq or \
            not all(is_int(a) and (2 <= a <= 16 or a == WEIGHT_ONLY) for a in seq):
        raise ConfigError(f"a_bits={a_bits!r} must be an integer in 2..16 (usually 8), {WEIGHT_ONLY} for weight-only "
                          "(inputs left in float), or a list of them, e.g. (4, 8)")
    return tuple(sorted({int(a) for a in seq}))


def candidate_pairs(profile: Profile, bits: Sequence[int] | None = None,
                    a_bits: int | Sequence[int] = 8) -> tuple[Cand, ...]:
    """The candidates (w_bits, a_bits): weight widths × activation widths, sorted.

    profile: its `bits` are the weight widths Ω was computed for.
    bits: candidate weight widths (a subset of profile.bits); None for all of them.
    a_bits: one activation width or a sequence of them.
    """
    return tuple((w, a) for w in candidate_bits(profile, bits) for a in act_bits(a_bits))


def fmt_cands(cands: Sequence[Cand]) -> str:
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
    if is_int(v):
        return int(v)
    if isinstance(v, Sequence) and not isinstance(v, (str, bytes)) and len(v) == 2 and all(is_int(b) for b in v):
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
        raise ConfigError(f"pin {key}={v!r} is not one of the candidate bits ({fmt_cands(cands)}); "
                          "pin to a candidate, add it to bits, or pass pins={} for no pins")
    return allowed


def resolve_pins(profile: Profile, pins: Mapping[str, Any] | str, cands: Sequence[Cand]
                 ) -> tuple[dict[str, Pin], dict[str, tuple[Cand, ...]], dict[str, Pin]]:
    """Resolve pin rules to layers: (layer → pin, layer → allowed candidates, the rules as given).

    A rule's key is a layer name or, if no layer has that name, a regular expression that must
    match whole layer names; rules apply in order, so a later rule overrides an earlier one for the
    layers both match. DEFAULT_PINS means default_pins (first and last layer at 8 bits); {} pins
    nothing.

    profile: the layers that may be pinned.
    pins: rule → weight width or (w_bits, a_bits).
    cands: all candidates.
    """
    rules = default_pins(profile) if pins == DEFAULT_PINS else pins
    names = [l.name for l in profile.layers]
    per_layer: dict[str, tuple[Pin, tuple[Cand, ...]]] = {}
    given: dict[str, Pin] = {}
    for key, raw in rules.items():
        if not isinstance(key, str):
            raise ConfigError(f"pin keys must be layer names or regular expressions, not {key!r}")
        v = _pin_value(key, raw)
        hit = match_layers(key, names, "pinned layers")
        allowed = _pin_allowed(key, v, cands)
        given[key] = v
        per_layer.update({n: (v, allowed) for n in hit})
    return ({n: per_layer[n][0] for n in names if n in per_layer},
            {n: per_layer[n][1] for n in names if n in per_layer}, given)


def target_candidates(profile: Profile, target: str | None, cands: Sequence[Cand],
                      allowed_of: Mapping[str, Sequence[Cand]], pin_of: Mapping[str, Pin]) -> dict[str, tuple[Cand, ...]]:
    """Per layer, the candidates it may take: those its pins allow (else `cands`), each replaced by
    what `target` runs for that layer (hawq.target.runs_as; as given for None). ConfigError where a
    pin asks for a weight width the target does not run for that layer.

    profile: the layers (kind, weight shape).
    target: a runtime name, or None.
    cands: all candidates the spec asks for.
    allowed_of: layer → the candidates its pin allows (pinned layers only).
    pin_of: layer → its pin.
    """
    out = {}
    for l in profile.layers:
        asked = tuple(allowed_of.get(l.name, cands))
        if target is None:
            out[l.name] = asked
            continue
        runs = {c: runs_as(target, l.kind, l.weight_shape, c) for c in asked}
        if l.name in pin_of and not any(r[0] == c[0] for c, (r, _) in runs.items()):
            r, why = runs[asked[0]]
            raise ConfigError(f"pin {l.name}={pin_of[l.name]!r}: {target} does not run that weight width on this "
                              f"{l.kind} ({why}); pin it to W{r[0]} or solve without target={target!r}")
        out[l.name] = tuple(sorted({r for r, _ in runs.values()}))
    return out


def tie_groups(profile: Profile, ties: Sequence[Sequence[str]] | str) -> tuple[tuple[str, ...], ...]:
    """Merge overlapping ties into disjoint groups (≥ 2 layers each), in profile order.

    profile: the layers that may be tied.
    ties: groups of layer names that must share one candidate, or one of GRAPH_TIES: "inputs"
        (profile.groups: layers that read the same input tensor), "residual"
        (profile.residual: layers whose outputs meet at a residual add) or "graph" (both).
    """
    if isinstance(ties, str):  # one of GRAPH_TIES (SolveSpec checked it)
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


def act_omegas(profile: Profile, act_omega: Mapping[str, Mapping[int, float]] | None,
               a_set: Sequence[int]) -> dict[str, dict[int, float]]:
    """Validated activation Ω per layer and width; zeros when one width is fixed and none is given,
    and always 0 at WEIGHT_ONLY (a float input is not rounded).

    profile: the layers.
    act_omega: layer name → {a_bits: Ω_a}, or None for the profile's (when it has every width).
    a_set: the candidate activation widths.
    """
    if WEIGHT_ONLY in a_set:
        rows = act_omegas(profile, act_omega, [a for a in a_set if a != WEIGHT_ONLY]) if len(a_set) > 1 else \
            {l.name: {} for l in profile.layers}
        return {n: {**row, WEIGHT_ONLY: 0.0} for n, row in rows.items()}
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


def latency_rows(profile: Profile, latency: Mapping[str, Mapping[Any, float]] | None,
                  cands: Mapping[str, Sequence[Cand]]) -> dict[str, dict[Cand, float]] | None:
    """Validated latency table: layer name → {(w, a): ms} for every layer and its candidates.

    profile: the layers.
    latency: layer name → {(w_bits, a_bits): milliseconds}, or None.
    cands: layer name → the candidates the table must cover for it.
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
        vals = {c: row.get(c) for c in cands[l.name]}
        bad = [c for c, v in vals.items() if isinstance(v, bool) or not isinstance(v, numbers.Real)
               or not math.isfinite(v) or v < 0]
        if bad:
            raise ConfigError(f"the latency table lacks a finite time ≥ 0 for layer {l.name} at {fmt_cands(bad)}; "
                              "measure every candidate")
        out[l.name] = {c: float(v) for c, v in vals.items()}
    return out


def check_omega(profile: Profile, widths: Sequence[int]) -> None:
    """ArtifactError if some Ω the ILP needs is missing or not finite.

    profile: the profiled layers.
    widths: the candidate weight widths.
    """
    for l in profile.layers:
        for b in widths:
            v = l.omega.get(b)
            if v is None or not math.isfinite(v):
                raise ArtifactError(f"layer {l.name} has Ω({b} bits) = {v!r}; regenerate the profile")
