"""Budget: the limits a plan must meet (weight size, BOPs, latency, peak activation memory), and
what each means in bits, BOPs or milliseconds for one problem."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .problem import Problem, build_problem
from .sizes import GIGA, KB, MB
from .spec import SolveSpec

if TYPE_CHECKING:
    from ..sensitivity import Profile

# the budget's units, grouped by the resource each one limits (at most one unit per resource)
BUDGET_UNITS: dict[str, tuple[str, ...]] = {
    "weight_bits": ("megabytes", "avg_bits", "ratio"),
    "bops": ("gbops", "bops_ratio"),
    "latency_ms": ("latency_ms",),
}
# peak activation memory is a cap on every layer, not a sum: it removes candidates (cap_activations)
ACT_KIND = "act_kb"
BUDGET_KINDS = tuple(k for ks in BUDGET_UNITS.values() for k in ks) + (ACT_KIND,)


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
        given = {k: getattr(self, k) for k in BUDGET_KINDS if getattr(self, k) is not None}
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
        return {k: float(getattr(self, k)) for k in BUDGET_KINDS if getattr(self, k) is not None}

    def act_cap(self) -> dict[str, float]:
        """{"act_bytes": the peak activation limit in bytes} if act_kb is set, else {}; for the
        constraint records only (the limit acts by removing candidates, not as an ILP row)."""
        return {} if self.act_kb is None else {"act_bytes": self.act_kb * KB}

    def unit_of(self, resource: str) -> str | None:
        """The unit this budget limits `resource` in, or None if it does not limit it.

        resource: weight_bits, bops or latency_ms.
        """
        return next((k for k in BUDGET_UNITS[resource] if getattr(self, k) is not None), None)

    def caps(self, p: Problem) -> dict[str, float]:
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

    def value_at(self, resource: str, total: float, p: Problem) -> float:
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

    def weight_bytes_limit(self, profile: Profile, spec: SolveSpec = SolveSpec()) -> float:
        """The weight-byte limit this budget means for `profile` (inf if it sets none).

        profile: the profiled layers (params per layer).
        spec: the candidates, pins and ties; they matter for `ratio` only.
        """
        caps = self.caps(build_problem(profile, spec))
        return caps["weight_bits"] / 8 if "weight_bits" in caps else math.inf
