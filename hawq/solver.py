"""Budget and Plan; the one-hot ILP that picks a weight bit width per layer (PuLP + bundled CBC).

For layer l and candidate bit width b, binary x[l,b] selects b; Σ_b x[l,b] = 1; the plan
minimises Σ Ω_l(b)·x[l,b] subject to Σ params_l·b/8·x[l,b] ≤ the weight-byte limit. Pinned layers
are fixed, tied layers share one bit width. Sizes are kept in integer *bits* (params·b) so the
budget constraint and the feasibility check are exact.
"""
from __future__ import annotations

import math
import numbers
import time
import warnings
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pulp

from .artifacts import fingerprint_obj, read_json, write_json
from .errors import ArtifactError, ConfigError, InfeasibleBudgetError

if TYPE_CHECKING:
    from .sensitivity import Profile

FORMAT, VERSION = "plan", 1
MB = 1e6  # bytes in a megabyte
BUDGET_KINDS = ("megabytes", "avg_bits", "ratio")
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


def _total_bits(profile: Profile, w_bits: Mapping[str, int]) -> int:
    """Σ params·b over all layers of `profile` (an exact integer).

    profile: the layers and their parameter counts.
    w_bits: weight bit width for every layer of the profile, by name.
    """
    missing = [l.name for l in profile.layers if l.name not in w_bits]
    if missing:
        raise ConfigError(f"no bit width given for layers {', '.join(missing[:5])}; give one for every profiled layer")
    return sum(l.params * int(w_bits[l.name]) for l in profile.layers)


