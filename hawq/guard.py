"""The measured-loss guard: never return a plan that measures worse than uniform at the same budget.

The second-order estimate Ω misleads at 2 bits and on layers that hold many of the weights, so
the ILP's optimum is only a proposal. The guard quantizes the optimum, a few next-best plans that
differ from it in many weights (`solver.alternatives`) and every uniform plan that meets the same
limits, calibrates each on one part of the calibration data, measures its loss on the part held
back, and returns the plan with the least measured loss, recording every candidate.
"""
from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .batches import Objective, concat, evaluate, num_samples, take
from .errors import ConfigError, DataError
from .graph import set_module
from .rewrite import calibrate, quantize
from .sensitivity import Profile
from .solver import Budget, Plan, SolveSpec, alternatives, uniform_plans_within
from .target import Target, TargetMismatchWarning

log = logging.getLogger(__name__)


def split_calibration(batches: Iterable, holdout: float = 0.5) -> tuple[list, list, bool]:
    """Split labelled calibration batches by sample into (calibrate, held back, whether they are apart).

    The first (1 − holdout) of the samples calibrate the quantizers, the rest measure the loss.
    Batches that stack (same structure and shapes past the first axis) are cut into batches of the
    first batch's size; ragged ones (sequences of different lengths, with their attention masks)
    are kept as they are, the one that straddles the cut sliced in two. With a single sample both
    parts are that sample and the third value is False.

    batches: labelled batches in any form of hawq.batches (a tuple (inputs..., target), or a dict
        with labels), or batches a loss on the model labels itself.
    holdout: fraction of the samples held back, in (0, 1).
    """
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise ConfigError(f"holdout={holdout!r} must be a fraction in (0, 1), e.g. 0.5")
    batches = list(batches)
    if not batches:
        raise DataError("calibration data is empty; give at least one (x, y) batch")
    if isinstance(batches[0], torch.Tensor):
        raise DataError("the guard measures a loss, so it needs labelled calibration batches: (x, y) tuples or "
                        "dicts with 'labels'")
    sizes = [num_samples(b) for b in batches]
    n, size = sum(sizes), sizes[0]
    whole = concat(batches)
    if n < 2:
        one = batches if whole is None else [whole]
        return one, one, False
    cut = min(n - 1, max(1, round(n * (1 - holdout))))
    if whole is not None:
        return ([take(whole, i, min(i + size, cut)) for i in range(0, cut, size)],
                [take(whole, i, i + size) for i in range(cut, n, size)], True)
    calib, held, start = [], [], 0
    for b, m in zip(batches, sizes):
        if start + m <= cut:
            calib.append(b)
        elif start >= cut:
            held.append(b)
        else:
            calib.append(take(b, 0, cut - start))
            held.append(take(b, cut - start, m))
        start += m
    return calib, held, True


@dataclass
class GuardCache:
    """What the guard reuses across plans and budgets of one model on one calibration split.

    pairs: (w_bits, a_bits) → the model quantized uniformly at that pair by rewrite.quantize;
        its fake-quant layers (their weight-scale search is the slow part) are copied into every
        plan that uses the pair, then the plan's activations are calibrated afresh.
    results: plan assignment → (calibration loss, accuracy) on the held-back samples.
    target: the runtime the models are quantized for (rewrite.quantize's target), so the guard
        measures the model the exported file will compute.
    loss: the loss measured, as hawq.batches.Objective takes it (None: the model's own
        `output.loss`, or the cross-entropy of its logits with the labels).
    """

    pairs: dict[tuple[int, int], nn.Module] = field(default_factory=dict)
    results: dict[Any, tuple[float, float]] = field(default_factory=dict)
    target: Target = Target()
    loss: Any = None


def quantize_plan(model: nn.Module, plan: Plan, data: Sequence, cache: GuardCache) -> nn.Module:
    """The same module as rewrite.quantize(model, plan, data, target=cache.target),
    built from cached per-pair layers.

    model: the float model (unchanged).
    plan: the per-layer widths.
    data: calibration batches for the activations (calibrated afresh on every call; the cached
        layers carry only the weight quantization, so the data may differ between calls).
    cache: per-pair quantized models.
    """
    wa = plan.assignment()
    for pair in sorted(set(wa.values())):
        if pair not in cache.pairs:
            # every layer at this pair, though only those the plan gives it are taken: the target
            # may not run the pair on the others, which quantize would warn of (TargetMismatchWarning)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TargetMismatchWarning)
                cache.pairs[pair] = quantize(model, {n: pair for n in wa}, data, target=cache.target)
    q = copy.deepcopy(cache.pairs[next(iter(wa.values()))])
    for name, pair in wa.items():
        set_module(q, name, copy.deepcopy(cache.pairs[pair].get_submodule(name)))
    return calibrate(q, data).eval()


