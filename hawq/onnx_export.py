"""QDQ ONNX export of a fake-quant model for a target runtime, with packed INT2/INT4/INT8 weights.

Route: legalise the model for the target (hawq.legalize: what the runtime accepts, every change
reported), copy it with every QuantLayer replaced by its float layer, export that with torch.onnx
(dynamo, optimize=False: parameters keep their `<layer>.weight` names, zero biases are not
dropped), then rewrite the graph around each quantized Conv/Gemm/MatMul:

    x ─[Clip]─ QuantizeLinear ─ DequantizeLinear ─┐             (per tensor; none when the input
    <layer>.weight (INT2|INT4|INT8|INT16) ─ DQ ───┼─ op ─         stays float; Clip only when the
    <layer>.bias (INT32 at s_w·s_a ─ DQ, or float) ┘               range is narrower than the type)

Weights are stored pre-quantized, symmetric, with an explicit all-zero zero point, per output
channel (or in blocks along K where the target wants them): the file really shrinks, and hawq
checks that it holds exactly the packed size. Blocked and per-axis scale shapes are checked here
(onnx.checker does not check them; ONNX Runtime fails at run time). Layers that are not
QuantLayers stay float.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from . import cpu, quant
from .artifacts import atomic_path, write_json
from .batches import logits_of, model_inputs, num_samples, tree_map
from .errors import UnsupportedModelError, VerificationError
from .legalize import BASE_OPSET, CONTAINER_BITS, INT2_OPSET, Change, LayerSpec, Legalized, container_for, legalize
from .graph import set_module
from .onnx_verify import Verification, verify_onnx
from .rewrite import QuantLayer, quant_layers
from .target import ORT_INT8, Target

FORMAT = "hawq.export/3"
MIN_OPSET = BASE_OPSET
NP_TYPES = {"INT2": ml_dtypes.int2, "INT4": ml_dtypes.int4, "INT8": np.int8, "INT16": np.int16,
            "UINT8": np.uint8, "UINT16": np.uint16}
TYPE_RANGE = {"INT8": (-128, 127), "INT16": (-32768, 32767), "UINT8": (0, 255), "UINT16": (0, 65535)}


@dataclass
class LayerExport:
    name: str
    op: str  # the ONNX op that consumes the weight: Conv | Gemm | MatMul
    plan_w_bits: int  # as planned
    w_bits: int  # as exported (after legalisation)
    a_bits: int | None  # None: the input stays float
    weight_type: str  # INT2 | INT4 | INT8 | UINT8 (codes + 128) | INT16
    activation_type: str  # UINT8 | INT8 | UINT16 | INT16 | float
    layout: str  # e.g. "[out,in,kh,kw] per channel axis 0", "[K,N] per channel axis 1", "[K,N] blocks of 128 axis 0"
    params: int
    weight_bytes: int  # bytes of the stored weight initializer
    scale_bytes: int  # bytes of its scales and zero points
    bias: str | None  # int32 | float | None
    note: str = ""
    ort_kernel: str = ""  # what ONNX Runtime (CPU) runs the layer as, from the verification session


@dataclass
class ExportReport:
    path: str
    target: str
    opset: int
    file_bytes: int
    weight_bytes: int  # quantized weight initializers as stored in the file
    scale_bytes: int  # their scales and zero points
    packed_weight_bytes: int  # Σ ceil(params · container bits / 8) of the exported layers: must equal weight_bytes
    plan_packed_weight_bytes: int  # the same for the plan as given (smallest container per planned width)
    plan_weight_bytes: float  # Σ params · planned w_bits / 8
    changes: list[Change] = field(default_factory=list)
    layers: list[LayerExport] = field(default_factory=list)
    verification: Verification | None = None
    int8: str = ORT_INT8[0]  # ort: how 8-bit layers are kept exact (hawq.legalize.ORT_INT8)
    exact_on: str = ""  # the CPUs on which ONNX Runtime computes this file's integers exactly

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    def summary(self) -> str:
        """A few lines for a terminal: sizes, changes, verification."""
        lines = [f"{self.path}: target {self.target}, opset {self.opset}, {self.file_bytes} bytes; weights "
                 f"{self.weight_bytes} bytes (+{self.scale_bytes} scales/zero points); plan packed "
                 f"{self.plan_packed_weight_bytes}, plan at its bit widths {self.plan_weight_bytes:.0f}"]
        by_layer: dict[str, list[str]] = {}
        for c in self.changes:
            by_layer.setdefault(c.layer, []).append(f"{c.what} {c.before} -> {c.after} ({c.reason})")
        if by_layer:
            lines.append(f"  legalised for {self.target}: {len(by_layer)} change(s)")
        lines += [f"    {'model' if n == '*' else n}: " + "; ".join(cs) for n, cs in by_layer.items()]
        if self.exact_on:
            lines.append(f"  integers exact on: {self.exact_on}")
        v = self.verification
        if v is not None:
            lines.append(f"  onnxruntime {v.onnxruntime} vs PyTorch on {v.samples} inputs: top-1 agreement "
                         f"{v.top1_agreement}, cosine {v.cosine:.6f}, max diff {v.max_abs_diff:.3g} "
                         f"({v.max_diff_steps:.2f} output steps of {v.step:.3g}), "
                         f"{100 * v.frac_off_by_more_than_1_step:.3f}% off by > 1 step"
                         + ("" if v.diff_vs_quant_error is None else
                            f", mean diff {v.diff_vs_quant_error:.3g} of the quantization error"))
            if v.float32_frac_off_by_more_than_1_step is not None:
                lines.append(f"  float32 rounding alone (PyTorch float32 vs float64): {100 * v.float32_frac_off_by_more_than_1_step:.3f}% "
                             f"off by > 1 step, cosine {v.float32_cosine:.6f}; onnxruntime vs float64: "
                             f"{100 * v.exact_frac_off_by_more_than_1_step:.3f}% off by > 1 step")
            if v.plan_cosine is not None:
                lines.append(f"  legalised vs planned model: cosine {v.plan_cosine:.6f}, top-1 agreement {v.plan_top1_agreement}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- export

def export_onnx(qmodel: nn.Module, example_input: Any, path: str | Path, *, target: str | None = None,
                verify: bool = True, opset: int = MIN_OPSET, verify_inputs: Any = None,
                min_top1: float = 0.99, min_cosine: float = 0.999, max_frac_off: float = 0.25,
                max_diff_vs_quant_error: float = 1.0, int8: str | None = None) -> ExportReport:
    """Write `qmodel` (from hawq.quantize) as a QDQ ONNX model for `target` ("ort" | "tensorrt",
    see hawq.legalize; default: the target it was quantized for, else "ort") at `path`, and
    `verify.json` (this report) next to it.

    `opset` is the lowest opset used (>= 21); the ort target raises it to 25 when a layer has
    INT2 weights. `int8` (ort; default: the model's own, else "u8u8"): "u8u8" stores the 8-bit
    weights of 8-bit-input layers at full range as UINT8 + 128, "reduce-range" gives them 7-bit
    codes in INT8 (both exact on every CPU; layers quantized for Target("ort", "reduce-range") stay INT8 unchanged under
    every scheme); "s8-vnni" keeps INT8 at full range, exact only on CPUs with VNNI, AMX or ARM64
    (verifying it elsewhere is refused in one line before any work; see hawq.legalize and
    hawq.cpu). `example_input` is a batch in any form of hawq.batches (a tensor, a tuple whose
    last element, the target, is not fed, or a dict of keyword inputs such as int64 `input_ids`
    and `attention_mask`, `labels` not fed); the file's first output is the model's predictions
    (its `logits`). With `verify`, the file is run in ONNX Runtime on `verify_inputs` (a batch or
    an iterable of batches, ragged ones too; default `example_input`) and compared with the legalised
    fake-quant model; a VerificationError (leaving no model at `path`) is raised when top-1
    agreement (on samples whose reference top-1 leads by >= 2 output steps) < `min_top1`, cosine <
    `min_cosine`, more than `max_frac_off` of the outputs are off by more than one output step
    (an LSB of an 8-bit quantizer of the outputs' range) beyond the share that float32 rounding
    alone moves that far, or the mean difference exceeds
    `max_diff_vs_quant_error` times the model's mean quantization error (see verify_onnx). The
    batch axis of every input is dynamic, and every axis of keyword inputs (batch and sequence)."""
    layers = _check_quantized(qmodel)
    model_inputs(example_input)  # a clear error for a batch of another kind, before any work
    made_for = getattr(qmodel, "hawq_target", Target())
    target = made_for.name if target is None else target
    int8 = (made_for.int8 if made_for.name == target else ORT_INT8[0]) if int8 is None else int8
    legal = legalize(qmodel, target, opset, int8)
    vnni = [n for n, spec in legal.layers.items() if spec.weight.needs_vnni]
    if verify and vnni and not cpu.ort_u8s8_exact():
        raise VerificationError(f"int8='s8-vnni': {len(vnni)} layer(s) ({', '.join(vnni[:3])}{', ...' if len(vnni) > 3 else ''}) "
                                "are exact only on CPUs with VNNI, AMX or ARM64, and this CPU's u8×s8 kernels saturate "
                                "pairs in int16, so ONNX Runtime here cannot check the file; export with int8='u8u8' (the "
                                "default, exact everywhere), or with verify=False (--no-verify) and verify on the target CPU")
    proto = _export_float(legal.model, example_input, legal.opset)
    infos = _insert_qdq(proto, legal, layers)
    check_scale_shapes(proto)
    path = Path(path)
    with atomic_path(path) as tmp:  # renamed onto path only once verified
        onnx.save_model(proto, str(tmp))
        report = ExportReport(
            path=str(path), target=target, opset=legal.opset, file_bytes=os.path.getsize(tmp),
            weight_bytes=sum(l.weight_bytes for l in infos), scale_bytes=sum(l.scale_bytes for l in infos),
            packed_weight_bytes=sum(packed_bytes(l.params, l.weight_type) for l in infos),
            plan_packed_weight_bytes=sum(packed_bytes(l.params, container_for(l.plan_w_bits, INT2_OPSET)) for l in infos),
            plan_weight_bytes=sum(l.params * l.plan_w_bits / 8 for l in infos), changes=legal.changes, layers=infos,
            int8=int8, exact_on=_exact_on(target, vnni))
        if report.weight_bytes != report.packed_weight_bytes:
            raise VerificationError(f"the file stores {report.weight_bytes} bytes of weights, not the packed "
                                    f"{report.packed_weight_bytes}; a container was not packed")
        if verify:
            inputs = example_input if verify_inputs is None else verify_inputs
            report.verification = verify_onnx(str(tmp), legal.model, inputs, min_top1=min_top1, min_cosine=min_cosine,
                                              max_frac_off=max_frac_off, max_diff_vs_quant_error=max_diff_vs_quant_error,
                                              plan_model=qmodel if any(c.layer != "*" for c in legal.changes) else None)
            for l in infos:
                l.ort_kernel = report.verification.kernels.get(l.name, "")
    write_json(path.parent / "verify.json", report.to_dict())
    return report


def _exact_on(target: str, vnni: list[str]) -> str:
    if target != "ort":
        return "the GPU runtime (TensorRT accumulates INT8 in int32); ONNX Runtime CPU checked it on float kernels"
    if vnni:
        return (f"CPUs with VNNI, AMX or ARM64 only: {len(vnni)} u8×s8 layer(s) saturate int16 pairs on x86 "
                "without VNNI (int8='s8-vnni')")
    return "every CPU ONNX Runtime runs on (x86 with or without VNNI, AMX, ARM64): no u8×s8 pair can exceed int16"


def packed_bytes(params: int, container: str) -> int:
    return math.ceil(params * CONTAINER_BITS[container] / 8)


def _check_quantized(qmodel: nn.Module) -> dict[str, QuantLayer]:
    layers = quant_layers(qmodel)
    if not layers:
        raise UnsupportedModelError("the model has no quantized layer; call hawq.quantize(model, plan, data) first "
                                    "and export the module it returns")
    raw = [n for n, l in layers.items() if not l.calibrated]
    if raw:
        raise UnsupportedModelError(f"layers not calibrated: {', '.join(raw[:5])}; call hawq.quantize(model, plan, data) "
                                    "with calibration data first")
    return layers


def _export_float(qmodel: nn.Module, example: Any, opset: int) -> onnx.ModelProto:
    """The ONNX graph of `qmodel` with each QuantLayer replaced by its float layer.

    Traced on a batch of at least 2 (the example repeated): torch.export specializes a dimension
    of size 1 to the constant 1, and the graph then keeps batch-1 Reshapes behind its dynamic input
    (e.g. in nn.MultiheadAttention: ViT fails on any other batch size in ONNX Runtime). A single
    tensor input is named "input" and the predictions "output"; keyword inputs keep their names."""
    fmodel = copy.deepcopy(qmodel).eval()
    for name, layer in quant_layers(fmodel).items():
        set_module(fmodel, name, copy.deepcopy(layer.fp))
    if num_samples(example) < 2:
        example = tree_map(lambda t: t.repeat(2, *[1] * (t.dim() - 1)) if t.dim() else t, example)
    args, kwargs = model_inputs(example)
    with torch.no_grad():
        if not isinstance(fmodel(*args, **kwargs), torch.Tensor):
            fmodel = _Predictions(fmodel).eval()
    auto = torch.export.Dim.AUTO
    one = len(args) == 1 and not kwargs  # a tensor, or (x, y): the input is "input", as it always was
    names = {"input_names": ["input"], "output_names": ["output"]} if one else {}
    shapes: Any = tuple({0: auto} for _ in args) if args else {k: {i: auto for i in range(v.dim())}
                                                                for k, v in kwargs.items()}
    try:
        prog = torch.onnx.export(fmodel, args, kwargs=kwargs or None, dynamo=True, opset_version=opset, optimize=False,
                                 verbose=False, dynamic_shapes=shapes, **names)
    except Exception as e:
        raise UnsupportedModelError(f"torch.onnx.export failed on the float copy of the model: "
                                    f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    model = prog.model_proto
    _fold_castlike_constants(model)
    return model


class _Predictions(nn.Module):
    """A model whose output is not one tensor (a Hugging Face output with logits, a key-value
    cache, hidden states), exported as its predictions alone (hawq.batches.logits_of). Its
    children are registered under their own names, so the file's weights keep the model's names."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if any(True for _ in model.named_parameters(recurse=False)) or any(True for _ in model.named_buffers(recurse=False)):
            raise UnsupportedModelError(f"{type(model).__name__} holds tensors of its own and returns no plain tensor; "
                                        "wrap it so that it returns its predictions to export it")
        for name, child in model.named_children():
            self.add_module(name, child)
        self._forward = model.forward

    def forward(self, *args, **kwargs):
        return logits_of(self._forward(*args, **kwargs))


def _fold_castlike_constants(model: onnx.ModelProto) -> None:
    """Replace CastLike(Constant c, x) by an initializer of c in x's type. The exporter writes
    ReLU6/Hardtanh as Clip(x, CastLike(0, x), CastLike(6, x)); ONNX Runtime cannot fold that (it
    reads x), so it never fuses Conv→Clip→Q into QLinearConv."""
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in g.input})
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant" and len(n.attribute) == 1}
    for n in [n for n in g.node if n.op_type == "CastLike" and n.input[0] in consts and types.get(n.input[1])]:
        value = numpy_helper.to_array(helper.get_attribute_value(consts[n.input[0]].attribute[0])) \
            if consts[n.input[0]].attribute[0].name == "value" else np.array(helper.get_attribute_value(consts[n.input[0]].attribute[0]))
        dtype = helper.tensor_dtype_to_np_dtype(types[n.input[1]])
        g.initializer.append(numpy_helper.from_array(np.asarray(value).astype(dtype), n.output[0]))
        g.node.remove(n)


