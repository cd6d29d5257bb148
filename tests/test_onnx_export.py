"""QDQ ONNX export: checker, ONNX Runtime parity, packed INT2/INT4/INT8 storage, exact codes,
per-target legalisation (ort, tensorrt), ORT workarounds, scale-shape checks, failing checks."""
from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hawq import rewrite
from hawq.errors import ConfigError, UnsupportedModelError, VerificationError
from hawq.legalize import LegalizationWarning, legalize
from hawq.models import resnet20
from hawq.onnx_export import check_scale_shape, export_onnx
from hawq.target import Target
from hawq.onnx_verify import disabled_optimizers, ort_session, verify_onnx

TWO_BIT = ("layer2.1.conv1", "layer3.2.conv2")
EIGHT_BIT = ("conv1", "fc")


def batches(n: int, shape=(8, 1, 28, 28)) -> list[torch.Tensor]:
    return [torch.randn(*shape) for _ in range(n)]


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def initializers(path) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


def nodes(path) -> list[onnx.NodeProto]:
    return list(onnx.load(str(path)).graph.node)


def opset(path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return resnet20().eval()


@pytest.fixture(scope="module")
def qmixed(resnet):
    """First/last layers 8-bit, two 2-bit layers, the rest 4-bit."""
    plan = {n: 8 if n in EIGHT_BIT else 2 if n in TWO_BIT else 4 for n in layer_names(resnet)}
    torch.manual_seed(1)
    return rewrite.quantize(resnet, plan, batches(2), weight_method="minmax")


@pytest.fixture(scope="module")
def mixed(qmixed, tmp_path_factory):
    path = tmp_path_factory.mktemp("mixed") / "model.onnx"
    report = export_onnx(qmixed, torch.randn(2, 1, 28, 28), path, verify_inputs=batches(2))
    return qmixed, path, report


@pytest.fixture(scope="module")
def trt_mixed(qmixed, tmp_path_factory):
    path = tmp_path_factory.mktemp("trt") / "model.onnx"
    with pytest.warns(LegalizationWarning) as record:
        report = export_onnx(qmixed, torch.randn(2, 1, 28, 28), path, target="tensorrt", verify_inputs=batches(2))
    return qmixed, path, report, [str(w.message) for w in record]


@pytest.fixture(scope="module")
def int8(resnet, tmp_path_factory):
    torch.manual_seed(1)
    qmodel = rewrite.quantize(resnet, {n: 8 for n in layer_names(resnet)}, batches(2), weight_method="minmax")
    path = tmp_path_factory.mktemp("int8") / "model.onnx"
    return qmodel, path, export_onnx(qmodel, torch.randn(2, 1, 28, 28), path, verify=False)


# ------------------------------------------------------------------------------------- ort target

def test_exported_model_is_valid_and_matches_pytorch(mixed):
    qmodel, path, report = mixed
    onnx.checker.check_model(str(path), full_check=True)
    v = report.verification
    assert v.samples == 16
    assert v.top1_agreement == 1.0 and v.cosine > 0.9999
    # a few output steps: ORT's integer kernels and PyTorch round a handful of activations one LSB
    # apart (3.4 steps here; the margin is for other CPUs' kernels)
    assert v.max_diff_steps <= 8 and v.frac_off_by_more_than_1_step < 0.1
    assert v.diff_vs_quant_error < 0.02  # ORT's deviation is tiny next to the quantization error
    assert 2 <= v.max_diff_input_steps <= 8  # a few input LSB flips of fc reach the output
    # float32 rounding alone (PyTorch float32 against float64) moves no output a step on this model
    assert v.float32_cosine > 0.99999 and v.float32_frac_off_by_more_than_1_step == 0.0
    assert v.exact_frac_off_by_more_than_1_step == pytest.approx(v.frac_off_by_more_than_1_step, abs=0.01)
    # an independent run in a plain session on a fresh batch of another size (dynamic batch)
    x = torch.randn(5, 1, 28, 28)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    ref = qmodel(x).detach().numpy()
    assert out.shape == (5, 10)
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert np.abs(out - ref).max() < 1e-2 * np.abs(ref).max()


def test_report_and_verify_json(mixed):
    _, path, report = mixed
    saved = json.loads((path.parent / "verify.json").read_text())
    assert saved["format"] == "hawq.export/3" and saved["target"] == "ort"
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert saved["verification"]["top1_agreement"] == 1.0
    assert report.file_bytes == path.stat().st_size
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    # what ONNX Runtime made of each layer, read from its optimized graph
    kernels = {l["name"]: l["ort_kernel"] for l in saved["layers"]}
    assert kernels["fc"] == "QGemm"
    assert kernels["layer1.0.conv1"].startswith("DequantizeLinear + ")  # INT4 conv: storage only
    assert "storage" in next(l for l in report.layers if l.name == "layer1.0.conv1").note


def test_int2_raises_the_opset_only_when_needed(mixed, int8):
    _, path, report = mixed
    assert report.opset == opset(path) == 25
    assert [(c.layer, c.what, c.before, c.after) for c in report.changes] == [("*", "opset", "21", "25")]
    assert int8[2].opset == opset(int8[1]) == 21 and int8[2].changes == []


def test_weights_are_packed_in_their_containers(mixed, int8):
    qmodel, path, report = mixed
    inits = initializers(path)
    layers = rewrite.quant_layers(qmodel)
    # 8-bit weights behind 8-bit inputs: UINT8 + 128 (u8×u8 kernels: exact on every CPU)
    want = {n: TensorProto.UINT8 if n in EIGHT_BIT else TensorProto.INT2 if n in TWO_BIT else TensorProto.INT4 for n in layers}
    for name in layers:
        assert inits[f"{name}.weight"].data_type == want[name], name
        assert inits[f"{name}.weight_zero_point"].data_type == want[name], name
    # sizes: bytes in the file == Σ ceil(params · container bits / 8) == the plan's packed size
    params = {n: l.w_int.numel() for n, l in layers.items()}
    bits = {n: 8 if n in EIGHT_BIT else 2 if n in TWO_BIT else 4 for n in layers}
    assert report.weight_bytes == report.packed_weight_bytes == report.plan_packed_weight_bytes == sum(
        math.ceil(p * bits[n] / 8) for n, p in params.items())
    assert report.plan_weight_bytes == sum(p * bits[n] / 8 for n, p in params.items())
    assert {l.name: l.weight_bytes for l in report.layers} == {n: len(inits[f"{n}.weight"].raw_data) for n in layers}
    # the file is smaller than the all-INT8 one by the packed difference
    saved = int8[2].file_bytes - report.file_bytes
    expected = sum(p - math.ceil(p * bits[n] / 8) for n, p in params.items())
    assert abs(saved - expected) < 0.03 * expected
    assert int8[2].weight_bytes == sum(params.values())


def test_stored_codes_equal_the_fake_quant_model(mixed):
    qmodel, path, _ = mixed
    inits = initializers(path)
    for name, layer in rewrite.quant_layers(qmodel).items():
        codes = numpy_helper.to_array(inits[f"{name}.weight"]).astype(np.int32)
        zp = 128 if name in EIGHT_BIT else 0  # UINT8 stores codes + 128
        np.testing.assert_array_equal(codes.reshape(layer.w_int.shape) - zp, layer.w_int.numpy().astype(np.int32))
        np.testing.assert_array_equal(numpy_helper.to_array(inits[f"{name}.weight_zero_point"]).astype(np.int32), zp)
        np.testing.assert_array_equal(numpy_helper.to_array(inits[f"{name}.weight_scale"]), layer.w_scale.numpy())
        np.testing.assert_array_equal(numpy_helper.to_array(inits[f"{name}.bias"]), layer.bias_int.numpy())
    # layers reading the same tensor with the same quantizer share one Q/DQ (conv1 and the shortcut)
    qs = [n for n in nodes(path) if n.op_type == "QuantizeLinear"]
    assert len(qs) == len(rewrite.quant_layers(qmodel)) - 2
    assert all(inits[q.input[2]].data_type == TensorProto.UINT8 for q in qs)
    for name in TWO_BIT:
        codes = numpy_helper.to_array(inits[f"{name}.weight"]).astype(np.int8)
        assert codes.min() >= -1 and codes.max() <= 1 and (codes != 0).any()


def test_int2_weights_of_quantized_input_layers_are_not_fused(mixed):
    """ONNX Runtime 1.31-1.32 fuses DQ(INT2)→Conv into QLinearConv, which rejects INT2 ("Type
    'tensor(int2)' ... of operator (QLinearConv) ... is invalid"); the leading unit dimension and
    Reshape keep them apart. Without the fix the session in the fixture fails to load."""
    _, path, report = mixed
    inits = initializers(path)
    for name in TWO_BIT:
        layer = next(l for l in report.layers if l.name == name)
        assert list(inits[f"{name}.weight"].dims)[0] == 1 and "Reshape" in layer.layout
        assert layer.ort_kernel == "DequantizeLinear + Conv" or layer.ort_kernel == "DequantizeLinear + FusedConv"
    model = onnx.load(str(path))
    g = model.graph
    for name in TWO_BIT:  # rebuild the direct form and watch ONNX Runtime reject it
        t = next(t for t in g.initializer if t.name == f"{name}.weight")
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[0], t.name))
        dq = next(n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] == t.name)
        axis = next(a for a in dq.attribute if a.name == "axis")
        axis.i -= 1
        reshape = next(n for n in g.node if n.op_type == "Reshape" and n.input[0] == dq.output[0])
        dq.output[0] = reshape.output[0]
        g.node.remove(reshape)
    onnx.checker.check_model(model, full_check=True)
    if ort.__version__.startswith(("1.31.", "1.32.")):
        with pytest.raises(Exception, match="int2"):
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


