"""Other ways to choose per-layer bits at a given size, to measure hawq's Hessian ILP against.

Each baseline gives a Plan with the same candidates, pins and weight budget as hawq's:

- `resensitized`: the profile with Ω_l(b) = s_l · ‖Q_b(W_l) − W_l‖² for another per-layer
  sensitivity s_l, allocated by the same ILP. With s_l = Tr(H_l)/n_l this is hawq itself, so
  the rows below differ from hawq only in s:
  - `inverted_sensitivity`: hawq's s re-dealt in reverse rank order (the most sensitive layer gets
    the smallest s), a sanity floor;
  - `random_sensitivity`: s log-uniform over six decades, seeded: a random plan that still uses
    the whole budget;
  - `eigen_sensitivity`: HAWQ-V1's top Hessian eigenvalue of each layer's block, λ_max/n_l.
- `with_omegas`: the profile with another table Ω_l(b), allocated by the same ILP:
  - `output_error_sensitivity`: NVIDIA ModelOpt auto_quantize's gradient-weighted output error
    Σ (∂L/∂Y · (Y_quant − Y))² of each layer and width (hawq.perturbation.output_error_scores).
- `measured_deltas` + `greedy_plan`: the AIMET-style allocation: quantize one layer at a time
  (the others at the widest candidate), measure the loss change on calibration data, then lower
  widths greedily, always the step that costs the least measured loss per byte saved, until the
  plan fits.
"""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .errors import InfeasibleBudgetError
from .guard import GuardCache, quantize_plan
from .batches import evaluate
from .hessian import top_eigenvalues
from .perturbation import output_error_scores
from .graph import fold_bn
from .sensitivity import Profile, omega_z
from .solver import Budget, Plan, SolveSpec, candidate_bits, fixed_plan, pinned_layers


def hessian_sensitivity(profile: Profile) -> dict[str, float]:
    """hawq's own s_l = Tr(H_l)/n_l, with the trace Ω took (the upper end of its 95% interval or
    the mean, as the profile's settings say; clamped at 0); for a profile of another sensitivity,
    its effective trace (Ω/‖ΔW‖² at the narrowest width)."""
    z = omega_z(profile.settings.get("omega_trace"))
    return {l.name: max(l.trace + z * l.trace_se, 0.0) / l.params for l in profile.layers}


def resensitized(profile: Profile, s: Mapping[str, float]) -> Profile:
    """`profile` with Ω_l(b) = max(s_l, 0) · ‖Q_b(W_l) − W_l‖² for every layer and width."""
    layers = tuple(replace(l, omega={b: max(float(s[l.name]), 0.0) * e for b, e in l.sq_error.items()})
                   for l in profile.layers)
    return replace(profile, layers=layers)


def with_omegas(profile: Profile, table: Mapping[str, Mapping[int, float]]) -> Profile:
    """`profile` with Ω_l(b) = max(table[l][b], 0) for every layer in `table` (others unchanged)."""
    layers = tuple(replace(l, omega={b: max(float(table[l.name][b]), 0.0) for b in profile.bits})
                   if l.name in table else l for l in profile.layers)
    return replace(profile, layers=layers)


def output_error_sensitivity(model: nn.Module, loss_fn: Callable, data: Sequence, profile: Profile, *,
                             weight_method: str = "mse") -> dict[str, dict[int, float]]:
    """layer → {width: ModelOpt's Σ (∂L/∂Y · (Y_quant − Y))²} at the profile's widths, on the
    BN-folded model the rewriter quantizes. One forward and backward per batch."""
    folded = fold_bn(model).eval()
    mods = dict(folded.named_modules())
    return output_error_scores(folded, loss_fn, list(data), {n: mods[n] for n in profile.names}, profile.bits,
                               weight_method=weight_method)


def inverted_sensitivity(profile: Profile) -> dict[str, float]:
    """hawq's sensitivities dealt in reverse rank: the k-th most sensitive layer gets the k-th
    least sensitivity."""
    s = hessian_sensitivity(profile)
    order = sorted(s, key=lambda n: (-s[n], n))
    return {n: v for n, v in zip(order, sorted(s.values()))}