# ----------------------------------------------------------------------------------- graph rewrite

@dataclass
class _Site:
    """Where a layer's weight is read: the op, the weight input index, and the Transpose between."""
    k: int
    idx: int
    transpose: int | None  # position of Transpose(W) feeding a MatMul, if any


def _insert_qdq(model: onnx.ModelProto, legal: Legalized, planned: dict[str, QuantLayer]) -> list[LayerExport]:
    """Rewrite `model` in place: quantized weights, biases and input Q/DQ for each layer."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    users: dict[str, list[tuple[int, int]]] = {}  # value name -> (node position, input index)
    for k, node in enumerate(g.node):
        for i, name in enumerate(node.input):
            users.setdefault(name, []).append((k, i))
    before: dict[int, list[onnx.NodeProto]] = {}  # node position -> nodes to insert before it
    after: dict[int, list[onnx.NodeProto]] = {}
    layers = quant_layers(legal.model)
    shared: dict[tuple, str] = {}  # one Q/DQ per tensor and quantizer: layers reading the same input share it
    infos = []
    for name, spec in legal.layers.items():
        layer = layers[name]
        site = _weight_site(g, name, f"{name}.weight" in inits, users)
        node = g.node[site.k]
        layout = spec.weight.layout
        if layout == "auto":
            layout = "IO" if node.op_type == "MatMul" else "OI"
        if node.op_type == "Conv" and layout != "OI":
            raise UnsupportedModelError(f"layer {name}: a Conv weight cannot be stored transposed")
        g.initializer.remove(inits[f"{name}.weight"])
        wnodes, wq, extra, desc = _weight(g, name, layer, spec, layout)
        # before the Transpose when it stays (DQ → Transpose → MatMul), else before the op
        before.setdefault(site.transpose if layout == "OI" and site.transpose is not None else site.k, []).extend(wnodes)
        _wire_weight(g, node, site, layout, name, after)
        pre = _bias(g, node, name, layer, spec, users, inits, after.get(site.k, []))
        if spec.act is not None:
            pre += _input_qdq(g, node, name, spec.act, shared)
        if spec.out is not None:
            if node.op_type != "Conv":
                raise UnsupportedModelError(f"layer {name}: output quantization is exported for Conv layers only")
            after.setdefault(site.k, []).extend(_output_qdq(g, node, name, spec.out))
        before.setdefault(site.k, []).extend(pre)
        infos.append(LayerExport(
            name, "MatMul" if layout == "IO" else node.op_type, planned[name].w_bits, spec.weight.bits,
            None if spec.act is None else spec.act.bits, spec.weight.container,
            "float" if spec.act is None else spec.act.container, desc, int(layer.w_int.numel()),
            len(wq.raw_data), extra, spec.bias, spec.note))
    nodes = _topological([n for k, node in enumerate(g.node) for n in (*before.get(k, []), node, *after.get(k, []))])
    for n in nodes:  # the exporter's per-node stack traces would double the file size
        del n.metadata_props[:]
        n.doc_string = ""
    del g.node[:], g.value_info[:]  # value_info typed the old float weights: let inference redo it
    g.node.extend(nodes)
    _remove_unused(g)
    return infos


def _weight_site(g: onnx.GraphProto, name: str, found: bool, users) -> _Site:
    readers = users.get(f"{name}.weight", [])
    if not found or len(readers) != 1:
        raise UnsupportedModelError(f"cannot find the weight {name}.weight read by exactly one node in the exported "
                                    f"graph (found {len(readers)}); is the layer shared or called twice?")
    k, idx = readers[0]
    transpose = None
    if g.node[k].op_type == "Transpose" and len(users.get(g.node[k].output[0], [])) == 1:  # MatMul(x, W^T)
        transpose = k
        k, idx = users[g.node[k].output[0]][0]
    node = g.node[k]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ok = {("Conv", 1): transpose is None, ("Gemm", 1): transpose is None and attrs.get("transB") == 1
          and attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0,
          ("MatMul", 1): transpose is not None, ("Gather", 0): transpose is None and attrs.get("axis", 0) == 0}
    if not ok.get((node.op_type, idx), False):
        raise UnsupportedModelError(f"layer {name}: its weight feeds {node.op_type} input {idx}; "
                                    "hawq exports Conv, Gemm(transB=1), MatMul(x, W^T) and Gather(table, ids) only")
    return _Site(k, idx, transpose)


def _weight(g: onnx.GraphProto, name: str, layer: QuantLayer, spec: LayerSpec, layout: str):
    """Store the codes, scale and zero point; return (DQ nodes, the code tensor, scale bytes, layout text)."""
    w = layer.w_int.numpy()
    s = layer.w_scale.numpy().astype(np.float32)
    qmax = 2 ** (spec.weight.bits - 1) - 1
    assert spec.weight.bits == layer.w_bits, (name, spec.weight.bits, layer.w_bits)
    if np.abs(w).max(initial=0) > qmax:
        raise VerificationError(f"layer {name}: its integer weights exceed ±{qmax}, the range of {spec.weight.bits} bits; "
                                "was w_int modified after hawq.quantize?")
    block = spec.weight.block_size
    if layout == "IO":  # W^T [K, N]: per channel on axis 1, or blocks along K on axis 0
        codes = w.reshape(w.shape[0], -1).T
        axis = 0 if block else 1
        scale = np.repeat(s[None, :], math.ceil(codes.shape[0] / block), 0) if block else s
        desc = f"[K,N] blocks of {block} axis 0" if block else "[K,N] per channel axis 1"
    else:
        codes = w
        axis = 1 if block else 0
        scale = np.repeat(s[:, None], math.ceil(codes.shape[1] / block), 1) if block else s
        desc = f"[out,in] blocks of {block} axis 1" if block else f"[{','.join(['out', 'in', 'kh', 'kw'][:w.ndim])}] per channel axis 0"
    np_type = NP_TYPES[spec.weight.container]
    wname = f"{name}.weight"
    shape = codes.shape
    if spec.weight.unit_dim:  # [1, ...] then Reshape: see hawq.legalize (ORT fuses DQ(INT2) into QLinearConv)
        codes, axis, desc = codes[None], axis + 1, f"{desc}, stored [1,...] + Reshape"
    zp = spec.weight.zero_point  # UINT8: codes + 128, the same integers to DequantizeLinear
    wq = numpy_helper.from_array((np.ascontiguousarray(codes).astype(np.int32) + zp).astype(np_type), wname)
    st = numpy_helper.from_array(np.ascontiguousarray(scale, np.float32), f"{wname}_scale")
    zt = numpy_helper.from_array(np.full(scale.shape, zp, np_type), f"{wname}_zero_point")
    g.initializer.extend([wq, st, zt])
    attrs = {"axis": axis, **({"block_size": block} if block else {})}
    out = f"{wname}_dq_unit" if spec.weight.unit_dim else f"{wname}_dq"
    nodes = [helper.make_node("DequantizeLinear", [wname, st.name, zt.name], [out], f"{wname}/DequantizeLinear", **attrs)]
    if spec.weight.unit_dim:
        g.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), f"{wname}_shape"))
        nodes.append(helper.make_node("Reshape", [out, f"{wname}_shape"], [f"{wname}_dq"], f"{wname}/Reshape"))
    return nodes, wq, len(st.raw_data) + len(zt.raw_data), desc


def _wire_weight(g: onnx.GraphProto, node: onnx.NodeProto, site: _Site, layout: str, name: str, after) -> None:
    wdq = f"{name}.weight_dq"
    if node.op_type == "MatMul":
        if layout == "IO":  # the DQ gives W^T directly; the Transpose becomes unused
            node.input[site.idx] = wdq
        else:  # TensorRT: per channel on axis 0 of [N, K], then Transpose, as PyTorch writes it
            g.node[site.transpose].input[0] = wdq
        return
    node.input[site.idx] = wdq
    if node.op_type == "Gemm" and layout == "IO":  # Gemm(x, W, b, transB=1) -> MatMul(x, W^T) [+ b]
        out, bias = node.output[0], node.input[2] if len(node.input) > 2 else ""
        del node.attribute[:]
        node.op_type = "MatMul"
        del node.input[2:]
        if bias:
            node.output[0] = f"{name}/MatMul_output"
            after.setdefault(site.k, []).append(helper.make_node("Add", [node.output[0], bias], [out], f"{name}/Add"))


def _bias(g: onnx.GraphProto, node: onnx.NodeProto, name: str, layer: QuantLayer, spec: LayerSpec,
          users, inits, new_nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """INT32 codes at scale s_w·s_a behind a DQ, or float values (the same numbers the fake-quant
    layer adds), wired where the float bias was."""
    if spec.bias is None:
        return []
    bname = f"{name}.bias"
    if bname in inits:
        g.initializer.remove(inits[bname])
    if spec.bias == "float":
        b = layer.fp.bias if layer.weight_only else quant.quantize_bias(layer.fp.bias, layer.w_scale, layer.a_scale)[1]
        g.initializer.append(numpy_helper.from_array(b.detach().numpy().astype(np.float32), bname))
        src, nodes = bname, []
    else:
        g.initializer.extend([numpy_helper.from_array(layer.bias_int.numpy().astype(np.int32), bname),
                              numpy_helper.from_array((layer.w_scale * layer.a_scale).numpy().astype(np.float32), f"{bname}_scale")])
        src = f"{bname}_dq"
        nodes = [helper.make_node("DequantizeLinear", [bname, f"{bname}_scale"], [src], f"{bname}/DequantizeLinear", axis=0)]
    if node.op_type in ("Conv", "Gemm"):
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = src
        return nodes
    # MatMul: the bias is added by the Add made from a Gemm, or the exported Add reading <layer>.bias
    adds = [(n, i) for n in new_nodes for i, v in enumerate(n.input) if v == bname]
    adds += [(g.node[k], i) for k, i in users.get(bname, []) if g.node[k].op_type == "Add"]
    if len(adds) == 1:
        adds[0][0].input[adds[0][1]] = src
        return nodes
    raise UnsupportedModelError(f"layer {name}: cannot find the Add of its bias after MatMul")


def _input_qdq(g: onnx.GraphProto, node: onnx.NodeProto, name: str, a, shared: dict) -> list[onnx.NodeProto]:
    """[Clip →] QuantizeLinear → DequantizeLinear on the layer's data input (per tensor), or the
    DQ already made for the same tensor and quantizer."""
    key = (node.input[0], a.container, np.float32(a.scale).item(), a.zero_point, a.qmin, a.qmax)
    if key in shared:
        node.input[0] = shared[key]
        return []
    nodes = _qdq(g, node.input[0], f"{name}.input", a)
    node.input[0] = shared[key] = nodes[-1].output[0]
    return nodes


def _output_qdq(g: onnx.GraphProto, node: onnx.NodeProto, name: str, a) -> list[onnx.NodeProto]:
    """QuantizeLinear → DequantizeLinear on the op's output, under the output's old name."""
    out = node.output[0]
    node.output[0] = f"{name}.output_float"
    nodes = _qdq(g, node.output[0], f"{name}.output", a)
    nodes[-1].output[0] = out
    return nodes


def _qdq(g: onnx.GraphProto, src: str, p: str, a) -> list[onnx.NodeProto]:
    container = a.container
    cmin, cmax = TYPE_RANGE[container]
    g.initializer.extend([numpy_helper.from_array(np.array(a.scale, np.float32), f"{p}_scale"),
                          numpy_helper.from_array(np.array(a.zero_point, NP_TYPES[container]), f"{p}_zero_point")])
    nodes = []
    if a.qmin > cmin or a.qmax < cmax:  # narrower than the container: clip to the representable range first
        s = np.float32(a.scale)
        lo, hi = np.float32((a.qmin - a.zero_point) * s), np.float32((a.qmax - a.zero_point) * s)
        g.initializer.extend([numpy_helper.from_array(np.array(lo, np.float32), f"{p}_min"),
                              numpy_helper.from_array(np.array(hi, np.float32), f"{p}_max")])
        nodes.append(helper.make_node("Clip", [src, f"{p}_min", f"{p}_max"], [f"{p}_clip"], f"{p}/Clip"))
        src = f"{p}_clip"
    nodes += [helper.make_node("QuantizeLinear", [src, f"{p}_scale", f"{p}_zero_point"], [f"{p}_q"], f"{p}/QuantizeLinear"),
              helper.make_node("DequantizeLinear", [f"{p}_q", f"{p}_scale", f"{p}_zero_point"], [f"{p}_dq"], f"{p}/DequantizeLinear")]
    return nodes


def _topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """`nodes` in an order where each value is made before it is read (stable where already so)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    done: set[int] = set()
    out: list[onnx.NodeProto] = []

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if j in done:
                continue
            if expanded:
                done.add(j)
                out.append(nodes[j])
                continue
            stack.append((j, True))
            stack += [(producer[v], False) for v in reversed(nodes[j].input) if v in producer and producer[v] not in done]

    for i in range(len(nodes)):
        visit(i)
    return out