@pytest.mark.parametrize("shape, op", [((16, 20), "Gemm"), ((4, 5, 20), "MatMul")])
def test_linear_only_mlp(tmp_path, shape, op):
    """2-D input exports Linear as Gemm(transB=1), 3-D as MatMul(x, W^T) + Add; 3-bit weights go to
    INT4 and 6-bit to INT8 with their true range; a 6-bit input gets a Clip before its uint8 Q, a
    16-bit one a uint16 Q/DQ."""
    torch.manual_seed(2)
    plan = {"0": (4, 16), "2": (3, 6), "4": (6, 8)}
    qmodel = rewrite.quantize(mlp(), plan, [torch.randn(*shape) for _ in range(2)], weight_method="minmax")
    path = tmp_path / "mlp.onnx"
    report = export_onnx(qmodel, torch.randn(*shape), path, verify_inputs=[torch.randn(*shape) for _ in range(2)])
    assert [l.op for l in report.layers] == [op] * 3
    assert [l.weight_type for l in report.layers] == ["INT4", "INT4", "INT8"]
    assert report.opset == 21
    # the fine 16-bit input quantizer flips an LSB now and then (ONNX rounds x/s, torch x·(1/s)), which
    # the coarse 6-bit one downstream can turn into a few output steps
    v = report.verification
    assert v.cosine > 0.9999 and v.max_diff_steps <= 8 and v.frac_off_by_more_than_1_step < 0.05
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "Clip" for n in graph.node) == 1
    inits = {t.name: t for t in graph.initializer}
    assert inits["0.input_zero_point"].data_type == TensorProto.UINT16
    transpose = op == "MatMul"  # MatMul stores W^T ([in, out]) and dequantizes along axis 1
    for name, layer in rewrite.quant_layers(qmodel).items():
        w = layer.w_int.numpy()
        codes = numpy_helper.to_array(inits[f"{name}.weight"]).astype(np.int8)
        np.testing.assert_array_equal(codes, w.T if transpose else w)
        qmax = 2 ** (layer.w_bits - 1) - 1
        assert np.abs(codes).max() <= qmax and np.abs(codes).max() == qmax  # the true range, reached