def random_sensitivity(profile: Profile, seed: int) -> dict[str, float]:
    """Seeded sensitivities, log-uniform over 1e-3..1e3."""
    rng = random.Random(seed)
    return {l.name: 10 ** rng.uniform(-3, 3) for l in profile.layers}


def eigen_sensitivity(model: nn.Module, loss_fn: Callable, batch: tuple[torch.Tensor, torch.Tensor],
                      profile: Profile, *, iters: int = 20, tol: float = 1e-3, seed: int = 0,
                      engine: str = "double_backward_batched") -> dict[str, float]:
    """HAWQ-V1's sensitivity λ_max(H_ll)/n_l on the BN-folded model (as the profile's traces),
    λ clamped at 0; power iteration on one batch (see hessian.top_eigenvalues; `engine` changes
    the speed, not the result)."""
    folded = fold_bn(model).eval()
    mods = dict(folded.named_modules())
    weights = {l.name: mods[l.name].weight for l in profile.layers}
    eig = top_eigenvalues(folded, loss_fn, batch, weights, iters=iters, tol=tol, seed=seed, engine=engine)
    return {l.name: max(eig[l.name], 0.0) / l.params for l in profile.layers}


def measured_deltas(model: nn.Module, profile: Profile, data: Sequence, spec: SolveSpec = SolveSpec(), *,
                    cache: GuardCache | None = None) -> dict[str, dict[int, float]]:
    """AIMET-style per-layer sensitivity: layer → {w_bits: calibration loss with only that layer
    at w_bits, every other layer at max(bits), minus the loss with all at max(bits)}. Pinned
    layers are not measured (their width is fixed).

    data: labelled calibration batches; they calibrate the activations and measure the loss.
    cache: quantized layers reused across plans (same model and data only), and the loss measured
        (GuardCache.loss: cross-entropy by default).
    """
    cache = GuardCache() if cache is None else cache
    pins, bits = pinned_layers(profile, spec), candidate_bits(profile, spec.bits)
    top = max(bits)
    base_plan = fixed_plan(profile, {n: (pins.get(n, top)) for n in profile.names}, label="base", spec=spec)
    base = _loss(model, base_plan, data, cache)
    out: dict[str, dict[int, float]] = {}
    for l in profile.layers:
        if l.name in pins:
            continue
        out[l.name] = {top: 0.0}
        for b in sorted(bits):
            if b != top:
                wa = {**base_plan.assignment(), l.name: (b, 8)}
                out[l.name][b] = _loss(model, fixed_plan(profile, wa, label=f"{l.name}@{b}", spec=spec),
                                       data, cache) - base
    return out


def _loss(model: nn.Module, plan: Plan, data: Sequence, cache: GuardCache) -> float:
    return evaluate(quantize_plan(model, plan, data, cache), data, loss=cache.loss)[1]


def greedy_plan(profile: Profile, deltas: Mapping[str, Mapping[int, float]], budget: Budget,
                spec: SolveSpec = SolveSpec(), *, label: str = "greedy") -> Plan:
    """Start every unpinned layer at max(bits); while the plan is over the weight budget, take the
    one-step width reduction with the least measured loss increase per weight bit saved.

    deltas: from measured_deltas (layer → {w_bits: loss change}).
    budget: its weight limit (megabytes, avg_bits or ratio) is the target.
    """
    pins, widths = pinned_layers(profile, spec), candidate_bits(profile, spec.bits)
    w = {n: widths[-1] for n in profile.names}
    w.update({n: pin if isinstance(pin, int) else pin[0] for n, pin in pins.items()})
    limit_bits = 8 * budget.weight_bytes_limit(profile, spec)
    params = {l.name: l.params for l in profile.layers}
    while sum(params[n] * b for n, b in w.items()) > limit_bits:
        steps = []
        for n, d in deltas.items():
            i = widths.index(w[n])
            if i > 0:
                lower = widths[i - 1]
                saved = params[n] * (w[n] - lower)
                steps.append(((d[lower] - d[w[n]]) / saved, -saved, n, lower))
        if not steps:
            raise InfeasibleBudgetError(f"the greedy allocation cannot reach {limit_bits / 8e6:g} MB even with every "
                                        f"free layer at {widths[0]} bits; raise the budget")
        _, _, n, lower = min(steps)
        w[n] = lower
    return fixed_plan(profile, w, label=label, spec=spec, budget=budget)