def _remove_unused(g: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads (e.g. the Transpose of a MatMul weight) and unread initializers."""
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)


# ------------------------------------------------------------------------------ scale shape check

def check_scale_shape(x_shape: tuple[int, ...], scale_shape: tuple[int, ...], axis: int = 1,
                      block_size: int = 0, where: str = "") -> None:
    """Raise VerificationError unless `scale_shape` is valid for Q/DQ of an `x_shape` tensor:
    scalar (per tensor), 1-D of length x_shape[axis] (per axis), or, with `block_size`, the rank
    of x with ceil(x_shape[axis] / block_size) on `axis` (blocked). onnx.checker does not check
    this; ONNX Runtime fails at run time ("x_scale must be ceil(Di/block_size)")."""
    x_shape, scale_shape = tuple(x_shape), tuple(scale_shape)
    rank = len(x_shape)
    if not -rank <= axis < max(rank, 1):
        raise VerificationError(f"{where}: axis {axis} is out of range for a rank-{rank} tensor")
    axis %= max(rank, 1)
    if block_size:
        want = tuple(math.ceil(d / block_size) if i == axis else d for i, d in enumerate(x_shape))
        if block_size < 1 or scale_shape != want:
            raise VerificationError(f"{where}: blocked scale shape {list(scale_shape)} for a {list(x_shape)} tensor with "
                                    f"block_size {block_size} on axis {axis}; it must be {list(want)}")
    elif scale_shape not in ((), (1,)) and scale_shape != (x_shape[axis],):
        raise VerificationError(f"{where}: scale shape {list(scale_shape)} for a {list(x_shape)} tensor on axis {axis}; "
                                f"it must be a scalar or [{x_shape[axis]}]")


def check_scale_shapes(model: onnx.ModelProto) -> None:
    """check_scale_shape for every Q/DQ whose input and scale are initializers (the weights)."""
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or n.input[0] not in inits or n.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        x, s = inits[n.input[0]], inits[n.input[1]]
        check_scale_shape(tuple(x.dims), tuple(s.dims), attrs.get("axis", 1), attrs.get("block_size", 0), n.name)
        if len(n.input) > 2 and n.input[2] in inits and tuple(inits[n.input[2]].dims) != tuple(s.dims):
            raise VerificationError(f"{n.name}: zero point shape {list(inits[n.input[2]].dims)} differs from the scale's {list(s.dims)}")