@pytest.mark.parametrize("shape", [(16, 20), (4, 4, 20)])
def test_weight_only_linear_becomes_matmulnbits(tmp_path, shape):
    """A Linear whose input stays float (a_bits=32) is stored W^T [K, N] per channel on axis 1 and
    exported as MatMul (+ Add of a float bias), so ONNX Runtime can run it as MatMulNBits. It does
    for 3-D inputs; for 2-D ones ONNX Runtime 1.32 first fuses MatMul + Add (+ Relu) into a
    (Fused)Gemm, which MatMulNBits does not take, except where the Add is the graph output."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                        nn.Linear(16, 10)).eval()
    plan = {"0": (8, 8), "2": (4, 32), "4": (2, 32), "6": (2, 32)}
    qmodel = rewrite.quantize(net, plan, [torch.randn(*shape) for _ in range(2)], weight_method="minmax")
    report = export_onnx(qmodel, torch.randn(*shape), tmp_path / "m.onnx", verify_inputs=[torch.randn(*shape)])
    by = {l.name: l for l in report.layers}
    for name, container in (("2", "INT4"), ("4", "INT2")):
        l = by[name]
        assert (l.op, l.weight_type, l.activation_type, l.bias) == ("MatMul", container, "float", "float")
        assert l.layout == "[K,N] per channel axis 1"
        assert l.ort_kernel == ("MatMulNBits" if len(shape) == 3 else "DequantizeLinear + FusedGemm")
    assert report.opset == 25  # INT2, with a float input: stored directly (MatMulNBits takes 2 bits)
    g = onnx.load(str(tmp_path / "m.onnx")).graph
    dq = next(n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] == "4.weight")
    assert helper.get_attribute_value(dq.attribute[0]) == 1
    assert numpy_helper.to_array(next(t for t in g.initializer if t.name == "4.bias")).dtype == np.float32
    # INT2 with N=10 (not a multiple of 4): MatMulNBits gets it wrong in ORT 1.31-1.32 (0.2-0.5 off
    # here), so it is kept out of it; without that the verification below fails
    assert by["6"].weight_type == "INT2" and "N=10" in by["6"].note
    assert by["6"].ort_kernel in ("DequantizeLinear + MatMul", "DequantizeLinear + Gemm")
    assert report.verification.cosine > 0.99999 and report.verification.max_abs_diff < 1e-5


def test_depthwise_conv(tmp_path):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                        nn.ReLU(), nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    qmodel = rewrite.quantize(net, {"0": 8, "2": 8, "4": 4, "7": 8}, [torch.randn(8, 3, 16, 16)], "minmax")
    reports = {}
    for target in ("ort", "tensorrt"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LegalizationWarning)  # tensorrt: the INT4 conv becomes INT8
            reports[target] = export_onnx(qmodel, torch.randn(2, 3, 16, 16), tmp_path / f"{target}.onnx", target=target,
                                          verify_inputs=[torch.randn(8, 3, 16, 16)])
        v = reports[target].verification
        assert v.top1_agreement == 1.0 and v.cosine > 0.9999
    assert reports["ort"].layers[1].ort_kernel == "QLinearConv"  # the depthwise 8-bit conv runs in the integer kernel
    assert [l.weight_type for l in reports["tensorrt"].layers] == ["INT8"] * 4


def test_transformer_encoder(tmp_path):
    """Only what hawq.graph lists is quantized: linear1/linear2 (MultiheadAttention's projections
    are read as raw parameters)."""
    from hawq.graph import trace_layers

    torch.manual_seed(5)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0), 2, enable_nested_tensor=False).eval()
    x = torch.randn(6, 3, 64)
    names = trace_layers(enc, x).names
    assert names == ["layers.0.linear1", "layers.0.linear2", "layers.1.linear1", "layers.1.linear2"]
    qmodel = rewrite.quantize(enc, {n: 4 if n.endswith("2") else 8 for n in names}, [torch.randn(6, 3, 64)], "minmax")
    for target in ("ort", "tensorrt"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LegalizationWarning)
            report = export_onnx(qmodel, x, tmp_path / f"{target}.onnx", target=target, verify_inputs=[torch.randn(6, 3, 64)])
        assert report.verification.cosine > 0.9999 and report.verification.top1_agreement is None
        assert [l.op for l in report.layers] == ["MatMul"] * 4
    assert [l.weight_type for l in report.layers] == ["INT8", "INT4"] * 2  # tensorrt: INT4 weight-only, K=128


# -------------------------------------------------------------------------------- tensorrt target

def test_tensorrt_is_symmetric_int8_per_tensor(trt_mixed):
    _, path, report, _ = trt_mixed
    g = onnx.load(str(path)).graph
    inits = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            assert not numpy_helper.to_array(inits[n.input[2]]).any(), n.name  # every zero point 0
        if n.op_type == "QuantizeLinear":  # activations: signed int8, one scale per tensor
            assert inits[n.input[2]].data_type == TensorProto.INT8 and list(inits[n.input[1]].dims) == []
    for l in report.layers:  # conv weights INT8 per channel on axis 0, biases float
        assert (l.weight_type, l.activation_type, l.w_bits) == ("INT8", "INT8", 8)
        assert l.layout.endswith("per channel axis 0")
    assert report.opset == 21 and {t.data_type for t in g.initializer} <= {
        TensorProto.INT8, TensorProto.FLOAT, TensorProto.INT64}  # no INT2/INT4/INT32 tensor left


def test_tensorrt_promotions_are_warned_and_reported(trt_mixed, tmp_path):
    qmodel, path, report, warned = trt_mixed
    promoted = [c for c in report.changes if c.what == "weight_bits"]
    assert {c.layer for c in promoted} == {n for n, l in rewrite.quant_layers(qmodel).items() if l.w_bits < 8}
    assert all(c.after == "W8" for c in promoted)
    assert {c.reason for c in promoted if c.layer in TWO_BIT} == {"TensorRT has no INT2"}
    assert "Conv" in next(c.reason for c in promoted if c.layer == "layer1.0.conv1")
    assert len(warned) == 1 and all(c.layer in warned[0] for c in promoted)
    saved = json.loads((path.parent / "verify.json").read_text())
    assert len(saved["changes"]) == len(report.changes) > len(promoted)  # activations re-expressed too
    assert {c["what"] for c in saved["changes"]} == {"weight_bits", "activation"}
    # verified against the legalised model; its agreement with the model as planned is reported
    v = report.verification
    assert v.top1_agreement == 1.0 and v.cosine > 0.9999 and v.plan_cosine is not None
    assert report.weight_bytes == report.packed_weight_bytes > report.plan_packed_weight_bytes
    assert "legalised for tensorrt" in report.summary() and "layer2.1.conv1: weight_bits W2 -> W8" in report.summary()


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def test_tensorrt_symmetric_quantize_needs_no_activation_change():
    torch.manual_seed(6)
    qmodel = rewrite.quantize(small_cnn(), {"0": 8, "3": 8, "7": 8}, [torch.randn(8, 3, 8, 8)], "minmax", target="tensorrt")
    layer = rewrite.quant_layers(qmodel)["3"]
    assert layer.a_zero_point == 0 and layer.a_qmin == -128 and layer.a_qmax == 127
    assert legalize(qmodel, "tensorrt").changes == []


def test_tensorrt_reexpression_equals_symmetric_calibration():
    """Re-expressing an unsigned model's activations gives what symmetric calibration gives."""
    torch.manual_seed(7)
    data, net, plan = [torch.randn(8, 3, 8, 8)], small_cnn(), {"0": 8, "3": 8, "7": 8}
    sym = rewrite.quant_layers(rewrite.quantize(net, plan, data, "minmax", target="tensorrt"))
    legal = legalize(rewrite.quantize(net, plan, data, "minmax"), "tensorrt")
    assert {c.what for c in legal.changes} == {"activation"}
    legal = rewrite.quant_layers(legal.model)
    for name, layer in sym.items():
        assert (legal[name].a_scale, legal[name].a_zero_point, legal[name].a_qmin, legal[name].a_qmax) == \
            (layer.a_scale, layer.a_zero_point, layer.a_qmin, layer.a_qmax), name


