"""What this CPU's integer dot products do: the instruction-set facts that decide whether ONNX
Runtime's 8-bit kernels compute a file's integers exactly here. Imports only hawq.quant.

ONNX Runtime's CPU GEMM/conv kernels (MLAS) multiply u8 activations by s8 weights with
  - VNNI (AVX512-VNNI, AVX-VNNI) or AMX: 4 products summed straight into int32 (exact);
  - AVX2 or AVX512BW without VNNI: `vpmaddubsw`, which adds *pairs* of products into int16 with
    saturation, so a·w + a'·w' beyond ±32767 is clipped (wrong results: measured 118 for 233 on
    one QLinearConv of all-255 inputs and all-127 weights, emulated Haswell and EPYC-Rome CPUs);
  - u8 × u8 weights on x86: widened to int16 first, then `vpmaddwd` into int32 (exact);
  - ARM64: `udot`/`sdot` into int32, or widening multiplies without dot-product (exact).
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

import numpy as np

from .quant import weight_qmax

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
PAIRWISE_FLAGS = ("avx2", "avx512bw")  # vpmaddubsw: the u8×s8 kernels without VNNI use it
REPORTED_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
INT16_MAX = 32767


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo ('flags' on x86, 'Features' on ARM64), or an
    empty set where there is no such file (macOS, Windows)."""
    for line in (_read_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def u8s8_pairs_saturate(machine: str, flags: set[str]) -> bool | None:
    """Whether ONNX Runtime's u8×s8 kernels add pairs of products into int16 with saturation on
    this CPU: True on x86 with AVX2/AVX512BW and no VNNI/AMX, False where the sum is exact, None
    where the flags could not be read on x86."""
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    if not flags:
        return None
    return any(f in flags for f in PAIRWISE_FLAGS) and not any(f in flags for f in VNNI_FLAGS)


@functools.lru_cache(maxsize=None)
def ort_u8s8_exact() -> bool:
    """Measured, not inferred: whether ONNX Runtime's u8×s8 QLinearConv on this CPU gives the
    exact integer result of the worst case (16 channels × 3×3 of inputs 255 and weights 127:
    4,663,440 / 20000 -> 233; the pairwise-saturated kernel gives 118). Emulators and VMs may
    report flags the kernels do not see; this asks the kernels themselves."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    c = 16
    consts = {"xs": np.float32(1), "xz": np.uint8(0), "w": np.full((1, c, 3, 3), 127, np.int8),
              "ws": np.float32(1), "wz": np.int8(0), "ys": np.float32(20000), "yz": np.uint8(0)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    graph = helper.make_graph([node], "u8s8_probe", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 1, 1, 1])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    y = int(sess.run(None, {"x": np.full((1, c, 3, 3), 255, np.uint8)})[0].ravel()[0])
    return y == round(255 * 127 * c * 9 / 20000)


def describe(cpuinfo: str | None = None, machine: str | None = None) -> dict:
    """This CPU for verify.json: architecture, model name, the flags that decide integer
    kernels, whether they say u8×s8 pairs saturate here, and what ONNX Runtime's u8×s8 kernel
    measurably does (`ort_u8s8_exact`)."""
    machine = machine or platform.machine()
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    flags = cpu_flags(text)
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("model name", "cpu model", "hardware"):
            model = value.strip()
            break
    return {"machine": machine, "model": model, "flags": sorted(f for f in REPORTED_FLAGS if f in flags),
            "u8s8_pairs_saturate": u8s8_pairs_saturate(machine, flags), "ort_u8s8_exact": ort_u8s8_exact()}


def pair_is_exact(a_max: int, w_max: int) -> bool:
    """Whether two products a·w with 0 <= a <= a_max and |w| <= w_max always fit int16, i.e.
    whether a u8×s8 kernel that adds pairs in int16 (AVX2 without VNNI) computes them exactly."""
    return 2 * a_max * w_max <= INT16_MAX


def exact_code_bits(w_bits: int, a_max: int) -> int:
    """The widest weight codes, at most `w_bits` bits (symmetric, ±(2^(b-1) - 1)), whose products
    with inputs up to `a_max` a u8×s8 kernel adding pairs in int16 computes exactly: `w_bits`
    itself where it is already exact, 7 for 8-bit weights behind 8-bit unsigned inputs."""
    return max((b for b in range(3, w_bits + 1) if pair_is_exact(a_max, weight_qmax(b))), default=2)


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
