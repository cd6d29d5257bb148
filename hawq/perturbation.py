"""The second-order model of the actual rounding: for every layer l and width b the exact weight
perturbation Δ_{l,b} = Q_b(W_l) − W_l is known, so the Taylor expansion of the calibration loss

    ΔL(plan) ≈ Σ_l gᵀΔ_{l,b_l} + ½ Σ_l Σ_m Δ_{l,b_l}ᵀ H Δ_{m,b_m}

needs no random probes: one Hessian-vector product per (layer, width) in the direction Δ_{l,b}
gives H Δ_{l,b} for the whole network, hence its product with every other layer's perturbations
(the cross terms) at no extra cost. Deterministic; L·B products per batch (L layers, B widths),
batched over directions with `is_grads_batched`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.func import jvp, vmap

from . import quant
from .batches import Objective, num_samples, stateless, weighted_mean
from .errors import ConfigError, DataError, NumericalError
from .hessian import hvp_context


@dataclass(frozen=True)
class Perturbation:
    """The terms of the second-order model over the calibration data.

    names: the layers, in order.
    bits: the weight widths, ascending.
    linear: J values gᵀΔ_j, j = (layer index) · len(bits) + (width index).
    curvature: J×J matrix of Δ_jᵀ H Δ_k (symmetric).
    """

    names: tuple[str, ...]
    bits: tuple[int, ...]
    linear: torch.Tensor
    curvature: torch.Tensor

    def _index(self, name: str, b: int) -> int:
        return self.names.index(name) * len(self.bits) + self.bits.index(b)

    def predict(self, widths: Mapping[str, int], *, cross: bool = True) -> float:
        """Predicted loss change of quantizing each layer's weights at `widths[layer]`.

        widths: layer → weight width (every layer of `names`).
        cross: include the cross-layer terms (False: the additive model, each layer alone).
        """
        idx = torch.tensor([self._index(n, widths[n]) for n in self.names])
        lin = float(self.linear[idx].sum())
        block = self.curvature[idx][:, idx]
        quad = float(block.sum()) if cross else float(block.diagonal().sum())
        return lin + 0.5 * quad

    def pairs(self) -> list[tuple[str, str, tuple[tuple[float, ...], ...]]]:
        """Every cross-layer term, once per pair of layers in order: (a, b, terms) with
        terms[i][k] = Δ_{a,bits[i]}ᵀ H Δ_{b,bits[k]}, the pair's whole share ½(Δ_aᵀHΔ_b + Δ_bᵀHΔ_a)
        of the loss change (the matrix is symmetric)."""
        B = len(self.bits)
        out = []
        for la, a in enumerate(self.names):
            for lb in range(la + 1, len(self.names)):
                block = self.curvature[la * B:(la + 1) * B, lb * B:(lb + 1) * B]
                out.append((a, self.names[lb], tuple(tuple(float(v) for v in row) for row in block.tolist())))
        return out

    def alone(self) -> dict[str, dict[int, float]]:
        """layer → {width: predicted loss change with that layer alone quantized}."""
        return {n: {b: float(self.linear[j] + 0.5 * self.curvature[j, j])
                    for b in self.bits for j in [self._index(n, b)]} for n in self.names}


CURVATURES = ("ggn", "hessian")


@dataclass
class TermsState:
    """The sums perturbation_terms has made over its first `batches` batches (the curvature not
    yet symmetrised): the whole state of a run, so it can be checkpointed and resumed."""

    names: tuple[str, ...]
    bits: tuple[int, ...]
    batches: int
    linear: torch.Tensor
    curvature: torch.Tensor

    def to_dict(self) -> dict:
        return {"names": list(self.names), "bits": list(self.bits), "batches": self.batches,
                "linear": self.linear.tolist(), "curvature": self.curvature.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "TermsState":
        names, bits = tuple(str(n) for n in d["names"]), tuple(int(b) for b in d["bits"])
        J = len(names) * len(bits)
        linear = torch.tensor([float(v) for v in d["linear"]], dtype=torch.float64)
        curv = torch.tensor([[float(v) for v in row] for row in d["curvature"]], dtype=torch.float64)
        if linear.shape != (J,) or curv.shape != (J, J):
            raise ValueError(f"terms of shape {tuple(linear.shape)} and {tuple(curv.shape)}, expected ({J},) and ({J}, {J})")
        return cls(names, bits, int(d["batches"]), linear, curv)


def perturbation_terms(model: nn.Module, loss_fn: Callable, batches: Sequence, layers: Mapping[str, nn.Module],
                       bits: Sequence[int], *, curvature: str = "ggn", weight_method: str = "mse", chunk: int = 8,
                       progress: Callable[[int, int], None] | None = None, state: TermsState | None = None,
                       on_batch: Callable[[TermsState], None] | None = None) -> Perturbation:
    """The linear and quadratic terms of the loss change for every (layer, width).

    curvature: "ggn", the generalised Gauss-Newton matrix JᵀH_zJ (H_z: the loss's Hessian in the
        network's outputs): positive semi-definite, and cheap: one forward-mode product per
        direction gives its output perturbation JΔ, and every pair's term is a product of those;
        or "hessian", the full Hessian, one double-backward product per direction.

    model: the network (BN folded, as it will be quantized), in eval mode.
    loss_fn: the loss, in any form hawq.batches.Objective takes (mean over the batch); the GGN
        needs it as a function of the logits (a loss on the output, or the default's cross-entropy).
    batches: calibration batches (hawq.batches); the loss is their sample-weighted mean.
    layers: name → the module whose `.weight` is quantized.
    bits: weight widths.
    weight_method: the weight quantizer's scale search, as the rewriter uses it.
    chunk: directions per batched Hessian-vector product (memory grows with it).
    progress: called with (done, total) products after each chunk.
    state: resume from a checkpoint (an interrupted run's TermsState, same layers and widths);
    on_batch(state): called after each batch (to checkpoint it).
    """
    if curvature not in CURVATURES:
        raise ConfigError(f"curvature must be one of {', '.join(CURVATURES)}, not {curvature!r}")
    bits = tuple(sorted({int(b) for b in bits}))
    names = tuple(layers)
    if not names or not bits:
        raise ConfigError("perturbation_terms needs at least one layer and one width")
    if not batches:
        raise DataError("perturbation_terms needs at least one (input, target) batch")
    objective = Objective(loss_fn)
    if curvature == "ggn":
        objective.check_splits(model, batches[0])
    params = [layers[n].weight for n in names]
    rounding = _rounding(layers, bits, weight_method)
    deltas = [torch.stack([rounding[n][b] for b in bits]) for n in names]  # per layer: [B, *shape] of Q_b(W) − W
    B, J = len(bits), len(names) * len(bits)
    if state is None:
        state = TermsState(names, bits, 0, torch.zeros(J, dtype=torch.float64), torch.zeros(J, J, dtype=torch.float64))
    elif (state.names, state.bits) != (names, bits) or not 0 <= state.batches <= len(batches):
        raise ConfigError("the checkpoint of the second-order terms was made for other layers, widths or data")
    linear, curv = state.linear, state.curvature
    total = sum(num_samples(b) for b in batches)
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    directions = [(l, i) for l in range(len(names)) for i in range(B)]
    try:
        with hvp_context():  # attention through kernels with forward-mode and double-backward rules
            for index, batch in enumerate(batches):
                if index < state.batches:  # done before the interruption
                    continue
                w = num_samples(batch) / total
                loss = objective.loss(model, batch)
                grads = torch.autograd.grad(loss, params, create_graph=curvature == "hessian")
                for l, g in enumerate(grads):
                    linear[l * B:(l + 1) * B] += w * (deltas[l].flatten(1).double() @ g.detach().flatten().double())
                if curvature == "ggn":
                    curv += w * _ggn_block(model, objective, batch, params, deltas)
                    if progress:
                        progress(J, J)
                    _batch_done(state, index, on_batch)
                    continue
                for start in range(0, J, chunk):
                    part = directions[start:start + chunk]
                    vs = [torch.zeros(len(part), *p.shape, dtype=p.dtype) for p in params]
                    for k, (l, i) in enumerate(part):
                        vs[l][k] = deltas[l][i]
                    hv = torch.autograd.grad(grads, params, vs, retain_graph=True, is_grads_batched=True)
                    for m, h in enumerate(hv):  # rows: the chunk's directions; columns: layer m's widths
                        curv[start:start + len(part), m * B:(m + 1) * B] += w * (h.flatten(1).double() @ deltas[m].flatten(1).double().T)
                    if progress:
                        progress(start + len(part), J)
                del grads, loss
                _batch_done(state, index, on_batch)
    finally:
        for p, r in zip(params, was):
            p.requires_grad_(r)
    curv = 0.5 * (curv + curv.T)
    if not bool(torch.isfinite(curv).all()) or not all(math.isfinite(v) for v in linear.tolist()):
        raise NumericalError("the second-order terms are not finite; check the model and data")
    return Perturbation(names, bits, linear, curv)


def _batch_done(state: TermsState, index: int, on_batch: Callable[[TermsState], None] | None) -> None:
    state.batches = index + 1
    if on_batch is not None:
        on_batch(state)


def _ggn_block(model: nn.Module, objective: Objective, batch, params: Sequence[torch.Tensor],
               deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Δ_jᵀ Jᵀ H_z J Δ_k on one batch for every pair of directions (float64, J×J).

    Each layer's B directions go through one vmapped forward-mode product (the tangent is that
    layer's perturbations, every other weight fixed); H_z u comes from a double backward through
    the loss alone, which is cheap (it does not touch the network).
    """
    pnames = {id(p): n for n, p in model.named_parameters()}
    keys = [pnames[id(p)] for p in params]
    state = {n: p.detach() for n, p in model.named_parameters()}
    state.update(dict(model.named_buffers()))
    outs = []
    logits = stateless(model, objective.logits)
    for key, d in zip(keys, deltas):
        def f(w, key=key):
            return logits({**state, key: w}, batch)

        def one(t, key=key, f=f):
            return jvp(f, (state[key],), (t,))[1]
        with torch.no_grad():
            outs.append(vmap(one)(d))  # [B, *output]
    u = torch.cat(outs).flatten(1)  # [J, N·C]
    with torch.enable_grad():
        z = objective.logits(model, batch).detach().requires_grad_(True)
        gz = torch.autograd.grad(objective.tail(z, batch), z, create_graph=True)[0]
        hu = torch.autograd.grad(gz, z, u.view(len(u), *z.shape), is_grads_batched=True)[0].flatten(1)
    return u.double() @ hu.double().T


def _local_output(mod: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's linear map of input x with weight w, no bias: Y(W + Δ) − Y(W) = this with w = Δ."""
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            raise ConfigError(f"padding_mode {mod.padding_mode!r} is not supported here; use zeros padding")
        return F.conv2d(x, w, None, mod.stride, mod.padding, mod.dilation, mod.groups)
    if isinstance(mod, nn.Linear):
        return F.linear(x, w)
    raise ConfigError(f"{type(mod).__name__} is not a Conv2d or Linear layer")


def _rounding(layers: Mapping[str, nn.Module], bits: Sequence[int], weight_method: str) -> dict[str, dict[int, torch.Tensor]]:
    with torch.no_grad():
        return {n: {b: quant.fake_quant_weight(m.weight.detach(), b, weight_method)[0] - m.weight.detach() for b in bits}
                for n, m in layers.items()}


def output_error_scores(model: nn.Module, loss_fn: Callable, batches: Sequence, layers: Mapping[str, nn.Module],
                        bits: Sequence[int], *, weight_method: str = "mse") -> dict[str, dict[int, float]]:
    """The gradient-weighted output error NVIDIA ModelOpt's auto_quantize scores formats with:
    layer → {width: Σ_batches Σ (∂L/∂Y · (Y_quant − Y))²}, Y the layer's output, Y_quant its output
    with that layer's weights rounded at the width. One forward and backward per batch; the
    output error of a linear layer is its map of the same input through Q_b(W) − W.
    """
    bits = tuple(sorted({int(b) for b in bits}))
    if not layers or not bits:
        raise ConfigError("output_error_scores needs at least one layer and one width")
    if not batches:
        raise DataError("output_error_scores needs at least one (input, target) batch")
    objective = Objective(loss_fn)
    rounding = _rounding(layers, bits, weight_method)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, (inp[0].detach(), out)))
             for n, m in layers.items()]
    weights = [m.weight for m in layers.values()]
    was = [w.requires_grad for w in weights]
    scores = {n: dict.fromkeys(bits, 0.0) for n in layers}
    try:
        for w in weights:  # so that every layer's output is in the graph
            w.requires_grad_(True)
        for batch in batches:
            seen.clear()
            loss = objective.loss(model, batch)
            grads = torch.autograd.grad(loss, [seen[n][1] for n in layers])
            with torch.no_grad():
                for (n, m), g in zip(layers.items(), grads):
                    for b in bits:
                        scores[n][b] += float(((g * _local_output(m, seen[n][0], rounding[n][b])) ** 2).sum())
    finally:
        for h in hooks:
            h.remove()
        for w, r in zip(weights, was):
            w.requires_grad_(r)
    return scores


@torch.no_grad()
def perturbed_losses(model: nn.Module, loss_fn: Callable, batches: Sequence, layers: Mapping[str, nn.Module],
                     bits: Sequence[int], *, weight_method: str = "mse", done: Mapping[str, Mapping[int, float]] | None = None,
                     on_layer: Callable[[dict[str, dict[int, float]]], None] | None = None) -> dict[str, dict[int, float]]:
    """The exact loss change of rounding one layer's weights alone: layer → {width: L(W with that
    layer at the width) − L(W)} over the batches (sample-weighted), activations in float. One
    forward pass over the data per (layer, width); no quantized model is built or calibrated.
    `done`: layers already measured (an interrupted run's), kept as they are; `on_layer(table)`
    is called after each layer with everything measured so far (to checkpoint it).
    """
    bits = tuple(sorted({int(b) for b in bits}))
    if not batches:
        raise DataError("perturbed_losses needs at least one (input, target) batch")
    objective = Objective(loss_fn)

    def loss() -> float:
        return weighted_mean((float(objective.value(model, b)), num_samples(b)) for b in batches)

    base = loss()
    if not math.isfinite(base):
        raise NumericalError(f"the calibration loss is {base}; check the model and data")
    out: dict[str, dict[int, float]] = {n: dict(done[n]) for n in layers if done and n in done}
    for n, m in layers.items():
        if n in out:
            continue
        w = m.weight.detach().clone()
        rounding = _rounding({n: m}, bits, weight_method)[n]  # one layer's at a time: memory of one more model, not B
        out[n] = {}
        try:
            for b in bits:
                m.weight.data.add_(rounding[b])
                out[n][b] = loss() - base
                m.weight.data.copy_(w)
        finally:
            m.weight.data.copy_(w)
        if on_layer is not None:
            on_layer(out)
    return out