def test_tensorrt_int4_linear_is_weight_only_with_block_scales(tmp_path):
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 10)).eval()
    plan = {"0": (4, 8), "2": (3, 8), "4": (4, 16)}
    qmodel = rewrite.quantize(net, plan, [torch.randn(16, 64)], "minmax")
    path = tmp_path / "m.onnx"
    with pytest.warns(LegalizationWarning, match="4"):
        report = export_onnx(qmodel, torch.randn(2, 64), path, target="tensorrt", verify_inputs=[torch.randn(32, 64)])
    by = {l.name: l for l in report.layers}
    assert (by["0"].weight_type, by["0"].activation_type, by["0"].op) == ("INT4", "float", "MatMul")
    assert by["0"].layout == "[K,N] blocks of 64 axis 0" and by["2"].layout == "[K,N] blocks of 128 axis 0"
    assert by["2"].w_bits == 3 and by["2"].weight_type == "INT4"  # 3 bits in INT4, true range
    # K=96 is no multiple of 64: INT8; and its 16-bit input becomes 8-bit
    assert (by["4"].weight_type, by["4"].a_bits) == ("INT8", 8)
    what = {(c.layer, c.what) for c in report.changes}
    assert {("0", "weight_only"), ("2", "weight_only"), ("4", "weight_bits"), ("4", "activation")} <= what
    inits = initializers(path)
    layers = rewrite.quant_layers(qmodel)
    scale = numpy_helper.to_array(inits["2.weight_scale"])
    assert scale.shape == (1, 96)  # [ceil(K / 128), N]: the per-channel scale repeated per block
    np.testing.assert_array_equal(scale[0], layers["2"].w_scale.numpy())
    np.testing.assert_array_equal(numpy_helper.to_array(inits["2.weight"]).astype(np.int8), layers["2"].w_int.numpy().T)
    dq = next(n for n in nodes(path) if n.op_type == "DequantizeLinear" and n.input[0] == "2.weight")
    assert {a.name: helper.get_attribute_value(a) for a in dq.attribute} == {"axis": 0, "block_size": 128}
    assert report.verification.cosine > 0.99999 and report.verification.top1_agreement == 1.0


