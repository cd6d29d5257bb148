"""Plan: the per-layer widths a solve chose, with its totals, constraint records and solver
status; its JSON form (hawq.plan/1) and the checks that a loaded plan is whole and consistent."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .. import quant
from ..artifacts import JsonArtifact, fingerprint_obj
from ..errors import ArtifactError
from ..target import TARGETS
from .sizes import Cand, Pin, is_int

if TYPE_CHECKING:
    from ..sensitivity import Profile

FORMAT, VERSION = "plan", 1
LOSS_MODELS = ("additive", "quadratic")


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
class Plan(JsonArtifact):
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
    float_layers: quantizable layers of the model the profile left out (profile(layers=, exclude=)):
        not in `layers`, kept in float by the rewriter, not counted in the totals.
    target: the runtime whose candidates each layer chose from (SolveSpec.target), "" for any.
    """

    KIND, VERSION = FORMAT, VERSION

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
    float_layers: tuple[str, ...] = ()
    target: str = ""

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
            "format": self.format(), "label": self.label, "status": self.status,
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
        if self.float_layers:
            d["float_layers"] = list(self.float_layers)
        if self.target:
            d["target"] = self.target
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
                float_layers=tuple(_str(n) for n in d.get("float_layers", ())),
                target=_str(d.get("target", "")),
            )
            _check_consistent(plan, d)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise ArtifactError(f"malformed plan ({e.__class__.__name__}: {e}); regenerate it with `hawq solve`") from e
        return plan


def _pin_json(v: Pin) -> int | list[int]:
    """A pin as JSON: an int weight width or a [w_bits, a_bits] list.

    v: a normalised pin.
    """
    return v if isinstance(v, int) else list(v)


def _pin_load(v: Any) -> Pin:
    """A pin from JSON (an int or a pair of ints), else TypeError.

    v: the decoded JSON value.
    """
    if is_int(v):
        return int(v)
    if isinstance(v, list) and len(v) == 2:
        return (_int(v[0]), _int(v[1]))
    raise TypeError(f"expected a width or a [w_bits, a_bits] pair, got {v!r}")


def _int(v: Any) -> int:
    """`v` if it is an integer (not a bool), else TypeError (a malformed plan field).

    v: the decoded JSON value.
    """
    if not is_int(v):
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
    if set(plan.float_layers) & set(names):
        raise ValueError(f"float_layers {sorted(set(plan.float_layers) & set(names))} are also planned layers")
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
    if plan.target and plan.target not in TARGETS:
        raise ValueError(f"target {plan.target!r} is not one of {', '.join(TARGETS)}")
    if plan.loss_model not in LOSS_MODELS:
        raise ValueError(f"loss_model {plan.loss_model!r} is not one of {', '.join(LOSS_MODELS)}")
    if "objective" in d and _float(d["objective"]) != plan.omega:
        raise ValueError(f"objective {d['objective']} differs from omega {plan.omega}")


def profile_fingerprint(profile: Profile) -> str:
    """A short hash of the profile's fingerprints (model weights, data, settings).

    profile: the profile a plan is made from.
    """
    return fingerprint_obj(getattr(profile, "fingerprints", {}))
