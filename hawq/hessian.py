"""Per-layer Hessian traces by Hutchinson's method.

One Rademacher vector v is drawn over all quantizable weights at once; Hv is computed once and
vᵀHv is split per layer: E[v_lᵀ(Hv)_l] = Tr(H_ll), the cross-layer terms vanish in expectation.
Probes cycle over the data batches, so the mean estimates the trace of the average Hessian and
its standard error covers both probe and batch noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import NumericalError

HVP = Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]]


@dataclass(frozen=True)
class TraceEstimate:
    mean: float
    se: float  # standard error of the mean
    n: int


@dataclass(frozen=True)
class TraceResult:
    layers: dict[str, TraceEstimate]
    unconverged: tuple[str, ...]  # significant layers whose relative standard error missed the target
    engine: str
    probes: int


def double_backward_hvp(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, params: Sequence[torch.Tensor]) -> HVP:
    """Hessian-vector products on one batch by double backward, the gradient graph kept for reuse."""
    loss = loss_fn(model(x), y)
    if not torch.isfinite(loss):
        raise NumericalError(f"the loss is {loss.item()} on a profiling batch; check the model, data and loss function")
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(vs: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        return torch.autograd.grad(grads, params, vs, retain_graph=True)

    return hvp


class _Welford:
    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    @property
    def se(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1) / self.n) if self.n > 1 else math.inf


def significant(means: Mapping[str, float], importance: Mapping[str, float], share: float = 0.01) -> list[str]:
    """Layers holding at least `share` of the total Ω = |trace| · importance."""
    omega = {n: abs(means[n]) * importance.get(n, 1.0) for n in means}
    total = sum(v for v in omega.values() if math.isfinite(v))
    return [n for n, v in omega.items() if total > 0 and v >= share * total]


def hutchinson_traces(
    model: nn.Module,
    loss_fn,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    weights: Mapping[str, torch.Tensor],
    *,
    importance: Mapping[str, float] | None = None,
    rel_tol: float = 0.05,
    max_probes: int = 200,
    min_probes: int = 8,
    probes_per_batch: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> TraceResult:
    """Estimate Tr(H_l) for each named weight. Stops once every significant layer (≥1% of Ω,
    with Ω_l = |Tr| · importance_l) has relative standard error ≤ rel_tol, or at max_probes.
    `model` must be in eval mode; it is not modified."""
    if max_probes < 2:
        raise ValueError("max_probes must be at least 2 to estimate a standard error")
    names = list(weights)
    params = [weights[n] for n in names]
    importance = dict(importance or {})
    stats = {n: _Welford() for n in names}
    gen = torch.Generator().manual_seed(seed)
    min_probes = min(max(min_probes, len(batches) * probes_per_batch), max_probes)
    bar = tqdm(total=max_probes, desc="hessian probes", disable=not progress, leave=False)
    probes, step = 0, 0
    try:
        while probes < max_probes:
            x, y = batches[step % len(batches)]
            step += 1
            hvp = double_backward_hvp(model, loss_fn, x, y, params)
            for _ in range(min(probes_per_batch, max_probes - probes)):
                vs = [(torch.randint(0, 2, p.shape, generator=gen, dtype=p.dtype) * 2 - 1).to(p.device) for p in params]
                hv = hvp(vs)
                for n, v, h in zip(names, vs, hv):
                    stats[n].add(float((v * h).sum()))
                probes += 1
            del hvp
            worst = _worst(stats, importance)
            bar.update(probes - bar.n)
            bar.set_postfix(worst_rel_se=f"{worst:.3f}")
            if probes >= min_probes and worst <= rel_tol:
                break
    finally:
        bar.close()
    means = {n: s.mean for n, s in stats.items()}
    sig = significant(means, importance)
    unconverged = tuple(n for n in sig if _rel(stats[n]) > rel_tol)
    return TraceResult({n: TraceEstimate(s.mean, s.se, s.n) for n, s in stats.items()}, unconverged,
                       "double_backward", probes)


def _rel(s: _Welford) -> float:
    return s.se / abs(s.mean) if s.mean else math.inf


def _worst(stats: Mapping[str, _Welford], importance: Mapping[str, float]) -> float:
    sig = significant({n: s.mean for n, s in stats.items()}, importance)
    return max((_rel(stats[n]) for n in sig), default=math.inf)