def test_a_plan_solved_for_tensorrt_exports_unchanged_at_its_size(tmp_path):
    """SolveSpec(target="tensorrt") → quantize → export: no promotion, no warning, and the file's
    weights are the plan's bytes; a plan at the uniform-4-bit size of any runtime is promoted at
    export, to more bytes than it planned."""
    import hawq
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 64, 3, stride=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    data = [(torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))) for _ in range(2)]
    prof = hawq.profile(net, None, data, (2, 4, 8))
    spec = hawq.SolveSpec(target="tensorrt")
    plan = hawq.solve(prof, hawq.Budget(megabytes=hawq.uniform_plan(prof, 4, spec).weight_bytes / 1e6), spec)
    assert plan.assignment() == {"0": (8, 8), "2": (8, 8), "6": (4, 32), "8": (8, 8)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", hawq.TargetMismatchWarning)
        q = hawq.quantize(net, plan, data, target=Target("tensorrt"))
    with pytest.warns(hawq.TargetMismatchWarning, match="solved for tensorrt and is quantized for ort"):
        hawq.quantize(net, plan, data, target=Target("ort"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LegalizationWarning)
        report = export_onnx(q, data[0][0][:1], tmp_path / "trt.onnx", target="tensorrt", verify_inputs=[data[0][0]])
    assert report.changes == [] and report.weight_bytes == plan.weight_bytes == report.plan_weight_bytes
    anywhere = hawq.solve(prof, hawq.Budget(megabytes=hawq.uniform_plan(prof, 4).weight_bytes / 1e6), hawq.SolveSpec())
    with pytest.warns(hawq.TargetMismatchWarning, match=r"tensorrt runs or stores \d+ layer\(s\) .* --target tensorrt"):
        q_any = hawq.quantize(net, anywhere, data, target=Target("tensorrt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", hawq.TargetMismatchWarning)  # ort runs every candidate
        hawq.quantize(net, anywhere, data, target=Target("ort"))
    with pytest.warns(LegalizationWarning):
        promoted = export_onnx(q_any, data[0][0][:1], tmp_path / "any.onnx", target="tensorrt", verify=False)
    assert promoted.weight_bytes > anywhere.weight_bytes


def test_the_tensorrt_legaliser_applies_what_the_solver_prices():
    """legalize(tensorrt) changes each layer to exactly what hawq.target.trt_accepts says (widths as
    coded), and runs_as, which the solver takes its candidates from, is that with the widths
    rounded up to their containers: the two cannot drift apart."""
    from hawq.quant import WEIGHT_ONLY
    from hawq.target import runs_as, trt_accepts
    torch.manual_seed(21)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 9), nn.ReLU(), nn.Linear(9, 96)).eval()
    cands = [(2, 8), (3, 8), (4, 8), (4, WEIGHT_ONLY), (6, 8), (8, 8), (8, 16), (2, 16), (12, 8), (3, WEIGHT_ONLY)]
    seen = set()
    for cand in cands:
        for plan in ({"0": cand, "2": (8, 8), "4": (8, 8)}, {"0": (8, 8), "2": cand, "4": cand}):
            qmodel = rewrite.quantize(net, plan, [torch.randn(16, 64)], "minmax")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LegalizationWarning)
                legal = legalize(qmodel, "tensorrt")
            for name, layer in rewrite.quant_layers(legal.model).items():
                asked = plan[name]
                acc = trt_accepts("Linear", tuple(layer.fp.weight.shape), asked)
                got = (layer.w_bits, WEIGHT_ONLY if layer.weight_only else layer.a_bits)
                assert got == (acc.w_bits, acc.a_bits), (name, asked, got, acc)
                reasons = {c.what: c.reason for c in legal.changes if c.layer == name and c.what != "activation"}
                assert reasons.get("weight_bits", "") == acc.weight and reasons.get("weight_only", "") == acc.weight_only
                container = {3: 4, 5: 8, 6: 8, 7: 8}.get(acc.w_bits, acc.w_bits)
                assert runs_as("tensorrt", "Linear", tuple(layer.fp.weight.shape), asked)[0] == (container, acc.a_bits)
                seen.add((acc.w_bits != asked[0], acc.a_bits != asked[1]))
    assert seen == {(False, False), (True, False), (False, True), (True, True)}, seen


def test_int16_weights_and_tensorrt_promotions(tmp_path):
    """12-bit weights go to INT16 on ort (2 bytes a weight) and to INT8 on tensorrt; a 4-bit Linear
    with an odd N cannot be packed for TensorRT's INT4 and becomes INT8."""
    torch.manual_seed(12)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 9)).eval()
    qmodel = rewrite.quantize(net, {"0": 12, "2": 4}, [torch.randn(16, 64)], "minmax")
    ort_rep = export_onnx(qmodel, torch.randn(2, 64), tmp_path / "o.onnx", verify_inputs=[torch.randn(16, 64)])
    assert [l.weight_type for l in ort_rep.layers] == ["INT16", "INT4"]
    assert ort_rep.layers[0].weight_bytes == 2 * 64 * 64 and ort_rep.layers[1].weight_bytes == math.ceil(9 * 64 / 2)
    codes = numpy_helper.to_array(initializers(tmp_path / "o.onnx")["0.weight"])
    assert codes.dtype == np.int16 and np.abs(codes).max() == 2 ** 11 - 1
    with pytest.warns(LegalizationWarning):
        trt = export_onnx(qmodel, torch.randn(2, 64), tmp_path / "t.onnx", target="tensorrt", verify=False)
    reasons = {c.layer: c.reason for c in trt.changes if c.what == "weight_bits"}
    assert reasons == {"0": "TensorRT has no INT16 weights", "2": "TensorRT INT4 needs an even last dimension to pack; N=9"}
    assert [l.weight_type for l in trt.layers] == ["INT8", "INT8"] and [l.w_bits for l in trt.layers] == [8, 8]


# ------------------------------------------------------------------------ ONNX Runtime issue 25526

def _s8_reshape_model() -> onnx.ModelProto:
    """int8 Q → DQ → Reshape → MatMul at opset 21: the pattern ONNX Runtime 1.31-1.32 cannot load."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array([-1, 12], np.int64), "shape"),
             numpy_helper.from_array(rng.integers(-127, 128, (12, 4)).astype(np.int8), "w"),
             numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"), numpy_helper.from_array(np.zeros(4, np.int8), "wz")]
    ns = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
          helper.make_node("Reshape", ["xd", "shape"], ["xr"]),
          helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1), helper.make_node("MatMul", ["xr", "wd"], ["y"])]
    g = helper.make_graph(ns, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_signed_activations_before_reshape_load(tmp_path):
    path = tmp_path / "s8.onnx"
    onnx.save(_s8_reshape_model(), str(path))
    assert "QDQS8ToU8Transformer" in disabled_optimizers(path)
    if ort.__version__.startswith(("1.31.", "1.32.")):  # the bug: a plain session fails to load it
        with pytest.raises(Exception, match="does not match y_zero_point type"):
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    assert ort_session(path).run(None, {"x": x})[0].shape == (2, 4)


def test_tensorrt_export_loads_in_a_plain_session(trt_mixed, mixed):
    """hawq puts each activation Q/DQ right at its layer, after any Flatten/Reshape, so even a
    plain session loads the signed-activation file; hawq's own sessions disable the transformer."""
    _, path, _, _ = trt_mixed
    assert any(n.op_type == "Reshape" for n in nodes(path))
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert disabled_optimizers(path) == trt_mixed[2].verification.disabled_optimizers == [
        "QDQS8ToU8Transformer", "ClipQuantRewrite"]
    assert disabled_optimizers(mixed[1]) == []  # unsigned activations: nothing disabled


