"""Swap layers for fake-quant ones by name (on a BatchNorm-folded copy); calibration."""
from __future__ import annotations

import copy
import logging
import warnings
from typing import Iterable, Mapping

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from . import quant
from .batches import forward
from .cpu import exact_code_bits
from .errors import ArtifactError, ConfigError, DataError, UnsupportedModelError
from .graph import EMBEDDINGS, QUANTIZABLE, fold_bn, set_module
from .target import Target, TargetMismatchWarning, mismatch

log = logging.getLogger(__name__)


WEIGHT_ONLY = quant.WEIGHT_ONLY


class QuantLayer(nn.Module):
    """Fake-quant Conv2d or Linear: per-output-channel symmetric weights at `w_bits`, per-tensor
    input activations at `a_bits` (calibrated by min/max; unsigned with a zero point, or signed
    symmetric with `a_symmetric`), int32 bias at s_w·s_a. `a_bits=32` (WEIGHT_ONLY) leaves the
    input and the bias float. `w_code_bits` (< w_bits) narrows the weight codes while the layer
    keeps its planned width and container: the ort target's reduce-range (hawq.legalize). With
    `out_bits`, the output is fake-quantized too (per tensor, same signedness as the input),
    calibrated on the float layer's output. An nn.Embedding is weight-only whatever `a_bits`
    says (its input is token ids): per-row symmetric weights, looked up as they are."""

    # class-level defaults, so modules pickled before these existed still run
    a_symmetric = False
    a_lo = a_hi = o_lo = o_hi = 0.0
    out_bits: int | None = None
    w_code_bits: int | None = None  # None: codes use all of w_bits
    qat = False  # training path on (see enable_qat); off by default and in modules pickled before it existed

    def __init__(self, fp: nn.Module, w_bits: int, a_bits: int, weight_method: str = "mse",
                 a_symmetric: bool = False, w_code_bits: int | None = None) -> None:
        super().__init__()
        if not isinstance(fp, QUANTIZABLE + EMBEDDINGS):
            raise UnsupportedModelError(f"cannot quantize {type(fp).__name__}")
        lo, hi = quant.MIN_BITS, quant.MAX_BITS
        if not lo <= int(w_bits) <= hi:
            raise ConfigError(f"weight bits must be in {lo}..{hi}, not {w_bits}")
        if not (lo <= int(a_bits) <= hi or int(a_bits) == WEIGHT_ONLY):
            raise ConfigError(f"activation bits must be in {lo}..{hi} or {WEIGHT_ONLY} (weight-only), not {a_bits}")
        if weight_method not in quant.WEIGHT_METHODS:
            raise ConfigError(f"weight_method must be one of {', '.join(quant.WEIGHT_METHODS)}, not {weight_method!r}")
        self.fp = copy.deepcopy(fp)
        self.w_bits, self.a_bits, self.weight_method = int(w_bits), int(a_bits), weight_method
        self.a_symmetric = bool(a_symmetric)
        if w_code_bits is not None and not 2 <= int(w_code_bits) < self.w_bits:
            raise ConfigError(f"w_code_bits must be in 2..{self.w_bits - 1}, not {w_code_bits}")
        self.w_code_bits = None if w_code_bits is None else int(w_code_bits)
        self.a_lo, self.a_hi = 0.0, 0.0  # the calibrated input range
        w_fq, q, scale = quant.fake_quant_weight(self.fp.weight, self.code_bits, weight_method)
        self.register_buffer("w_int", q.to(torch.int8 if self.w_bits <= 8 else torch.int16))
        self.register_buffer("w_scale", scale.float())
        self.register_buffer("w_fq", w_fq)
        self.a_scale, self.a_zero_point, self.a_qmin, self.a_qmax = 1.0, 0, 0, 2**self.a_bits - 1
        self.o_scale, self.o_zero_point, self.o_qmin, self.o_qmax = 1.0, 0, 0, 255
        self.observer: quant.MinMaxObserver | None = None
        self.out_observer: quant.MinMaxObserver | None = None
        self.calibrated = False

    def start_calibration(self) -> None:
        self.observer = quant.MinMaxObserver()
        self.out_observer = quant.MinMaxObserver() if self.out_bits else None

    def finish_calibration(self) -> None:
        if self.observer is None or not self.observer.seen:
            raise DataError("a quantized layer saw no data during calibration; is the calibration data empty?")
        self.a_lo, self.a_hi = self.observer.lo, self.observer.hi
        if not self.weight_only:
            qparams = quant.symmetric_act_qparams if self.a_symmetric else quant.act_qparams
            self.a_scale, self.a_zero_point, self.a_qmin, self.a_qmax = qparams(self.a_lo, self.a_hi, self.a_bits)
        if self.out_bits:
            self.o_lo, self.o_hi = self.out_observer.lo, self.out_observer.hi
            qparams = quant.symmetric_act_qparams if self.a_symmetric else quant.act_qparams
            self.o_scale, self.o_zero_point, self.o_qmin, self.o_qmax = qparams(self.o_lo, self.o_hi, self.out_bits)
        self.observer = self.out_observer = None
        self.calibrated = True

    def enable_qat(self) -> QuantLayer:
        """Turn the training path on: the forward fake-quantizes `fp.weight` (and the bias) on the
        fly with the straight-through estimator at the frozen `w_scale` and the calibrated input
        qparams, so gradients reach the float weights. Call `freeze()` when done."""
        if not self.calibrated:
            raise RuntimeError("QuantLayer.enable_qat before calibration; call hawq.quantize with data first")
        self.qat = True
        return self

    @torch.no_grad()
    def refresh(self) -> QuantLayer:
        """Recompute `w_int` and `w_fq` from the current `fp.weight` at the same `w_scale` (the
        export reads them; `bias_int` follows `fp.bias` by itself)."""
        q = quant.quantize_weight(self.fp.weight.detach(), self.w_scale, self.code_bits)
        self.w_int = q.to(self.w_int.dtype)
        self.w_fq = q * self.w_scale.reshape(-1, *([1] * (q.dim() - 1)))
        return self

    def freeze(self) -> QuantLayer:
        """`refresh()` and turn the training path off: the layer is again a plain fake-quant layer."""
        self.refresh()
        self.qat = False
        return self

    @property
    def code_bits(self) -> int:
        """The bits the weight codes use: w_bits, or fewer under reduce-range (w_code_bits)."""
        return self.w_code_bits or self.w_bits

    @property
    def weight_only(self) -> bool:
        """No input quantizer: a_bits 32, or an embedding (its input is token ids)."""
        return self.a_bits == WEIGHT_ONLY or isinstance(self.fp, EMBEDDINGS)

    @property
    def bias_int(self) -> torch.Tensor | None:
        if self.weight_only or self.fp.bias is None:
            return None
        return quant.quantize_bias(self.fp.bias, self.w_scale, self.a_scale)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer(x)
            y = self.fp(x)
            if getattr(self, "out_observer", None) is not None:
                self.out_observer(y)
            return y
        if not self.calibrated:
            raise RuntimeError("QuantLayer used before calibration; call hawq.quantize with data")
        if self.qat:
            return self._forward_qat(x)
        if isinstance(self.fp, EMBEDDINGS):
            return _embed(self.fp, x, self.w_fq)
        if self.weight_only:
            xq, b = x, self.fp.bias
        else:
            xq = quant.fake_quant_act(x, self.a_scale, self.a_zero_point, self.a_qmin, self.a_qmax)
            b = None if self.fp.bias is None else quant.quantize_bias(self.fp.bias, self.w_scale, self.a_scale)[1]
        if isinstance(self.fp, nn.Conv2d):
            f = self.fp
            y = F.conv2d(xq, self.w_fq, b, f.stride, f.padding, f.dilation, f.groups)
        else:
            y = F.linear(xq, self.w_fq, b)
        if self.out_bits:
            y = quant.fake_quant_act(y, self.o_scale, self.o_zero_point, self.o_qmin, self.o_qmax)
        return y

    def _forward_qat(self, x: torch.Tensor) -> torch.Tensor:
        w = quant.fake_quant_weight_ste(self.fp.weight, self.w_scale, self.code_bits)
        if isinstance(self.fp, EMBEDDINGS):
            return _embed(self.fp, x, w)
        if self.weight_only:
            xq, b = x, self.fp.bias
        else:
            xq = quant.fake_quant_act_ste(x, self.a_scale, self.a_zero_point, self.a_qmin, self.a_qmax)
            b = None if self.fp.bias is None else quant.fake_quant_bias_ste(self.fp.bias, self.w_scale, self.a_scale)
        f = self.fp
        y = F.conv2d(xq, w, b, f.stride, f.padding, f.dilation, f.groups) if isinstance(f, nn.Conv2d) else F.linear(xq, w, b)
        if self.out_bits:
            y = quant.fake_quant_act_ste(y, self.o_scale, self.o_zero_point, self.o_qmin, self.o_qmax)
        return y

    def extra_repr(self) -> str:
        sym = ", a_symmetric=True" if self.a_symmetric else ""
        out = f", out_bits={self.out_bits}" if self.out_bits else ""
        qat = ", qat=True" if self.qat else ""
        codes = f", w_code_bits={self.w_code_bits}" if self.w_code_bits else ""
        return f"{type(self.fp).__name__}, w_bits={self.w_bits}{codes}, a_bits={self.a_bits}{sym}{out}{qat}"


