"""Swap layers for fake-quant ones by name; BatchNorm folding; calibration."""
from __future__ import annotations

import copy
import logging
from typing import Iterable, Mapping

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from . import quant
from .errors import ArtifactError, DataError
from .graph import QUANTIZABLE

log = logging.getLogger(__name__)


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every BatchNorm2d that directly follows a Conv2d folded
    into it (the BN becomes Identity). The caller's model is unchanged."""
    model = copy.deepcopy(model).eval()
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # dynamic control flow: leave BN in place, still correct
        log.warning("BatchNorm not folded: the model cannot be traced by torch.fx (%s)", e.__class__.__name__)
        return model
    mods = dict(model.named_modules())
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(mods.get(src.target), nn.Conv2d)):
            continue
        if len(src.users) != 1:
            continue
        _fold_into(mods[src.target], mods[node.target])
        _set_module(model, node.target, nn.Identity())
    return model


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    k = gamma / std
    conv.weight.mul_(k.reshape(-1, 1, 1, 1))
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((b - bn.running_mean) * k + beta)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


class QuantLayer(nn.Module):
    """Fake-quant Conv2d or Linear: per-output-channel symmetric weights at `w_bits`, per-tensor
    unsigned input activations at `a_bits` (calibrated by min/max), int32 bias at s_w·s_a."""

    def __init__(self, fp: nn.Module, w_bits: int, a_bits: int, weight_method: str = "mse") -> None:
        super().__init__()
        if not isinstance(fp, QUANTIZABLE):
            raise TypeError(f"cannot quantize {type(fp).__name__}")
        self.fp = copy.deepcopy(fp)
        self.w_bits, self.a_bits, self.weight_method = int(w_bits), int(a_bits), weight_method
        w_fq, q, scale = quant.fake_quant_weight(self.fp.weight, self.w_bits, weight_method)
        self.register_buffer("w_int", q.to(torch.int8 if self.w_bits <= 8 else torch.int16))
        self.register_buffer("w_scale", scale.float())
        self.register_buffer("w_fq", w_fq)
        self.a_scale, self.a_zero_point, self.a_qmin, self.a_qmax = 1.0, 0, 0, 2**self.a_bits - 1
        self.observer: quant.MinMaxObserver | None = None
        self.calibrated = False

    def start_calibration(self) -> None:
        self.observer = quant.MinMaxObserver()

    def finish_calibration(self) -> None:
        if self.observer is None or not self.observer.seen:
            raise DataError("a quantized layer saw no data during calibration; is the calibration data empty?")
        self.a_scale, self.a_zero_point, self.a_qmin, self.a_qmax = quant.act_qparams(self.observer.lo, self.observer.hi, self.a_bits)
        self.observer = None
        self.calibrated = True

    @property
    def bias_int(self) -> torch.Tensor | None:
        return None if self.fp.bias is None else quant.quantize_bias(self.fp.bias, self.w_scale, self.a_scale)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer(x)
            return self.fp(x)
        if not self.calibrated:
            raise RuntimeError("QuantLayer used before calibration; call hawq.quantize with data")
        xq = quant.fake_quant_act(x, self.a_scale, self.a_zero_point, self.a_qmin, self.a_qmax)
        b = None if self.fp.bias is None else quant.quantize_bias(self.fp.bias, self.w_scale, self.a_scale)[1]
        if isinstance(self.fp, nn.Conv2d):
            f = self.fp
            return F.conv2d(xq, self.w_fq, b, f.stride, f.padding, f.dilation, f.groups)
        return F.linear(xq, self.w_fq, b)

    def extra_repr(self) -> str:
        return f"{type(self.fp).__name__}, w_bits={self.w_bits}, a_bits={self.a_bits}"


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def as_assignment(plan) -> dict[str, tuple[int, int]]:
    """name -> (w_bits, a_bits) from a Plan or a mapping of name -> w_bits | (w_bits, a_bits)."""
    if hasattr(plan, "assignment"):
        return dict(plan.assignment())
    if isinstance(plan, Mapping):
        return {n: (v, 8) if isinstance(v, int) else (int(v[0]), int(v[1])) for n, v in plan.items()}
    raise TypeError(f"expected a hawq Plan or a mapping of layer name -> bits, not {type(plan).__name__}")


@torch.no_grad()
def quantize(model: nn.Module, plan, data: Iterable, weight_method: str = "mse") -> nn.Module:
    """A new fake-quant module: BN folded, each planned layer swapped for a QuantLayer, then
    calibrated on `data` (an iterable of (x, y) or x batches). The caller's model is unchanged."""
    assign = as_assignment(plan)
    folded = fold_bn(model)
    mods = dict(folded.named_modules())
    missing = [n for n in assign if not isinstance(mods.get(n), QUANTIZABLE)]
    if missing:
        raise ArtifactError(f"the plan names layers this model lacks or cannot quantize: {', '.join(missing[:5])}; "
                            "was the plan made for another model?")
    for name, (wb, ab) in assign.items():
        _set_module(folded, name, QuantLayer(mods[name], wb, ab, weight_method))
    calibrate(folded, data)
    return folded.eval()


@torch.no_grad()
def calibrate(qmodel: nn.Module, data: Iterable) -> nn.Module:
    layers = quant_layers(qmodel)
    for m in layers.values():
        m.start_calibration()
    qmodel.eval()
    seen = 0
    try:
        for batch in data:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            qmodel(x)
            seen += 1
    finally:
        if not seen:
            for m in layers.values():
                m.observer = None
    if not seen:
        raise DataError("calibration data is empty; give at least one batch")
    for m in layers.values():
        m.finish_calibration()
    return qmodel
