"""Run an exported model in ONNX Runtime and compare it with the fake-quant PyTorch model.

`ort_session` is the one place a session is made, so verification, the export scripts and the
benchmark all get the same workarounds for graphs with signed 8-bit activation quantizers (the
tensorrt target), found on ONNX Runtime 1.31-1.32:
  - QDQS8ToU8Transformer is disabled: with it, opset >= 21 graphs in which a signed int8 Q→DQ
    feeds Reshape fail to load ("output_dtype INT8 does not match y_zero_point type UINT8", ORT
    issue 25526). On x86 ONNX Runtime has no signed-activation integer kernels anyway.
  - ClipQuantRewrite is disabled: it drops Clip(0, 6) (ReLU6) in front of a signed QuantizeLinear
    with zero point 0 as if the quantizer's range started at 0, and the output goes wrong (cosine
    0.80 on mobilenet_v2).
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import torch
from onnx import TensorProto
from torch import nn

from .batches import forward, logits_of, model_inputs, tree_map
from .cpu import describe as describe_cpu
from .errors import ArtifactError, ConfigError, VerificationError
from .graph import set_module
from .rewrite import quant_layers

S8_WORKAROUND = ["QDQS8ToU8Transformer", "ClipQuantRewrite"]


@dataclass
class Verification:
    """ONNX Runtime against the PyTorch fake-quant model on the same inputs.

    One step is one LSB of an 8-bit quantizer of the output: (max - min) / 255 of the PyTorch
    outputs. Besides, when the output comes straight from a QuantLayer with a quantized input,
    `max_diff_input_steps` counts in a_scale·max_k|W[c,k]| per output channel c: the most that one
    of that layer's input activations off by one step (the usual ORT/PyTorch mismatch, from
    rounding in a different order) can move the output. Deep models accumulate many such flips."""
    samples: int
    max_abs_diff: float
    max_diff_steps: float
    frac_off_by_more_than_1_step: float
    cosine: float
    top1_agreement: float | None  # argmax over dim 1, for 2-D outputs only
    step: float  # the output step
    # mean |ORT - fake-quant| over mean |fake-quant - float model|: how the runtime's deviation
    # compares with the quantization error itself (depth-independent, unlike the step counts)
    diff_vs_quant_error: float | None = None
    # top-1 agreement on the samples whose reference top-1 leads its runner-up by >= 2 output steps
    # (near-ties, common in random-weight models, flip on one-step differences: they are not errors)
    top1_agreement_decisive: float | None = None
    decisive_samples: int | None = None
    max_diff_input_steps: float | None = None
    onnxruntime: str = ""
    disabled_optimizers: list[str] = field(default_factory=list)
    kernels: dict[str, str] = field(default_factory=dict)  # layer -> what ONNX Runtime (CPU) runs it as
    # the legalised model against the model as planned (only when the legaliser changed something)
    plan_cosine: float | None = None
    plan_top1_agreement: float | None = None
    # the PyTorch fake-quant model run in float32 (the reference above) against the same model run
    # in float64 (its exact arithmetic, to float32's eyes), in the same units: the share of outputs
    # that float32 rounding alone moves by more than one step. Quantized models amplify rounding: an
    # activation that lands on the neighbouring level moves the next layer's inputs, which move
    # more levels, and so on (random-weight smoke models: 29% of vit_b_16's outputs for ort, 49% of
    # resnet50's with 2-bit layers).
    float32_frac_off_by_more_than_1_step: float | None = None
    float32_cosine: float | None = None
    # ONNX Runtime against the float64 run, in the same units (as faithful as PyTorch float32 when
    # it is no higher than float32_frac_off_by_more_than_1_step)
    exact_frac_off_by_more_than_1_step: float | None = None
    # the CPU the check ran on (hawq.cpu.describe): its flags and whether ONNX Runtime's u8×s8
    # kernel measurably sums exactly here
    cpu: dict = field(default_factory=dict)


def disabled_optimizers(model: str | Path | onnx.ModelProto) -> list[str]:
    """ONNX Runtime optimizers to disable for this model: S8_WORKAROUND when an activation
    QuantizeLinear is signed 8-bit, else none (see the module's docstring)."""
    m = onnx.load(str(model), load_external_data=False) if not isinstance(model, onnx.ModelProto) else model
    types = {t.name: t.data_type for t in m.graph.initializer}
    signed = any(n.op_type == "QuantizeLinear" and len(n.input) > 2 and types.get(n.input[2]) == TensorProto.INT8
                 for n in m.graph.node)
    return list(S8_WORKAROUND) if signed else []


def ort_session(path: str | Path, *, providers: list | None = None, threads: int = 0,
                matmulnbits_accuracy_level: int | None = 1, optimized_model_path: str | Path | None = None,
                graph_optimization_level=None):
    """An onnxruntime.InferenceSession for a hawq export, with the workaround above applied.
    `matmulnbits_accuracy_level=1` (the default here) makes the MatMulNBits that float-input
    Linear layers fuse into compute in fp32, the arithmetic hawq verifies and its fake-quant model
    emulates. ONNX Runtime's own default, 4 (None here), quantizes their input to int8 on the fly:
    an approximation of that arithmetic."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ArtifactError(f"{path} not found; export a model first (`hawq export`)")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if graph_optimization_level is not None:
        so.graph_optimization_level = graph_optimization_level
    if matmulnbits_accuracy_level is not None:
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(matmulnbits_accuracy_level))
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    try:
        return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"],
                                    disabled_optimizers=disabled_optimizers(path) or None)
    except Exception as e:  # noqa: BLE001 — protobuf, onnx and onnxruntime each raise their own kind
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ArtifactError(f"{path} is not an ONNX model ONNX Runtime can load ({e.__class__.__name__}: {first}); "
                            "export it again with `hawq export`") from None


def verify_onnx(path: str | Path, qmodel: nn.Module, inputs: Any, *,
                min_top1: float = 0.99, min_cosine: float = 0.999, max_frac_off: float = 0.25,
                max_diff_vs_quant_error: float = 1.0, plan_model: nn.Module | None = None) -> Verification:
    """Check the ONNX file, run it in ONNX Runtime (CPU) on `inputs` and compare with `qmodel`
    (the model the file must match: legalised for its target). Raises VerificationError when
    top-1 agreement (on samples whose reference top-1 leads by >= 2 output steps) < `min_top1`,
    cosine < `min_cosine`, more than `max_frac_off` of the outputs are off by more than one step
    beyond the share that float32 rounding alone moves that far (PyTorch float32 against the same
    fake-quant model in float64: 0-2.5% on the recipes' smoke models, 29% on vit_b_16 for ort), or the
    mean difference exceeds `max_diff_vs_quant_error` times the mean quantization error
    (fake-quant model against the same model with float layers). The defaults pass what was
    measured on correct exports (one-step flips, where the runtime and PyTorch round an activation
    differently, accumulate with depth: up to 17% of outputs off by more than a step on a 2-bit-heavy
    mobilenet_v2; the mean difference reaches 0.45 of the quantization error on W8A8 resnet18,
    whose quantization error is small) and fail broken ones (cosine 0.72-0.89, 97% off). `plan_model`, if given, is the model as planned before
    legalisation: its agreement with `qmodel` is reported, not checked.
    `inputs`: one batch (a tensor or a dict of keyword inputs) or an iterable of batches in any form
    of hawq.batches (targets and labels not fed); the batches may differ in sequence length.
    Predictions with a sequence axis ([batch, tokens, classes]) are compared token by token."""
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise VerificationError(f"{path} fails the ONNX checker: {str(e).splitlines()[0]}") from e
    batches = [inputs] if isinstance(inputs, (torch.Tensor, Mapping)) else list(inputs)
    if not batches:
        raise ConfigError("verify_inputs is empty; give at least one input batch")
    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "optimized.onnx"
        sess = ort_session(path, matmulnbits_accuracy_level=1, optimized_model_path=opt)
        kernels = ort_kernels(onnx.load(str(opt)), [n for n in quant_layers(qmodel)])
    in_names = [i.name for i in sess.get_inputs()]
    refs, outs, plans, steps, floats, exact = [], [], [], [], [], []
    qexact = copy.deepcopy(qmodel).double().eval()
    fmodel = copy.deepcopy(qmodel).eval()
    for name, layer in quant_layers(fmodel).items():
        set_module(fmodel, name, layer.fp)
    ndim = 0  # of the predictions: top-1 is defined on [samples, classes] only
    for batch in batches:
        ref, step = _reference(qmodel, batch)
        ndim = ref.ndim
        refs.append(_rows(ref))
        steps.append(None if step is None else _rows(step))
        outs.append(_rows(sess.run(None, _feed(in_names, batch))[0].astype(np.float64)))
        with torch.no_grad():
            floats.append(_rows(_predict(fmodel, batch)))
            exact.append(_rows(_predict(qexact, tree_map(lambda t: t.double() if t.is_floating_point() else t, batch))))
            if plan_model is not None:
                plans.append(_rows(_predict(plan_model, batch)))
    ref, out = np.concatenate(refs), np.concatenate(outs)
    step = max(float(np.ptp(ref)), 1e-30) / 255
    diff = np.abs(out - ref)
    cos, top1 = _agreement(ref, out, ndim)
    top1_near = decisive = None
    if ndim == 2 and ref.shape[1] > 1:
        top2 = np.sort(ref, 1)[:, -2:]
        keep = top2[:, 1] - top2[:, 0] >= 2 * step
        decisive = int(keep.sum())
        top1_near = float((ref[keep].argmax(1) == out[keep].argmax(1)).mean()) if decisive else None
    v = Verification(samples=int(ref.shape[0]), max_abs_diff=float(diff.max(initial=0)),
                     max_diff_steps=float(diff.max(initial=0) / step),
                     frac_off_by_more_than_1_step=_frac_off(out, ref, step),
                     cosine=cos, top1_agreement=top1, step=step, top1_agreement_decisive=top1_near,
                     decisive_samples=decisive, onnxruntime=ort.__version__,
                     disabled_optimizers=disabled_optimizers(path), kernels=kernels, cpu=describe_cpu())
    quant_error = float(np.abs(ref - np.concatenate(floats)).mean())
    v.diff_vs_quant_error = float(diff.mean() / quant_error) if quant_error > 0 else None
    if steps[0] is not None:
        v.max_diff_input_steps = float((diff / np.broadcast_to(steps[0], ref.shape)).max(initial=0))
    if plans:
        v.plan_cosine, v.plan_top1_agreement = _agreement(np.concatenate(plans), ref, ndim)
    exact_out = np.concatenate(exact)
    v.float32_cosine = _agreement(exact_out, ref, ndim)[0]
    v.float32_frac_off_by_more_than_1_step = _frac_off(ref, exact_out, step)
    v.exact_frac_off_by_more_than_1_step = _frac_off(out, exact_out, step)
    beyond_rounding = v.frac_off_by_more_than_1_step - v.float32_frac_off_by_more_than_1_step
    rel_bad = v.diff_vs_quant_error is not None and not v.diff_vs_quant_error <= max_diff_vs_quant_error
    if not (cos >= min_cosine) or (top1_near is not None and top1_near < min_top1) or \
            not beyond_rounding <= max_frac_off or rel_bad:
        raise VerificationError(f"ONNX Runtime output differs from the PyTorch fake-quant model: cosine {cos:.6f} "
                                f"(need >= {min_cosine}), top-1 agreement {top1} ({top1_near} on the {decisive} samples "
                                f"with a margin of 2 output steps; need >= {min_top1}), "
                                f"{100 * v.frac_off_by_more_than_1_step:.2f}% of outputs off by more than one step, "
                                f"{100 * beyond_rounding:.2f}% beyond the {100 * v.float32_frac_off_by_more_than_1_step:.2f}% "
                                f"that float32 rounding alone moves that far (need <= {100 * max_frac_off:g}%), max diff {v.max_diff_steps:.1f} steps, mean diff "
                                f"{v.diff_vs_quant_error} of the quantization error (need <= {max_diff_vs_quant_error}); "
                                "export with verify=False to inspect the file")
    return v


def _frac_off(a: np.ndarray, b: np.ndarray, step: float) -> float:
    """The share of elements where `a` and `b` differ by more than one `step` (a 0.1% margin for
    float rounding of the step itself)."""
    return float((np.abs(a - b) / step > 1 + 1e-3).mean())


def _agreement(ref: np.ndarray, out: np.ndarray, ndim: int) -> tuple[float, float | None]:
    """(cosine, top-1 agreement: None unless the predictions were [samples, classes] (`ndim` 2))."""
    cos = float((ref * out).sum() / max(np.linalg.norm(ref) * np.linalg.norm(out), 1e-30))
    top1 = float((ref.argmax(1) == out.argmax(1)).mean()) if ndim == 2 else None
    return cos, top1


def ort_kernels(optimized: onnx.ModelProto, names: list[str]) -> dict[str, str]:
    """For each layer, the op(s) ONNX Runtime's optimized graph runs it as: the node reading an
    initializer derived from `<layer>.weight` (its codes or scale), or, when that is a
    DequantizeLinear, that DQ plus the op reading its output (through Transpose or Reshape)."""
    g = optimized.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    inits = [t.name for t in g.initializer]
    out = {}
    for name in names:
        wnames = [i for i in inits if i == f"{name}.weight" or i.startswith(f"{name}.weight_")]  # codes, scale, ...
        nodes = [n for w in wnames for n in readers.get(w, [])]
        if not nodes:
            out[name] = "?"
            continue
        moves = ("DequantizeLinear", "Reshape", "Transpose")
        node = next((n for n in nodes if n.op_type not in moves), None)  # a fused kernel first
        node = node or next((n for n in nodes if n.op_type == "DequantizeLinear"), nodes[0])
        if node.op_type == "DequantizeLinear":
            nxt = readers.get(node.output[0], [])
            while nxt and nxt[0].op_type in ("Transpose", "Reshape"):
                nxt = readers.get(nxt[0].output[0], [])
            out[name] = "DequantizeLinear + " + (nxt[0].op_type if nxt else "?")
        else:
            out[name] = node.op_type
    return out


def _rows(a: np.ndarray) -> np.ndarray:
    """Predictions with a sequence axis, [batch, tokens, classes], as one row per token."""
    return a.reshape(-1, a.shape[-1]) if a.ndim == 3 else a


def _predict(model: nn.Module, batch: Any) -> np.ndarray:
    return logits_of(forward(model, batch)).double().numpy()


def _feed(names: list[str], batch: Any) -> dict[str, np.ndarray]:
    """ONNX Runtime's inputs for `batch`: float tensors as float32, integer ones (token ids,
    masks) as they are; keyword inputs by name, positional ones in order."""
    args, kwargs = model_inputs(batch)
    if kwargs:
        missing = [n for n in names if n not in kwargs]
        if missing:
            raise ConfigError(f"the verification batch lacks the file's input(s) {', '.join(missing)}; give batches "
                              "with the keys of the example input")
        values = [kwargs[n] for n in names]
    else:
        values = list(args[:len(names)])
    return {n: (v.detach().float() if v.is_floating_point() else v.detach()).numpy() for n, v in zip(names, values)}


@torch.no_grad()
def _reference(qmodel: nn.Module, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(qmodel's predictions on `batch`, the per-channel output step if they come straight from
    a QuantLayer with a quantized input, else None)."""
    last: list = [None]  # (output, layer) of the latest QuantLayer call

    def hook(m, i, o):
        last[0] = (o, m)

    hooks = [l.register_forward_hook(hook) for l in quant_layers(qmodel).values()]
    try:
        y = logits_of(forward(qmodel, batch))
    finally:
        for h in hooks:
            h.remove()
    if last[0] is None or last[0][0] is not y or y.dim() < 2 or last[0][1].weight_only:
        return y.double().numpy(), None
    layer = last[0][1]
    w = layer.w_fq.double().abs().reshape(layer.w_fq.shape[0], -1).amax(1)
    step = (w * layer.a_scale).numpy()  # the most one input-activation step can move output channel c
    shape = (1, -1, *([1] * (y.dim() - 2))) if isinstance(layer.fp, nn.Conv2d) else (*([1] * (y.dim() - 1)), -1)
    return y.double().numpy(), step.reshape(shape)