def test_relu6_clip_bounds_are_constants(tmp_path):
    """The exporter writes ReLU6 as Clip(x, CastLike(0, x), CastLike(6, x)); hawq folds the bounds
    into initializers, which TensorRT needs and without which ONNX Runtime never fuses
    Conv→Clip→Q into QLinearConv. On signed graphs hawq's sessions also disable ClipQuantRewrite,
    which in ONNX Runtime 1.31-1.32 drops such a Clip before a signed Q (measured on
    mobilenet_v2's tensorrt export: cosine 0.80 without the workaround; see the benchmark)."""
    torch.manual_seed(9)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),
                        nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    data = [torch.randn(16, 3, 12, 12)]
    plan = {"0": 8, "2": 8, "4": 8, "7": 8}
    path = tmp_path / "trt.onnx"
    report = export_onnx(rewrite.quantize(net, plan, data, "minmax", target="tensorrt"), torch.randn(1, 3, 12, 12),
                         path, target="tensorrt", verify_inputs=data)
    assert report.verification.cosine > 0.9999
    assert "ClipQuantRewrite" in report.verification.disabled_optimizers
    g = onnx.load(str(path)).graph
    inits = {t.name for t in g.initializer}
    clips = [n for n in g.node if n.op_type == "Clip"]
    assert len(clips) == 2 and all(i in inits for c in clips for i in c.input[1:])
    assert not [n for n in g.node if n.op_type == "CastLike"]
    report = export_onnx(rewrite.quantize(net, plan, data, "minmax", quantize_outputs=True), torch.randn(1, 3, 12, 12),
                         tmp_path / "ort.onnx", verify_inputs=data)
    assert [l.ort_kernel for l in report.layers] == ["QLinearConv"] * 3 + ["QGemm"]


def test_quantized_outputs_make_every_conv_an_integer_kernel(resnet, tmp_path):
    """quantize_outputs=True quantizes the outputs of convs that feed residual adds (and the stem,
    whose ReLU output feeds one): ONNX Runtime then runs all 21 convs of ResNet-20 as QLinearConv
    (without it: only those whose output goes through ReLU to another quantized conv)."""
    torch.manual_seed(10)
    plan = {n: 8 for n in layer_names(resnet)}
    qmodel = rewrite.quantize(resnet, plan, batches(1), "minmax", quantize_outputs=True)
    outs = [n for n, l in rewrite.quant_layers(qmodel).items() if l.out_bits]
    assert outs == rewrite.output_quant_layers(qmodel) and "conv1" in outs and "layer1.0.conv2" in outs
    assert "layer1.0.conv1" not in outs and "fc" not in outs
    report = export_onnx(qmodel, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx", verify_inputs=batches(2))
    kernels = [l.ort_kernel for l in report.layers]
    assert kernels == ["QLinearConv"] * 21 + ["QGemm"]
    assert report.verification.cosine > 0.9999 and report.verification.top1_agreement == 1.0
    trt = legalize(qmodel, "tensorrt")  # all 8-bit: no promotion, no warning
    layer = rewrite.quant_layers(trt.model)["layer1.0.conv2"]
    assert layer.o_zero_point == 0 and layer.o_qmin == -128  # outputs re-expressed symmetric too
    assert ("layer1.0.conv2", "output") in {(c.layer, c.what) for c in trt.changes}


# ------------------------------------------------------------------------------- shapes and checks

@pytest.mark.parametrize("x, scale, axis, block, ok", [
    ((16, 64), (16, 2), 1, 32, True),
    ((16, 64), (16, 2), 1, 16, False),  # passes onnx.checker, fails in ONNX Runtime
    ((16, 64), (16, 3), 1, 32, False),  # passes checker and reference evaluator, fails in ORT
    ((16, 65), (16, 3), 1, 32, True),  # ceil
    ((128, 96), (1, 96), 0, 128, True),
    ((16, 64), (16,), 0, 0, True), ((16, 64), (64,), 0, 0, False), ((16, 64), (), 0, 0, True),
])
def test_scale_shape_check(x, scale, axis, block, ok):
    if ok:
        check_scale_shape(x, scale, axis, block)
    else:
        with pytest.raises(VerificationError, match="must be"):
            check_scale_shape(x, scale, axis, block)


def test_tampered_file_fails_verification(mixed, tmp_path):
    qmodel, path, _ = mixed
    model = onnx.load(str(path))
    for t in model.graph.initializer:
        if t.name == "fc.weight_scale":
            t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), t.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(VerificationError, match="top-1") as e:
        verify_onnx(bad, qmodel, batches(2))
    # every output off, none of it float32 rounding's: the float64 reference does not excuse it
    assert re.search(r"cosine -(1\.0|0\.99)", str(e.value)) and "100.00% beyond the 0.00%" in str(e.value)


class _Shift(nn.Module):
    """(x + c) - c: exact in float64; in float32, x rounded to the spacing of floats near c (1/16)."""

    def forward(self, x):
        return (x + 1e6) - 1e6