def _embed(f: nn.Embedding, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, w, f.padding_idx, f.max_norm, f.norm_type, f.scale_grad_by_freq, f.sparse)


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def as_assignment(plan) -> dict[str, tuple[int, int]]:
    """name -> (w_bits, a_bits) from a Plan or a mapping of name -> w_bits | (w_bits, a_bits)."""
    if hasattr(plan, "assignment"):
        return dict(plan.assignment())
    if isinstance(plan, Mapping):
        return {n: (v, 8) if isinstance(v, int) else (int(v[0]), int(v[1])) for n, v in plan.items()}
    raise ConfigError(f"expected a hawq Plan or a mapping of layer name -> bits, not {type(plan).__name__}")


@torch.no_grad()
def quantize(model: nn.Module, plan, data: Iterable, weight_method: str = "mse", quantize_outputs: bool = False,
             target: Target | str = "ort") -> nn.Module:
    """A new fake-quant module: BN folded, each planned layer swapped for a QuantLayer, then
    calibrated on `data` (an iterable of (x, y) or x batches). The caller's model is unchanged.
    `target`: the runtime the model is for (a hawq.target.Target, or "ort" / "tensorrt"); the
    model computes what that runtime computes, and records it (`hawq_target`) for the exporter.
    "tensorrt": signed symmetric activations, zero point 0 (what TensorRT takes); "ort": unsigned
    with a zero point (what ONNX Runtime's CPU integer kernels take).
    `quantize_outputs`: also quantize, at 8 bits per tensor, the outputs of quantized convs that
    do not feed only other quantized layers (residual adds, pooling; see `output_quant_layers`):
    ONNX Runtime then runs every 8-bit conv as QLinearConv instead of a float Conv.
    Target("ort", int8="reduce-range"): layers whose weight codes could make a pair of u8×s8
    products exceed int16 (8-bit weights behind 8-bit inputs) get 7-bit codes, as that export
    stores them: ONNX Runtime then runs them in its fast u8×s8 kernels, exactly on every CPU, and
    this model is the one the file computes (without it the default export stores them as
    UINT8 + 128, exact too, in the u8×u8 kernels; see hawq.legalize)."""
    target = Target.of(target)
    act_symmetric = target.act_symmetric
    assign = as_assignment(plan)
    folded = fold_bn(model)
    mods = dict(folded.named_modules())
    missing = [n for n in assign if not isinstance(mods.get(n), QUANTIZABLE + EMBEDDINGS)]
    if missing:
        raise ArtifactError(f"the plan names layers this model lacks or cannot quantize: {', '.join(missing[:5])}; "
                            "was the plan made for another model?")
    kept_float = set(getattr(plan, "float_layers", ()))  # left out of the profile on purpose
    left = [n for n, m in mods.items() if isinstance(m, QUANTIZABLE) and n not in assign and n not in kept_float]
    if hasattr(plan, "assignment") and left:  # a Plan's totals count every layer; a mapping may name a few
        raise ArtifactError(f"the plan leaves {len(left)} quantizable layer(s) of this model out ({', '.join(left[:5])}"
                            "), so its size and label would be wrong; solve again with a profile of this model")
    why = mismatch(getattr(plan, "target", ""), target.name,
                   {n: (type(mods[n]).__name__, tuple(mods[n].weight.shape), c) for n, c in assign.items()})
    if why:
        warnings.warn(why, TargetMismatchWarning, stacklevel=2)
    for name, m in mods.items():
        if name in assign and not bool(torch.isfinite(m.weight).all()):
            raise DataError(f"layer {name} has non-finite weights (NaN or inf); check the checkpoint")
    for name, (wb, ab) in assign.items():
        codes = reduced_code_bits(wb, ab, act_symmetric) if target.reduce_range else wb
        set_module(folded, name, QuantLayer(mods[name], wb, ab, weight_method, act_symmetric,
                                             None if codes == wb else codes))
    if quantize_outputs:
        for name in output_quant_layers(folded):
            folded.get_submodule(name).out_bits = 8
    calibrate(folded, data)
    folded.hawq_target = target
    return folded.eval()