def measure(model: nn.Module, plan: Plan, calibration: Sequence, held_out: Sequence,
            cache: GuardCache | None = None) -> tuple[float, float]:
    """(mean loss, top-1 accuracy) on `held_out` of `model` quantized by `plan` with its
    activations calibrated on `calibration`; the loss is the cache's (cross-entropy by default).

    model: the float model (unchanged).
    plan: the per-layer widths.
    calibration: batches for the activation quantizers.
    held_out: labelled batches the loss is measured on.
    cache: reused layers and results; only for calls with the same model and data.
    """
    cache = GuardCache() if cache is None else cache
    key = tuple(sorted(plan.assignment().items()))
    if key not in cache.results:
        acc, loss = evaluate(quantize_plan(model, plan, calibration, cache), held_out, loss=cache.loss)
        cache.results[key] = (loss, acc)
    return cache.results[key]


def guard(model: nn.Module, candidates: Sequence[Plan], data: Iterable, *, holdout: float = 0.5,
          cache: GuardCache | None = None) -> Plan:
    """The candidate with the least measured calibration loss, with a "guard" record.

    Ties go to the lower predicted Ω, then to the earlier candidate; a NaN loss ranks last.

    model: the float model (unchanged).
    candidates: plans for `model`, all meeting the same budget (labels should be distinct).
    data: labelled calibration batches, split by split_calibration.
    holdout: fraction of the calibration samples held back for the loss.
    cache: reused layers and results (same model and data only).
    """
    if not candidates:
        raise ConfigError("the guard needs at least one candidate plan")
    calib, held, apart = split_calibration(data, holdout)
    cache = GuardCache() if cache is None else cache
    rows = []
    for i, plan in enumerate(candidates):
        loss, acc = measure(model, plan, calib, held, cache)
        log.info("guard: %s predicted Ω %.4g, calibration loss %.4f", plan.label, plan.omega, loss)
        rows.append((loss if math.isfinite(loss) else math.inf, plan.omega, i, plan, acc))
    best = min(rows, key=lambda r: r[:3])[3]
    record = {
        "chosen": best.label,
        "metric": f"{_loss_name(cache.loss)} on held-back calibration samples",
        "calibration_samples": sum(num_samples(b) for b in calib),
        "held_out_samples": sum(num_samples(b) for b in held) if apart else 0,
        "candidates": [{"label": p.label, "kind": _kind(p), "predicted_omega": p.omega, "calibration_loss": loss,
                        "calibration_accuracy": acc, "weight_bytes": p.weight_bytes}
                       for loss, _, _, p, acc in rows],
    }
    return replace(best, guard=record)


def _loss_name(loss: Any) -> str:
    """What the guard's record calls the loss it measured."""
    objective = Objective(loss)
    if objective.fn is None:
        return "the model's loss (cross-entropy where it has none)"
    return "cross-entropy" if isinstance(objective.fn, nn.CrossEntropyLoss) or objective.fn is F.cross_entropy else \
        f"loss {getattr(objective.fn, '__name__', type(objective.fn).__name__)}"


def _kind(plan: Plan) -> str:
    """"uniform", "optimum" or "alternative", from the plan's status and label.

    plan: a candidate.
    """
    if plan.status == "Uniform":
        return "uniform"
    return "alternative" if "-alt" in plan.label else "optimum"


def guarded_solve(profile: Profile, budget: Budget, spec: SolveSpec = SolveSpec(), *, model: nn.Module,
                  data: Iterable, count: int = 3, min_change: float = 0.1, holdout: float = 0.5,
                  cache: GuardCache | None = None, loss: Any = None) -> Plan:
    """solve(), then the guard over the optimum, `count` alternatives and the uniform plans that
    meet the same limits: the plan with the least measured loss, never worse than uniform.

    profile: the model's profile.
    budget: the limits.
    spec: what may be chosen, as in solve().
    model: the float model the profile was made from.
    data: labelled calibration batches.
    count: alternatives to the optimum (see solver.alternatives).
    min_change: fraction of weights each alternative must change.
    holdout: fraction of the calibration samples held back for the loss.
    cache: reused layers and results across budgets (same model and data only).
    loss: the loss measured (see GuardCache.loss), when no cache is given (a cache carries its own).
    """
    if cache is not None and loss is not None and cache.loss is not loss:
        raise ConfigError("give the loss to the GuardCache (GuardCache(loss=...)), not beside a cache that has another")
    cache = GuardCache(loss=loss) if cache is None else cache
    plans = alternatives(profile, budget, spec, count=count, min_change=min_change)
    return guard(model, plans + uniform_plans_within(profile, budget, spec), data, holdout=holdout, cache=cache)