def plan_weight_bytes(profile: Profile, w_bits: Mapping[str, int]) -> int:
    """Weight storage in bytes, ⌈Σ params·b / 8⌉ (weights only, no scales or biases).

    profile: the layers and their parameter counts.
    w_bits: weight bit width for every layer of the profile, by name.
    """
    return -(-_total_bits(profile, w_bits) // 8)


def avg_bits_of(profile: Profile, w_bits: Mapping[str, int]) -> float:
    """Parameter-weighted mean weight bit width, Σ params·b / Σ params.

    profile: the layers and their parameter counts.
    w_bits: weight bit width for every layer of the profile, by name.
    """
    n = sum(l.params for l in profile.layers)
    return _total_bits(profile, w_bits) / n if n else 0.0


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
    """Largest integer bit count within `limit_bits`, forgiving float round-off (1e-9 relative).

    limit_bits: the budget in bits, as a float.
    """
    return math.floor(limit_bits + 1e-9 * max(1.0, abs(limit_bits)))


# ---------------------------------------------------------------------------------------------
# candidates, pins, ties


def _candidate_bits(profile: Profile, bits: Sequence[int] | None) -> tuple[int, ...]:
    """The sorted candidate bit widths: `bits` (a subset of profile.bits) or profile.bits.

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


def default_pins(profile: Profile, bits: int = 8) -> dict[str, int]:
    """Pin the first and the last layer (execution order: input conv, output linear) to `bits`.

    profile: the layers in execution order.
    bits: the width for both pinned layers.
    """
    return {profile.layers[0].name: bits, profile.layers[-1].name: bits}


def _resolve_pins(profile: Profile, pins: Mapping[str, int] | None, cand: Sequence[int]) -> dict[str, int]:
    """Validated pins, in profile order: None → default_pins, {} → none.

    profile: the layers that may be pinned.
    pins: layer name → bit width, or None for the default (first and last layer at 8 bits).
    cand: the candidate bit widths a pin must be one of.
    """
    pins = default_pins(profile) if pins is None else pins
    if not isinstance(pins, Mapping):
        raise ConfigError(f"pins must map layer names to bits, e.g. {{'conv1': 8}}, not {pins!r}")
    names = [l.name for l in profile.layers]
    unknown = [n for n in pins if n not in names]
    if unknown:
        raise ConfigError(f"pinned layers {unknown} are not in the profile; accepted names: {names[:8]}"
                          f"{' …' if len(names) > 8 else ''}")
    for n, b in pins.items():
        if not _is_int(b) or b not in cand:
            raise ConfigError(f"pin {n}={b!r} is not one of the candidate bits {list(cand)}; "
                              "pin to a candidate, add it to bits, or pass pins={} for no pins")
    return {n: int(pins[n]) for n in names if n in pins}


def _tie_groups(profile: Profile, ties: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    """Merge overlapping ties into disjoint groups (≥ 2 layers each), in profile order.

    profile: the layers that may be tied.
    ties: groups of layer names that must share one bit width.
    """
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


def _fixed_bits(pins: Mapping[str, int], groups: Sequence[Sequence[str]]) -> dict[str, int]:
    """Layers whose width is fixed: the pinned ones and every layer tied to a pinned one.

    pins: validated pins, layer name → bits.
    groups: disjoint tie groups.
    """
    fixed = dict(pins)
    for g in groups:
        widths = {pins[n] for n in g if n in pins}
        if len(widths) > 1:
            raise ConfigError(f"tied layers {list(g)} are pinned to different widths "
                              f"{ {n: pins[n] for n in g if n in pins} }; pin them alike or untie them")
        if widths:
            w = widths.pop()
            fixed.update({n: w for n in g})
    return fixed


@dataclass(frozen=True)
class _Setup:
    """Everything the budget and the ILP need, validated once."""

    cand: tuple[int, ...]
    pins: dict[str, int]
    groups: tuple[tuple[str, ...], ...]
    fixed: dict[str, int]
    lo_bits: int  # smallest feasible Σ params·b
    hi_bits: int  # largest Σ params·b
    total_params: int


def _setup(profile: Profile, pins: Mapping[str, int] | None, bits: Sequence[int] | None,
           ties: Sequence[Sequence[str]]) -> _Setup:
    """Validate candidates, pins and ties; compute the smallest and largest plan sizes.

    profile: the profiled layers.
    pins: layer name → bits; None for default_pins, {} for none.
    bits: candidate widths (subset of profile.bits); None for all.
    ties: groups of layer names that must share one width.
    """
    cand = _candidate_bits(profile, bits)
    p = _resolve_pins(profile, pins, cand)
    groups = _tie_groups(profile, ties)
    fixed = _fixed_bits(p, groups)
    lo = sum(l.params * fixed.get(l.name, cand[0]) for l in profile.layers)
    hi = sum(l.params * fixed.get(l.name, cand[-1]) for l in profile.layers)
    return _Setup(cand, p, groups, fixed, lo, hi, sum(l.params for l in profile.layers))


# ---------------------------------------------------------------------------------------------
# Budget


@dataclass(frozen=True)
class Budget:
    """A weight-size budget, given in exactly one unit.

    megabytes: weight storage limit in MB (1 MB = 1e6 bytes; weights only, params·b/8 per layer).
    avg_bits: limit on the parameter-weighted mean bit width, Σ params·b / Σ params.
    ratio: r in [0, 1] between the smallest plan (every free layer at the lowest candidate) and the
        largest (every free layer at the highest); pinned layers keep their pin in both.
    """

    megabytes: float | None = None
    avg_bits: float | None = None
    ratio: float | None = None

    def __post_init__(self) -> None:
        given = {k: getattr(self, k) for k in BUDGET_KINDS if getattr(self, k) is not None}
        if len(given) != 1:
            raise ConfigError(f"a budget needs exactly one of {', '.join(BUDGET_KINDS)}; got "
                              f"{given or 'none'}")
        (kind, v), = given.items()
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ConfigError(f"budget {kind}={v!r} must be a finite number")
        if kind == "ratio" and not 0.0 <= v <= 1.0:
            raise ConfigError(f"budget ratio={v!r} must be in [0, 1] (0: smallest plan, 1: largest)")
        if kind != "ratio" and v <= 0:
            raise ConfigError(f"budget {kind}={v!r} must be positive")

    @property
    def kind(self) -> str:
        """The unit given: "megabytes", "avg_bits" or "ratio"."""
        return next(k for k in BUDGET_KINDS if getattr(self, k) is not None)

    @property
    def value(self) -> float:
        """The number given, in the unit of `kind`."""
        return float(getattr(self, self.kind))

    def as_dict(self) -> dict[str, float]:
        """{kind: value}, e.g. {"avg_bits": 4.0}."""
        return {self.kind: self.value}

    def _limit_bits(self, s: _Setup) -> float:
        """The limit in bits (Σ params·b), as a float.

        s: validated setup of the profile, pins and ties.
        """
        if self.kind == "megabytes":
            return self.value * MB * 8
        if self.kind == "avg_bits":
            return self.value * s.total_params
        return s.lo_bits + self.value * (s.hi_bits - s.lo_bits)

    def _value_at(self, total_bits: int, s: _Setup) -> float:
        """The budget value, in this budget's unit, that allows exactly `total_bits`.

        total_bits: a plan size Σ params·b.
        s: validated setup of the profile, pins and ties.
        """
        if self.kind == "megabytes":
            return total_bits / 8 / MB
        if self.kind == "avg_bits":
            return total_bits / s.total_params if s.total_params else 0.0
        return (total_bits - s.lo_bits) / (s.hi_bits - s.lo_bits) if s.hi_bits > s.lo_bits else 0.0

    def weight_bytes_limit(self, profile: Profile, pins: Mapping[str, int] | None, *,
                           bits: Sequence[int] | None = None, ties: Sequence[Sequence[str]] = ()) -> float:
        """The weight-byte limit this budget means for `profile`.

        profile: the profiled layers (params per layer).
        pins: layer name → bits (None: default_pins; {}: none); matters for `ratio` only.
        bits: candidate widths (subset of profile.bits; None: all); matters for `ratio` only.
        ties: groups of layers sharing one width; matters for `ratio` only (a group tied to a
            pinned layer is fixed).
        """
        return self._limit_bits(_setup(profile, pins, bits, ties)) / 8


# ---------------------------------------------------------------------------------------------
# Plan


@dataclass(frozen=True)
class LayerChoice:
    """The chosen widths of one layer.

    name: fully qualified module name.
    w_bits: weight bit width.
    a_bits: activation bit width of the layer's input.
    params: weight parameter count.
    omega: Ω at w_bits (second-order loss-increase estimate).
    pinned: whether the user pinned this layer's width.
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
    budget: what was asked (e.g. {"avg_bits": 4.0}) plus the resulting "weight_bytes_limit".
    weight_bytes: ⌈Σ params·w_bits / 8⌉.
    avg_bits: Σ params·w_bits / Σ params.
    omega: Σ Ω over layers at their chosen widths.
    status: "Optimal" (proven), "Feasible" (time limit hit) or "Uniform" (not solved).
    solve_seconds: wall time of solve().
    pins: layer name → pinned width.
    ties: groups of layers that share one width.
    label: short name, e.g. "mixed@4.00b" or "uniform-w4".
    profile_fingerprint: fingerprint of the profile's fingerprints (model, data, settings).
    """

    layers: tuple[LayerChoice, ...]
    budget: dict[str, Any]
    weight_bytes: int
    avg_bits: float
    omega: float
    status: str
    solve_seconds: float
    pins: dict[str, int] = field(default_factory=dict)
    ties: tuple[tuple[str, ...], ...] = ()
    label: str = ""
    profile_fingerprint: str = ""

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
        return {
            "format": f"hawq.{FORMAT}/{VERSION}", "label": self.label, "status": self.status,
            "weight_bytes": self.weight_bytes, "avg_bits": self.avg_bits, "omega": self.omega,
            "solve_seconds": self.solve_seconds, "budget": dict(self.budget), "pins": dict(self.pins),
            "ties": [list(t) for t in self.ties], "profile_fingerprint": self.profile_fingerprint,
            "layers": [{"name": l.name, "w_bits": l.w_bits, "a_bits": l.a_bits, "params": l.params,
                        "omega": l.omega, "pinned": l.pinned} for l in self.layers],
        }

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
            plan = cls(
                layers=layers, budget={_str(k): v for k, v in d["budget"].items()},
                weight_bytes=_int(d["weight_bytes"]), avg_bits=_float(d["avg_bits"]), omega=_float(d["omega"]),
                status=_str(d["status"]), solve_seconds=_float(d["solve_seconds"]),
                pins={_str(k): _int(v) for k, v in d["pins"].items()},
                ties=tuple(tuple(_str(n) for n in t) for t in d["ties"]), label=_str(d["label"]),
                profile_fingerprint=_str(d["profile_fingerprint"]),
            )
            _check_consistent(plan)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
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


def _check_consistent(plan: Plan) -> None:
    """ValueError if the plan's layers contradict its totals or repeat a name.

    plan: a freshly parsed plan.
    """
    names = [l.name for l in plan.layers]
    if not names or len(set(names)) != len(names):
        raise ValueError("layers must be non-empty with unique names")
    total = sum(l.params * l.w_bits for l in plan.layers)
    if -(-total // 8) != plan.weight_bytes:
        raise ValueError(f"weight_bytes {plan.weight_bytes} does not match its layers ({-(-total // 8)})")


def profile_fingerprint(profile: Profile) -> str:
    """A short hash of the profile's fingerprints (model weights, data, settings).

    profile: the profile a plan is made from.
    """
    return fingerprint_obj(getattr(profile, "fingerprints", {}))


def _make_plan(profile: Profile, w_bits: Mapping[str, int], *, a_bits: int, pins: Mapping[str, int],
               ties: Sequence[Sequence[str]], budget: dict[str, Any], status: str, seconds: float,
               label: str) -> Plan:
    """Assemble a Plan from chosen widths; totals computed exactly.

    profile: the profiled layers (params, Ω).
    w_bits: layer name → chosen weight width (every layer).
    a_bits: activation width for every layer.
    pins: validated pins.
    ties: tie groups.
    budget: the budget record to store.
    status: solver status string.
    seconds: solve wall time.
    label: plan label.
    """
    layers = tuple(LayerChoice(l.name, int(w_bits[l.name]), a_bits, int(l.params), float(l.omega[w_bits[l.name]]),
                               l.name in pins) for l in profile.layers)
    return Plan(layers=layers, budget=budget, weight_bytes=plan_weight_bytes(profile, w_bits),
                avg_bits=avg_bits_of(profile, w_bits), omega=math.fsum(l.omega for l in layers), status=status,
                solve_seconds=seconds, pins=dict(pins), ties=tuple(tuple(t) for t in ties), label=label,
                profile_fingerprint=profile_fingerprint(profile))


def _check_a_bits(a_bits: int) -> int:
    """Validate the activation width.

    a_bits: activation bit width (2..16).
    """
    if not _is_int(a_bits) or not 2 <= a_bits <= 16:
        raise ConfigError(f"a_bits={a_bits!r} must be an integer in 2..16 (usually 8)")
    return int(a_bits)


# ---------------------------------------------------------------------------------------------
# solving


def _check_omega(profile: Profile, cand: Sequence[int]) -> None:
    """ArtifactError if some Ω the ILP needs is missing or not finite.

    profile: the profiled layers.
    cand: the candidate widths.
    """
    for l in profile.layers:
        for b in cand:
            v = l.omega.get(b)
            if v is None or not math.isfinite(v):
                raise ArtifactError(f"layer {l.name} has Ω({b} bits) = {v!r}; regenerate the profile")


def _infeasible(budget: Budget, s: _Setup) -> InfeasibleBudgetError:
    """The error for a budget below the smallest plan, naming the smallest feasible value.

    budget: the budget asked for.
    s: validated setup.
    """
    least = _ceil_sig(budget._value_at(s.lo_bits, s))
    pinned = ", ".join(f"{n}={b}" for n, b in s.pins.items()) or "none"
    return InfeasibleBudgetError(
        f"budget {budget.kind}={budget.value:g} is infeasible; the smallest feasible budget is "
        f"{budget.kind}={least!r} (free layers at {s.cand[0]} bits; pinned: {pinned}); "
        "raise the budget, add a lower candidate bit width, or pin fewer layers")


def _cbc(time_limit: float | None) -> pulp.LpSolver:
    """PuLP's bundled CBC, quiet, proving optimality exactly (see _CBC_OPTIONS).

    time_limit: wall-clock limit in seconds, or None.
    """
    with warnings.catch_warnings():  # PuLP 3.x announces PULP_CBC_CMD's removal in 4.0
        warnings.filterwarnings("ignore", message="PULP_CBC_CMD is deprecated", category=DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=0, gapAbs=0, options=list(_CBC_OPTIONS))


def _solve_ilp(profile: Profile, s: _Setup, free_bits: int, time_limit: float | None) -> tuple[dict[str, int], str]:
    """Run CBC on the one-hot ILP for the free layers; returns (name → bits, status).

    profile: the profiled layers.
    s: validated setup (candidates, fixed layers, ties).
    free_bits: the bits left for the free layers, Σ params·b ≤ free_bits.
    time_limit: CBC time limit in seconds, or None.
    """
    free = [(i, l) for i, l in enumerate(profile.layers) if l.name not in s.fixed]
    base = {l.name: min(l.omega[b] for b in s.cand) for _, l in free}
    cost = {(l.name, b): l.omega[b] - base[l.name] for _, l in free for b in s.cand}
    scale = max(cost.values(), default=0.0) or 1.0  # Ω spans 1e-8..1e2: normalise for CBC tolerances
    prob = pulp.LpProblem("hawq_bits", pulp.LpMinimize)
    x = {(l.name, b): prob.add_variable(f"x_{i}_{b}", cat=pulp.LpBinary) for i, l in free for b in s.cand}
    prob += pulp.lpSum((cost[k] / scale) * v for k, v in x.items())
    for _, l in free:
        prob += pulp.lpSum(x[l.name, b] for b in s.cand) == 1
    prob += pulp.lpSum(l.params * b * x[l.name, b] for _, l in free for b in s.cand) <= free_bits
    for g in s.groups:
        if g[0] not in s.fixed:
            for n in g[1:]:
                for b in s.cand:
                    prob += x[n, b] == x[g[0], b]
    prob.solve(_cbc(time_limit))
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        if time_limit is not None:
            raise ConfigError(f"CBC found no plan within time_limit={time_limit}s; raise the time limit")
        raise InfeasibleBudgetError(f"CBC reports {pulp.LpStatus[prob.status]}; try a larger budget")
    chosen = {l.name: max(s.cand, key=lambda b: x[l.name, b].varValue or 0.0) for _, l in free}
    return chosen, "Optimal" if prob.sol_status == pulp.LpSolutionOptimal else "Feasible"


def solve(profile: Profile, budget: Budget, *, bits: Sequence[int] | None = None,
          pins: Mapping[str, int] | None = None, ties: Sequence[Sequence[str]] = (), a_bits: int = 8,
          time_limit: float | None = None) -> Plan:
    """The plan of least total Ω whose weights fit the budget (one-hot ILP, CBC).

    profile: per-layer params and Ω(bits), layers in execution order.
    budget: the weight-size limit (megabytes, avg_bits or ratio).
    bits: candidate weight widths, a subset of profile.bits; None for all of them.
    pins: layer name → fixed width (must be a candidate); None pins the first and last layer to
        8 bits (default_pins); {} pins nothing.
    ties: groups of layer names that must share one width (e.g. profile.groups); overlapping
        groups merge; a group with a pinned layer takes that pin.
    a_bits: activation width recorded for every layer.
    time_limit: CBC wall-clock limit in seconds; None for no limit. If hit, the best plan found is
        returned with status "Feasible".
    Raises InfeasibleBudgetError (naming the smallest feasible budget) when nothing fits, and
    ConfigError for bad bits, pins, ties or options.
    """
    t0 = time.perf_counter()
    if not isinstance(budget, Budget):
        raise ConfigError(f"budget must be a hawq Budget, e.g. Budget(avg_bits=4), not {budget!r}")
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))
                                   or not time_limit > 0):
        raise ConfigError(f"time_limit={time_limit!r} must be a positive number of seconds or None")
    a_bits = _check_a_bits(a_bits)
    s = _setup(profile, pins, bits, ties)
    _check_omega(profile, s.cand)
    limit_bits = budget._limit_bits(s)
    if _floor_bits(limit_bits) < s.lo_bits:
        raise _infeasible(budget, s)
    fixed_total = sum(l.params * s.fixed[l.name] for l in profile.layers if l.name in s.fixed)
    free_bits = _floor_bits(limit_bits) - fixed_total
    chosen, status = ({}, "Optimal") if len(s.fixed) == len(profile.layers) else \
        _solve_ilp(profile, s, free_bits, time_limit)
    w_bits = {l.name: s.fixed.get(l.name, chosen.get(l.name)) for l in profile.layers}
    if _total_bits(profile, w_bits) > _floor_bits(limit_bits):  # guard against solver tolerances
        raise InfeasibleBudgetError("the solver returned a plan over the budget; raise the budget slightly")
    return _make_plan(profile, w_bits, a_bits=a_bits, pins=s.pins, ties=s.groups,
                      budget={**budget.as_dict(), "weight_bytes_limit": limit_bits / 8}, status=status,
                      seconds=time.perf_counter() - t0, label=f"mixed@{avg_bits_of(profile, w_bits):.2f}b")


def uniform_plan(profile: Profile, w_bits: int, *, pins: Mapping[str, int] | None = None,
                 a_bits: int = 8) -> Plan:
    """Every unpinned layer at `w_bits`: the baseline a mixed plan must beat.

    profile: per-layer params and Ω(bits).
    w_bits: the weight width for unpinned layers; must be one of profile.bits (Ω is needed).
    pins: layer name → fixed width (one of profile.bits); None for default_pins, {} for none.
    a_bits: activation width recorded for every layer.
    """
    have = sorted(int(b) for b in profile.bits)
    if not _is_int(w_bits) or w_bits not in have:
        raise ConfigError(f"w_bits={w_bits!r} is not a profiled width; accepted: {have} "
                          "(profile with this width to get its Ω)")
    a_bits = _check_a_bits(a_bits)
    p = _resolve_pins(profile, pins, have)
    chosen = {l.name: p.get(l.name, int(w_bits)) for l in profile.layers}
    nbytes = plan_weight_bytes(profile, chosen)
    return _make_plan(profile, chosen, a_bits=a_bits, pins=p, ties=(),
                      budget={"uniform_w_bits": w_bits, "weight_bytes_limit": float(nbytes)}, status="Uniform",
                      seconds=0.0, label=f"uniform-w{w_bits}")
