"""The runtime a quantized model is made for. `quantize` takes it, so the fake-quant arithmetic,
its calibration and the accuracy hawq reports are those the runtime computes; the exporter then
legalises for the same target and only checks what quantize already did.

`trt_accepts` says, per layer, what TensorRT runs when asked for a (w_bits, a_bits) it does not:
the legaliser applies it to models quantized from plans made without a target. `runs_as` is that
(identity for ort) with each width rounded up to its container, as stored: the solver takes the
target's candidates from it before solving (SolveSpec(target=...)), so a plan never needs
changing afterwards."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .graph import EMBEDDING_KINDS
from .quant import WEIGHT_ONLY

TARGETS = ("ort", "tensorrt")
# how ort stores 8-bit weights that u8×s8 kernels without VNNI would saturate on (see hawq.legalize)
ORT_INT8 = ("u8u8", "reduce-range", "s8-vnni")  # the first is the default (benchmarks/ort_int8.py)
TRT_INT4_BLOCKS = (128, 64)  # block sizes TensorRT takes for INT4 weights


@dataclass(frozen=True)
class Target:
    """A runtime and how it runs 8-bit layers.

    name: "ort" (ONNX Runtime: unsigned activations with a zero point after ReLU, what its CPU
        integer kernels fuse) or "tensorrt" (signed symmetric activations, zero point 0).
    int8: ort only, how 8-bit layers behind 8-bit inputs stay exact on every CPU, one of ORT_INT8;
        "reduce-range" quantizes their weights to 7-bit codes.
    """

    name: str = "ort"
    int8: str = ORT_INT8[0]

    def __post_init__(self) -> None:
        if self.name not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, not {self.name!r}")
        if self.int8 not in ORT_INT8:
            raise ConfigError(f"int8 must be one of {', '.join(ORT_INT8)}, not {self.int8!r}")

    @property
    def act_symmetric(self) -> bool:
        """Whether activations are signed symmetric (zero point 0), as TensorRT takes them."""
        return self.name == "tensorrt"

    @property
    def reduce_range(self) -> bool:
        """Whether 8-bit layers behind 8-bit inputs get 7-bit weight codes (ort, int8 "reduce-range")."""
        return self.name == "ort" and self.int8 == "reduce-range"

    def to_dict(self) -> dict[str, str]:
        """{"name": ..., "int8": ...}, as the quantized-model file records it."""
        return {"name": self.name, "int8": self.int8}

    @classmethod
    def of(cls, value: Any) -> Target:
        """A Target from a Target, a name ("ort", "tensorrt") or a dict made by to_dict.

        value: the target as given.
        """
        if isinstance(value, Target):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict) and set(value) <= {"name", "int8"}:
            return cls(**value)
        raise ConfigError(f"target must be one of {', '.join(TARGETS)} or a hawq Target, not {value!r}")


def trt_int4_problem(kind: str, weight_shape: tuple[int, ...], w_bits: int) -> str | None:
    """Why TensorRT cannot run this 2-4-bit layer as an INT4 weight, or None if it can (INT4 is
    weight-only, block-wise along K, on MatMul/Gemm only).

    kind: the layer's class name ("Conv2d", "Linear", "Embedding").
    weight_shape: its weight's shape, [N, K] for a Linear.
    w_bits: the weight width asked for.
    """
    if w_bits == 2:
        return "TensorRT has no INT2"
    if kind != "Linear":
        return f"TensorRT takes INT4 only as weight-only MatMul/Gemm weights, not {kind}"
    n, k = weight_shape[:2]
    if k % min(TRT_INT4_BLOCKS):
        return f"TensorRT INT4 needs block scales of {' or '.join(map(str, TRT_INT4_BLOCKS))} along K; K={k}"
    if n % 2:
        return f"TensorRT INT4 needs an even last dimension to pack; N={n}"
    return None


@dataclass(frozen=True)
class Accepted:
    """What TensorRT runs for a layer asked for another (w_bits, a_bits), the widths kept as coded
    (a 3-bit weight stays 3-bit codes in INT4); each reason is "" where nothing changed.

    w_bits, a_bits: what it runs (a_bits WEIGHT_ONLY: the input left float).
    weight: why the weight width changed.
    weight_only: why the input was left float.
    activation: why the activation width changed.
    """

    w_bits: int
    a_bits: int
    weight: str = ""
    weight_only: str = ""
    activation: str = ""


def trt_accepts(kind: str, weight_shape: tuple[int, ...], cand: tuple[int, int]) -> Accepted:
    """What TensorRT runs for this layer when asked for `cand`: an embedding table and every conv
    at INT8; 2-4-bit Linear weights as INT4 weight-only where trt_int4_problem allows (INT8
    otherwise); no INT16 weights or activations (8 bits instead). The legaliser applies exactly
    this; runs_as adds the containers' rounding for pricing.

    kind: the layer's class name.
    weight_shape: its weight's shape.
    cand: (w_bits, a_bits) asked for; a_bits WEIGHT_ONLY for a float input.
    """
    w, a = cand
    if kind in EMBEDDING_KINDS:
        return Accepted(8, a, "" if w == 8 else "TensorRT: an embedding table is INT8 (DequantizeLinear → Gather); "
                        "INT4 weights run only in weight-only MatMul/Gemm")
    weight = ""
    if 2 <= w <= 4:
        problem = trt_int4_problem(kind, weight_shape, w)
        if problem is None:
            return Accepted(w, WEIGHT_ONLY, weight_only="" if a == WEIGHT_ONLY else
                            "TensorRT runs INT4 weights only as weight-only MatMul/Gemm")
        w, weight = 8, problem
    elif w > 8:
        w, weight = 8, "TensorRT has no INT16 weights"
    if 8 < a < WEIGHT_ONLY:
        return Accepted(w, 8, weight, activation="TensorRT has no INT16 activations")
    return Accepted(w, a, weight)


def runs_as(target: str, kind: str, weight_shape: tuple[int, ...], cand: tuple[int, int]
            ) -> tuple[tuple[int, int], str]:
    """The (w_bits, a_bits) the runtime `target` runs for this layer when asked for `cand`, as the
    solver prices it, and why it differs ("" when it is `cand`). ort runs every candidate (2-4-bit
    convs as DequantizeLinear + float Conv: a storage saving). tensorrt: what trt_accepts says, and
    a width below its container's (3 in INT4, 5-7 in INT8) becomes the container's, since it is
    stored in as many bits.

    target: a name of TARGETS.
    kind: the layer's class name.
    weight_shape: its weight's shape.
    cand: (w_bits, a_bits) asked for; a_bits WEIGHT_ONLY for a float input.
    """
    if target == "ort":
        return cand, ""
    acc = trt_accepts(kind, weight_shape, cand)
    w, container = acc.w_bits, ""
    if w == 3:
        w, container = 4, "TensorRT stores 3-bit weights as INT4, 4 bits each: the full INT4 range costs nothing more"
    elif 4 < w < 8:
        w, container = 8, f"TensorRT stores {w}-bit weights as INT8, 8 bits each: the full INT8 range costs nothing more"
    why = [r for r in (acc.weight, container, acc.weight_only, acc.activation) if r]
    return (w, acc.a_bits), "; ".join(why)


class TargetMismatchWarning(UserWarning):
    """A plan quantized for another runtime than the one it was solved for."""


def mismatch(planned_for: str, target: str, layers: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]]) -> str:
    """Why a plan solved for `planned_for` ("" for any runtime) does not run as planned on
    `target`, or "" when it does.

    planned_for: the plan's target (Plan.target).
    target: the runtime it is quantized for.
    layers: per layer, (class name, weight shape, (w_bits, a_bits) planned).
    """
    if planned_for == target:
        return ""
    fix = f"solve again with --target {target} (SolveSpec(target={target!r}))"
    if planned_for:
        return (f"the plan was solved for {planned_for} and is quantized for {target}: its sizes and candidates are "
                f"{planned_for}'s; {fix}")
    off = [(name, cand, runs_as(target, kind, shape, cand)[0]) for name, (kind, shape, cand) in layers.items()]
    off = [(name, c, r) for name, c, r in off if r != c]
    if not off:
        return ""
    fmt = lambda c: f"W{c[0]}" + (" weight-only" if c[1] == WEIGHT_ONLY else f"A{c[1]}")  # noqa: E731
    shown = ", ".join(f"{n} {fmt(c)} → {fmt(r)}" for n, c, r in off[:3])
    return (f"{target} runs or stores {len(off)} layer(s) of this plan (made without a target) otherwise than "
            f"planned ({shown}{', …' if len(off) > 3 else ''}): the export promotes them and the file is larger "
            f"than the plan; {fix}")
