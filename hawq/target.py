"""The runtime a quantized model is made for. `quantize` takes it, so the fake-quant arithmetic,
its calibration and the accuracy hawq reports are those the runtime computes; the exporter then
legalises for the same target and only checks what quantize already did."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

TARGETS = ("ort", "tensorrt")
# how ort stores 8-bit weights that u8×s8 kernels without VNNI would saturate on (see hawq.legalize)
ORT_INT8 = ("u8u8", "reduce-range", "s8-vnni")  # the first is the default (benchmarks/ort_int8.py)


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
