"""Exact size arithmetic of a plan: weight bits and bytes, BOPs, peak activation bytes, latency
sums, and the integer-exact limit checks the solver and the records share."""
from __future__ import annotations

import math
import numbers
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any, Mapping, Union

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..sensitivity import Profile

MB = 1e6  # bytes in a megabyte
GIGA = 1e9
KB = 1e3  # bytes in a kilobyte (the act_kb limit)
Cand = tuple[int, int]  # (w_bits, a_bits)
Pin = Union[int, Cand]  # a weight width (any activation width) or one (w_bits, a_bits) pair
INTEGER_RESOURCES = ("weight_bits", "bops")  # resources whose per-layer values are integers
FLOAT_TOL = 1e-9  # relative tolerance on the latency limit


def is_int(v: Any) -> bool:
    """True for integers (Python or NumPy), False for bools and everything else.

    v: the value to check.
    """
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def as_pair(v: Any) -> Cand:
    """(w_bits, a_bits) from a per-layer entry: an int w (activations at 8) or a (w, a) pair.

    v: an int or a pair of ints.
    """
    return (int(v), 8) if is_int(v) else (int(v[0]), int(v[1]))


def widths_of(profile: Profile, assignment: Mapping[str, Any]) -> dict[str, Cand]:
    """name → (w_bits, a_bits) for every layer of `profile`; ConfigError if one is missing.

    profile: the layers.
    assignment: name → w_bits or (w_bits, a_bits).
    """
    missing = [l.name for l in profile.layers if l.name not in assignment]
    if missing:
        raise ConfigError(f"no bit width given for layers {', '.join(missing[:5])}; give one for every profiled layer")
    return {l.name: as_pair(assignment[l.name]) for l in profile.layers}


def total_bits(profile: Profile, w_bits: Mapping[str, Any]) -> int:
    """Σ params·w_bits over all layers of `profile` (an exact integer).

    profile: the layers and their parameter counts.
    w_bits: name → w_bits or (w_bits, a_bits), for every layer.
    """
    wa = widths_of(profile, w_bits)
    return sum(l.params * wa[l.name][0] for l in profile.layers)


def plan_weight_bytes(profile: Profile, w_bits: Mapping[str, Any]) -> int:
    """Weight storage in bytes, ⌈Σ params·b / 8⌉ (weights only, no scales or biases).

    profile: the layers and their parameter counts.
    w_bits: name → w_bits or (w_bits, a_bits), for every layer.
    """
    return -(-total_bits(profile, w_bits) // 8)


def avg_bits_of(profile: Profile, w_bits: Mapping[str, Any]) -> float:
    """Parameter-weighted mean weight bit width, Σ params·b / Σ params.

    profile: the layers and their parameter counts.
    w_bits: name → w_bits or (w_bits, a_bits), for every layer.
    """
    n = sum(l.params for l in profile.layers)
    return total_bits(profile, w_bits) / n if n else 0.0


def plan_bops(profile: Profile, assignment: Mapping[str, Any]) -> int:
    """Bit operations Σ MACs·w_bits·a_bits for one input sample (an exact integer).

    profile: the layers and their MACs.
    assignment: name → w_bits (activations at 8) or (w_bits, a_bits), for every layer.
    """
    wa = widths_of(profile, assignment)
    return sum(l.macs * wa[l.name][0] * wa[l.name][1] for l in profile.layers)


def ceil_sig(x: float, digits: int = 6) -> float:
    """The smallest float with at most `digits` significant digits that is ≥ x.

    x: the value to round up (finite).
    digits: significant digits kept.
    """
    d = Decimal(repr(float(x)))
    if d == 0:
        return 0.0
    exp = d.adjusted() - digits + 1
    return float(d.quantize(Decimal(1).scaleb(exp), rounding=ROUND_CEILING))


def floor_bits(limit_bits: float) -> int:
    """Largest integer within `limit_bits`, forgiving float round-off (1e-12 relative, far below one
    unit for any real model yet above the error of a product like avg_bits·params).

    limit_bits: the limit (bits or BOPs), as a float.
    """
    return math.floor(limit_bits + 1e-12 * max(1.0, abs(limit_bits)))


def within(resource: str, total: float, cap: float) -> bool:
    """Whether `total` of `resource` satisfies the limit `cap` (exactly for integer resources).

    resource: one of weight_bits, bops, latency_ms.
    total: the plan's total.
    cap: the limit.
    """
    if resource in INTEGER_RESOURCES:
        return total <= floor_bits(cap)
    return total <= cap + FLOAT_TOL * max(1.0, abs(cap))


def totals(profile: Profile, wa: Mapping[str, Cand], latency: Mapping[str, Mapping[Any, float]] | None
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


def constraint_records(profile: Profile, wa: Mapping[str, Cand], caps: Mapping[str, float],
                        latency: Mapping[str, Mapping[Any, float]] | None) -> dict[str, dict[str, float | None]]:
    """Each constraint's limit (None if not limited), the plan's value and the slack.

    profile: the layers.
    wa: name → (w_bits, a_bits) for every layer.
    caps: resource → limit (bits, BOPs, ms).
    latency: layer → {(w, a): ms}, or None.
    """
    out = {}
    for r, total in totals(profile, wa, latency).items():
        div = 8 if r == "weight_bits" else 1
        cap = caps.get(r)
        limit = None if cap is None else (floor_bits(cap) if r in INTEGER_RESOURCES else cap) / div
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