def reduced_code_bits(w_bits: int, a_bits: int, a_symmetric: bool) -> int:
    """The weight code bits reduce-range gives a layer: fewer than `w_bits` only where ONNX
    Runtime runs it in an 8-bit integer kernel (weights and quantized inputs of at most 8 bits)
    and a pair of products could pass int16. Signed inputs count as uint8: ONNX Runtime's CPU
    provider shifts them by 128."""
    if w_bits > 8 or a_bits > 8:
        return w_bits
    a_max = 128 + 2 ** (a_bits - 1) - 1 if a_symmetric else 2 ** a_bits - 1
    return exact_code_bits(w_bits, a_max)


@torch.no_grad()
def calibrate(qmodel: nn.Module, data: Iterable) -> nn.Module:
    layers = quant_layers(qmodel)
    for m in layers.values():
        m.start_calibration()
    qmodel.eval()
    seen = 0
    try:
        for batch in data:
            forward(qmodel, batch)
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


_PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Identity, nn.Dropout)
_PASS_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu6, F.hardtanh, torch.nn.functional.dropout}


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QuantLayer) or super().is_leaf_module(m, qualname)


def output_quant_layers(model: nn.Module) -> list[str]:
    """Quantized convs whose output does not go, through ReLU/ReLU6/Hardtanh/Identity/Dropout
    only, to other quantized layers alone (e.g. into a residual add or a pooling), so that ONNX
    Runtime can fuse them into QLinearConv only with a quantized output. Needs torch.fx; a model
    it cannot trace gets none (with a warning)."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception as e:
        log.warning("outputs not quantized: the model cannot be traced by torch.fx (%s)", e.__class__.__name__)
        return []
    mods = dict(model.named_modules())

    def quant_only(node) -> bool:  # every path from node's value ends in a QuantLayer input
        if not node.users:
            return False
        for u in node.users:
            if u.op == "call_module" and isinstance(mods.get(u.target), QuantLayer) and u.args and u.args[0] is node \
                    and not mods[u.target].weight_only:
                continue
            passes = (u.op == "call_module" and isinstance(mods.get(u.target), _PASS_THROUGH)) or \
                (u.op == "call_function" and u.target in _PASS_FUNCTIONS) or (u.op == "call_method" and u.target in ("relu", "relu_"))
            if not (passes and quant_only(u)):
                return False
        return True

    return [n.target for n in graph.nodes if n.op == "call_module" and isinstance(mods.get(n.target), QuantLayer)
            and isinstance(mods[n.target].fp, nn.Conv2d) and not quant_only(n)]