def test_outputs_moved_by_float32_rounding_are_not_blamed_on_the_runtime(tmp_path):
    # float32 rounding alone moves a share of this model's outputs by more than a step (measured
    # against the same fake-quant model in float64); ONNX Runtime computes the same float32 sums, so
    # what it is blamed for is the share beyond that: the step check's limit applies to the excess
    torch.manual_seed(0)
    model = nn.Sequential(_Shift(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(64, 64)
    qmodel = rewrite.quantize(model, {"1": 8, "3": 8, "5": 8}, [x], "minmax")
    v = export_onnx(qmodel, x, tmp_path / "m.onnx", verify_inputs=x).verification
    assert v.float32_frac_off_by_more_than_1_step > 0.05 and v.float32_cosine < 1 - 1e-9
    assert v.exact_frac_off_by_more_than_1_step == pytest.approx(v.float32_frac_off_by_more_than_1_step, abs=0.02)
    beyond = v.frac_off_by_more_than_1_step - v.float32_frac_off_by_more_than_1_step
    verify_onnx(tmp_path / "m.onnx", qmodel, x, max_frac_off=beyond + 0.01)  # the whole share would fail this
    with pytest.raises(VerificationError, match="beyond the"):
        verify_onnx(tmp_path / "m.onnx", qmodel, x, max_frac_off=beyond - 0.01)


def test_failed_verification_leaves_no_model(qmixed, tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match="off by more than one step"):
        export_onnx(qmixed, torch.randn(2, 1, 28, 28), path, max_frac_off=-1.0)
    assert not path.exists() and not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_no_verify_still_reports_changes(qmixed, tmp_path):
    with pytest.warns(LegalizationWarning):
        report = export_onnx(qmixed, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx", target="tensorrt", verify=False)
    saved = json.loads((tmp_path / "verify.json").read_text())
    assert saved["verification"] is None and len(saved["changes"]) == len(report.changes) > 0


def test_unquantized_model_gives_a_clear_error(resnet, tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"hawq\.quantize"):
        export_onnx(resnet, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_opset_and_target(qmixed, tmp_path):
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(qmixed, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx", opset=17)
    with pytest.raises(ConfigError, match="ort, tensorrt"):
        export_onnx(qmixed, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx", target="tflite")


def test_cli_export_target(tmp_path, capsys):
    from hawq import cli

    from hawq import save_qmodel
    from hawq.models import resnet20

    torch.manual_seed(11)
    x = torch.randn(16, 1, 28, 28)
    net = resnet20().eval()
    widths = {n: 8 for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    widths.update({"fc": 4, "layer1.0.conv1": 2})
    qm = tmp_path / "q.pt"
    save_qmodel(qm, rewrite.quantize(net, widths, [x], "minmax"), x, {"name": "resnet20", "family": "embedded"},
                {"layers": [{"name": n, "w_bits": w, "a_bits": 8} for n, w in widths.items()]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegalizationWarning)
        assert cli.main(["--quiet", "export", str(qm), "--out", str(tmp_path / "m.onnx"), "--target", "tensorrt"]) == 0
    out = capsys.readouterr().out
    assert "target tensorrt" in out and "layer1.0.conv1: weight_bits W2 -> W8 (TensorRT has no INT2)" in out
    assert '"top1_agreement"' in out
    saved = json.loads((tmp_path / "verify.json").read_text())
    types = {l["name"]: l["weight_type"] for l in saved["layers"]}
    assert (types["fc"], types["layer1.0.conv1"], types["conv1"]) == ("INT4", "INT8", "INT8") and saved["opset"] == 21


# ------------------------------------------------- exact integers on every CPU (u8×s8 saturation)

def _worst_case_model() -> nn.Module:
    """Every weight code +127 and every input code 255, over 576 products per output: a u8×s8
    kernel that adds pairs of products into int16 (x86 without VNNI) saturates each pair
    (2·255·127 = 64770 > 32767) and returns about half the exact sum."""
    net = nn.Sequential(nn.Conv2d(64, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(),
                        nn.Linear(16, 4)).eval()
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.fill_(0.01)
                m.bias.zero_()
    return net


@pytest.mark.parametrize("int8", ["u8u8", "reduce-range"])
def test_worst_case_integers_are_exact_on_this_cpu(tmp_path, int8):
    """Through hawq's own export, the largest codes on both sides: ONNX Runtime's output equals
    exact integer arithmetic (the legalised fake-quant model in float64) on whatever CPU runs
    this, to within one final output step."""
    net = _worst_case_model()
    x = torch.ones(2, 64, 6, 6)
    qmodel = rewrite.quantize(net, {"0": (8, 8), "3": (8, 8), "5": (8, 8)}, [x], weight_method="minmax")
    first = rewrite.quant_layers(qmodel)["0"]
    assert int(first.w_int.max()) == 127 and first.a_qmax == 255 and 2 * 255 * 127 > 32767
    path = tmp_path / "m.onnx"
    report = export_onnx(qmodel, x[:1], path, int8=int8, verify=False)
    assert report.exact_on.startswith("every CPU")
    by = {l.name: l for l in report.layers}
    if int8 == "u8u8":
        assert {l.weight_type for l in report.layers} == {"UINT8"}
        codes = numpy_helper.to_array(initializers(path)["0.weight"])
        assert codes.dtype == np.uint8 and int(codes.max()) == 255  # 127 + 128
    else:
        assert {by[n].w_bits for n in by} == {8} and {c.what for c in report.changes} == {"weight_range"}
        codes = numpy_helper.to_array(initializers(path)["0.weight"])
        assert codes.dtype == np.int8 and int(np.abs(codes).max()) == 63
    legal = legalize(qmodel, "ort", int8=int8).model.double()
    with torch.no_grad():
        exact = legal(x.double()).numpy()
    sess = ort_session(path)
    out = sess.run(None, {sess.get_inputs()[0].name: x.float().numpy()})[0]
    last = rewrite.quant_layers(legal)["5"]
    step = float(last.a_scale * last.w_scale.max())  # one input step of the last layer, at most
    assert np.abs(out - exact).max() <= step + 1e-6, (out, exact)
    assert "QLinearConv" in ort_kernel_ops(path)  # the integer kernel really ran


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_weight_only_worst_case_is_exact_on_this_cpu(tmp_path, bits):
    """The weight-only path (MatMulNBits) at its extremes: codes ±qmax against a constant input,
    which ONNX Runtime's default accuracy level 4 quantizes to int8 without error (127), so any
    difference would be the kernel's own arithmetic. hawq's session (level 1, fp32) and a plain
    session both equal the exact result on whatever CPU runs this (both checked on emulated
    AVX2-only x86 too)."""
    net = nn.Sequential(nn.Linear(512, 64)).eval()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].weight[1::2] = -1.0
        net[0].weight[:, ::3] *= -1
        net[0].bias.zero_()
    x = torch.full((2, 4, 512), 3.0)
    qmodel = rewrite.quantize(net, {"0": (bits, 32)}, [x], weight_method="minmax")
    path = tmp_path / "m.onnx"
    report = export_onnx(qmodel, x[:1], path, verify=False)
    assert report.exact_on.startswith("every CPU")
    with torch.no_grad():
        exact = legalize(qmodel, "ort").model.double()(x.double()).numpy()
    assert "MatMulNBits" in ort_kernel_ops(path)
    for sess in (ort_session(path), ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])):
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert np.abs(out - exact).max() <= 1e-5 * np.abs(exact).max(), (out, exact)


def test_reduce_range_quantizes_what_the_file_computes(tmp_path):
    """hawq.quantize(..., target=Target("ort", "reduce-range")) gives the 8-bit layers behind 8-bit inputs 7-bit
    codes: every export scheme then keeps them INT8 in the u8×s8 kernels with no change to the
    model, so the accuracy measured on the quantized model is the file's, and the worst case is
    exact on whatever CPU runs this."""
    net = _worst_case_model()
    x = torch.ones(2, 64, 6, 6)
    plan = {"0": (8, 8), "3": (8, 8), "5": (8, 8)}
    qmodel = rewrite.quantize(net, plan, [x], weight_method="minmax", target=Target("ort", "reduce-range"))
    layers = rewrite.quant_layers(qmodel)
    assert {(l.w_bits, l.code_bits, int(l.w_int.abs().max())) for l in layers.values()} == {(8, 7, 63)}
    for int8 in ("u8u8", "reduce-range", "s8-vnni"):
        path = tmp_path / f"{int8}.onnx"
        report = export_onnx(qmodel, x[:1], path, int8=int8, verify=False)
        assert report.changes == [] and report.exact_on.startswith("every CPU")
        assert {(l.w_bits, l.weight_type) for l in report.layers} == {(8, "INT8")}
        assert all("7-bit codes" in l.note for l in report.layers)
    with torch.no_grad():
        exact = qmodel.double()(x.double()).numpy()
    sess = ort_session(path)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    step = float(layers["5"].a_scale * layers["5"].w_scale.max())
    assert np.abs(out - exact).max() <= step + 1e-6, (out, exact)
    assert "QLinearConv" in ort_kernel_ops(path)


def test_reduced_code_bits():
    """Only layers in ONNX Runtime's 8-bit integer kernels whose products can pass int16 in pairs."""
    assert rewrite.reduced_code_bits(8, 8, False) == 7  # 2·255·127 > 32767 >= 2·255·63
    assert rewrite.reduced_code_bits(8, 8, True) == 7  # signed inputs are shifted to uint8
    assert rewrite.reduced_code_bits(8, 4, False) == 8  # 2·15·127
    assert rewrite.reduced_code_bits(8, 7, False) == 8  # 2·127·127 = 32258
    assert rewrite.reduced_code_bits(4, 8, False) == 4
    assert rewrite.reduced_code_bits(8, 32, False) == 8  # weight-only: float input
    assert rewrite.reduced_code_bits(16, 8, False) == 16  # INT16 weights run in float kernels
    with pytest.raises(ValueError, match="w_code_bits"):
        rewrite.QuantLayer(nn.Linear(4, 4), 8, 8, w_code_bits=8)


def ort_kernel_ops(path) -> set[str]:
    """The ops of ONNX Runtime's optimized graph of the file."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(path) + ".opt.onnx"
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}


def test_s8_vnni_is_an_explicit_opt_in(tmp_path, monkeypatch):
    """int8='s8-vnni' keeps INT8 weights at full range and says where that is exact; on a CPU whose
    u8×s8 kernel saturates (the probe says so), verifying it is refused in one line before any work."""
    from hawq import cpu

    net = _worst_case_model()
    x = torch.ones(2, 64, 6, 6)
    qmodel = rewrite.quantize(net, {"0": (8, 8), "3": (8, 8), "5": (8, 8)}, [x], weight_method="minmax")
    report = export_onnx(qmodel, x[:1], tmp_path / "m.onnx", int8="s8-vnni", verify=False)
    assert {l.weight_type for l in report.layers} == {"INT8"} and "VNNI" in report.exact_on
    monkeypatch.setattr(cpu, "ort_u8s8_exact", lambda: False)
    with pytest.raises(VerificationError, match="s8-vnni.*VNNI.*u8u8") as e:
        export_onnx(qmodel, x[:1], tmp_path / "n.onnx", int8="s8-vnni")
    assert "\n" not in str(e.value) and not (tmp_path / "n.onnx").exists()
    with pytest.raises(ConfigError, match="u8u8, reduce-range, s8-vnni"):
        export_onnx(qmodel, x[:1], tmp_path / "n.onnx", int8="u8s8")


def test_cpu_flags_and_probe():
    """The flags that decide the integer kernels, read from cpuinfo text; the measured probe agrees
    with them wherever the flags are what the kernels see (not under an emulator)."""
    from hawq import cpu

    epyc = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx2 fma\n"
    spr = "model name\t: Xeon\nflags\t\t: avx2 avx512bw avx512_vnni amx_int8\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp\n"
    assert cpu.u8s8_pairs_saturate("x86_64", cpu.cpu_flags(epyc)) is True
    assert cpu.u8s8_pairs_saturate("x86_64", cpu.cpu_flags(spr)) is False
    assert cpu.u8s8_pairs_saturate("aarch64", cpu.cpu_flags(arm)) is False
    assert cpu.u8s8_pairs_saturate("x86_64", set()) is None
    d = cpu.describe(epyc, "x86_64")
    assert d["model"] == "AMD EPYC 7B12" and d["flags"] == ["avx2"] and isinstance(d["ort_u8s8_exact"], bool)
    assert cpu.pair_is_exact(255, 63) and cpu.pair_is_exact(127, 127) and not cpu.pair_is_exact(255, 127)
