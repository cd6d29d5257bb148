"""Quantizer math only: ranges, scales, zero points, rounding, observers. Imports nothing of hawq.

Weights: symmetric, per output channel (axis 0), zero point 0, restricted range
[-(2^(b-1)-1), 2^(b-1)-1] (what TensorRT accepts). Activations: per tensor, unsigned with a zero
point (0 after ReLU). Rounding is half-to-even everywhere, as in ONNX QuantizeLinear.
"""
from __future__ import annotations

import torch

WEIGHT_METHODS = ("minmax", "mse")
MIN_BITS, MAX_BITS = 2, 16  # the widths these quantizers take, weights and activations alike
WEIGHT_ONLY = 32  # a_bits value meaning "the input stays float" (weight-only quantization)


def weight_qmax(bits: int) -> int:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"weight bits must be in 2..16, not {bits}")
    return 2 ** (bits - 1) - 1


def _channel_amax(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).abs().amax(dim=1)


def quantize_weight(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes (as float tensor) of `w` with one scale per output channel."""
    qmax = weight_qmax(bits)
    s = scale.reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w / s), -qmax, qmax)


def weight_scale(w: torch.Tensor, bits: int, method: str = "mse", grid: int = 40) -> torch.Tensor:
    """Per-output-channel scale. 'minmax': max|w|/qmax. 'mse': the clipping of max|w| (searched
    over `grid` ratios from 1.0 down to 0.2) that minimises the channel's squared error."""
    if method not in WEIGHT_METHODS:
        raise ValueError(f"weight method must be one of {WEIGHT_METHODS}, not {method!r}")
    w = w.detach()
    qmax = weight_qmax(bits)
    amax = _channel_amax(w).clamp_min(1e-12)
    if method == "minmax":
        return amax / qmax
    flat = w.reshape(w.shape[0], -1)
    best_s, best_err = amax / qmax, None
    for ratio in torch.linspace(1.0, 0.2, grid).tolist():
        s = amax * ratio / qmax
        err = ((torch.clamp(torch.round(flat / s[:, None]), -qmax, qmax) * s[:, None] - flat) ** 2).sum(1)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_s = torch.where(better, s, best_s)
        best_err = torch.where(better, err, best_err)
    return best_s


def fake_quant_weight(w: torch.Tensor, bits: int, method: str = "mse") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dequantized weight, integer codes, per-channel scale)."""
    scale = weight_scale(w, bits, method)
    q = quantize_weight(w.detach(), scale, bits)
    return q * scale.reshape(-1, *([1] * (w.dim() - 1))), q, scale


def weight_sq_error(w: torch.Tensor, bits: int, method: str = "mse") -> float:
    """‖Q_b(W) − W‖², summed (not averaged)."""
    wq, _, _ = fake_quant_weight(w, bits, method)
    return float(((wq - w.detach()) ** 2).sum())


def act_qparams(lo: float, hi: float, bits: int = 8) -> tuple[float, int, int, int]:
    """(scale, zero_point, qmin, qmax) of an unsigned affine quantizer covering [lo, hi] ∪ {0}."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"activation bits must be in 2..16, not {bits}")
    qmax = 2**bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / qmax
    zp = int(min(max(round(-lo / scale), 0), qmax))
    return scale, zp, 0, qmax


def symmetric_act_qparams(lo: float, hi: float, bits: int = 8) -> tuple[float, int, int, int]:
    """(scale, 0, qmin, qmax) of a signed symmetric quantizer covering [lo, hi] (what TensorRT takes):
    scale = max(|lo|, |hi|) / (2^(b-1) - 1), range [-2^(b-1), 2^(b-1) - 1] as ONNX int8 saturates."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"activation bits must be in 2..16, not {bits}")
    qmax = 2 ** (bits - 1) - 1
    return max(abs(lo), abs(hi), 1e-8) / qmax, 0, -qmax - 1, qmax


def fake_quant_act(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)


class _WeightSTE(torch.autograd.Function):
    """quantize_weight(w, scale, bits) · scale forward; the straight-through gradient backward."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
        qmax = weight_qmax(bits)
        s = scale.reshape(-1, *([1] * (w.dim() - 1)))
        r = torch.round(w / s)
        ctx.save_for_backward((r >= -qmax) & (r <= qmax))
        return torch.clamp(r, -qmax, qmax) * s

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inside, = ctx.saved_tensors
        return grad * inside, None, None


def fake_quant_weight_ste(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """The dequantized weight at a fixed per-channel `scale`, bit for bit what
    `quantize_weight(w, scale, bits) * scale` gives, differentiable in `w` by the straight-through
    estimator: the gradient passes unchanged where the rounded code lies in ±qmax (as torch's
    fake_quantize kernels decide) and is zero where it was clipped. `scale` gets no gradient."""
    return _WeightSTE.apply(w, scale.detach(), int(bits))


def fake_quant_act_ste(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """`fake_quant_act` for training: the same kernel, whose backward is already the
    straight-through estimator (identity where round(x/scale)+zero_point lies in [qmin, qmax],
    zero where clipped). Named apart so the training path says what it relies on."""
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)


class _BiasSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        q = torch.round(b / s)
        ctx.save_for_backward((q >= -(2**31)) & (q <= 2**31 - 1))
        return torch.clamp(q, -(2**31), 2**31 - 1) * s

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inside, = ctx.saved_tensors
        return grad * inside, None


def fake_quant_bias_ste(b: torch.Tensor, w_scale: torch.Tensor, a_scale: float) -> torch.Tensor:
    """The dequantized int32 bias of `quantize_bias` (bit for bit), with the straight-through
    gradient in `b` (zero only where the int32 range clips)."""
    return _BiasSTE.apply(b, (w_scale * a_scale).detach())


def quantize_bias(b: torch.Tensor, w_scale: torch.Tensor, a_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 codes, dequantized bias) at scale s_w · s_a per output channel."""
    s = w_scale * a_scale
    q = torch.clamp(torch.round(b.detach() / s), -(2**31), 2**31 - 1)
    return q.to(torch.int32), q * s


class MinMaxObserver:
    """Running min and max of every tensor it sees."""

    def __init__(self) -> None:
        self.lo = float("inf")
        self.hi = float("-inf")

    def __call__(self, x: torch.Tensor) -> None:
        x = x.detach()
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    @property
    def seen(self) -> bool:
        return self.lo <= self.hi
