"""QDQ ONNX export: checker, ONNX Runtime parity, packed INT4 storage, exact codes, failing checks."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from hawq import rewrite
from hawq.errors import ConfigError, UnsupportedModelError, VerificationError
from hawq.models import resnet20
from hawq.onnx_export import export_onnx, verify_onnx

TWO_BIT = ("layer2.1.conv1", "layer3.2.conv2")
EIGHT_BIT = ("conv1", "fc")


def batches(n: int, shape=(8, 1, 28, 28)) -> list[torch.Tensor]:
    return [torch.randn(*shape) for _ in range(n)]


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return resnet20().eval()


@pytest.fixture(scope="module")
def mixed(resnet, tmp_path_factory):
    """First/last layers 8-bit, two 2-bit layers, the rest 4-bit; exported and verified."""
    plan = {n: 8 if n in EIGHT_BIT else 2 if n in TWO_BIT else 4 for n in layer_names(resnet)}
    torch.manual_seed(1)
    qmodel = rewrite.quantize(resnet, plan, batches(2), weight_method="minmax")
    path = tmp_path_factory.mktemp("mixed") / "model.onnx"
    report = export_onnx(qmodel, torch.randn(2, 1, 28, 28), path, verify_inputs=batches(4))
    return qmodel, path, report


@pytest.fixture(scope="module")
def int8(resnet, tmp_path_factory):
    torch.manual_seed(1)
    qmodel = rewrite.quantize(resnet, {n: 8 for n in layer_names(resnet)}, batches(2), weight_method="minmax")
    path = tmp_path_factory.mktemp("int8") / "model.onnx"
    return qmodel, path, export_onnx(qmodel, torch.randn(2, 1, 28, 28), path, verify=False)


def initializers(path) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


def test_exported_model_is_valid_and_matches_pytorch(mixed):
    qmodel, path, report = mixed
    onnx.checker.check_model(str(path), full_check=True)
    v = report.verification
    assert v.samples == 32
    assert v.top1_agreement == 1.0 and v.cosine > 0.9999
    # a few output steps: ORT's integer kernels and PyTorch round a handful of activations one LSB
    # apart (3.4 steps here; the margin is for other CPUs' kernels)
    assert v.max_diff_steps <= 8 and v.frac_off_by_more_than_1_step < 0.1
    # an independent run on a fresh batch of another size (the batch dimension is dynamic)
    x = torch.randn(5, 1, 28, 28)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    ref = qmodel(x).detach().numpy()
    assert out.shape == (5, 10)
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert np.abs(out - ref).max() < 1e-2 * np.abs(ref).max()


def test_report_and_verify_json(mixed):
    _, path, report = mixed
    saved = json.loads((path.parent / "verify.json").read_text())
    assert saved["format"] == "hawq.export/1"
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert saved["verification"]["top1_agreement"] == 1.0
    assert report.file_bytes == path.stat().st_size
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_weights_are_packed_with_planned_types(mixed, int8):
    qmodel, path, report = mixed
    inits = initializers(path)
    layers = rewrite.quant_layers(qmodel)
    for name, layer in layers.items():
        want = TensorProto.INT8 if name in EIGHT_BIT else TensorProto.INT4
        assert inits[f"{name}.weight"].data_type == want, name
        assert inits[f"{name}.weight_zero_point"].data_type == want, name
    for name in TWO_BIT:
        codes = numpy_helper.to_array(inits[f"{name}.weight"]).astype(np.int8)
        assert codes.min() >= -1 and codes.max() <= 1 and (codes != 0).any()
    # sizes: bytes in the file == Σ params · container bits / 8; plan counts 2-bit layers at 2 bits
    params = {n: l.w_int.numel() for n, l in layers.items()}
    assert report.weight_bytes == report.packed_weight_bytes == sum(
        p if n in EIGHT_BIT else math.ceil(p / 2) for n, p in params.items())
    assert report.plan_weight_bytes == sum(p * (8 if n in EIGHT_BIT else 2 if n in TWO_BIT else 4) / 8 for n, p in params.items())
    # the 4-bit file is smaller than the all-INT8 one by about half of the 4-bit layers' parameters
    saved = int8[2].file_bytes - report.file_bytes
    expected = sum(p / 2 for n, p in params.items() if n not in EIGHT_BIT)
    assert abs(saved - expected) < 0.02 * expected
    assert int8[2].weight_bytes == sum(params.values())


def test_stored_codes_equal_the_fake_quant_model(mixed):
    qmodel, path, _ = mixed
    inits = initializers(path)
    for name, layer in rewrite.quant_layers(qmodel).items():
        np.testing.assert_array_equal(numpy_helper.to_array(inits[f"{name}.weight"]).astype(np.int32),
                                      layer.w_int.numpy().astype(np.int32))
        np.testing.assert_array_equal(numpy_helper.to_array(inits[f"{name}.weight_zero_point"]).astype(np.int32), 0)
        np.testing.assert_array_equal(numpy_helper.to_array(inits[f"{name}.weight_scale"]), layer.w_scale.numpy())
        np.testing.assert_array_equal(numpy_helper.to_array(inits[f"{name}.bias"]), layer.bias_int.numpy())
        assert numpy_helper.to_array(inits[f"{name}.input_zero_point"]).dtype == np.uint8


def test_tampered_file_fails_verification(mixed, tmp_path):
    qmodel, path, _ = mixed
    model = onnx.load(str(path))
    for t in model.graph.initializer:
        if t.name == "fc.weight_scale":
            t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), t.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(VerificationError, match="top-1"):
        verify_onnx(bad, qmodel, batches(2))


def test_failed_verification_leaves_nothing(mixed, tmp_path):
    qmodel, _, _ = mixed
    path = tmp_path / "m.onnx"
    with pytest.raises(VerificationError):
        export_onnx(qmodel, torch.randn(2, 1, 28, 28), path, min_cosine=1.5)
    assert list(tmp_path.iterdir()) == []


def test_unquantized_model_gives_a_clear_error(resnet, tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"hawq\.quantize"):
        export_onnx(resnet, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_opset(mixed, tmp_path):
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(mixed[0], torch.randn(1, 1, 28, 28), tmp_path / "m.onnx", opset=17)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


@pytest.mark.parametrize("shape, op", [((16, 20), "Gemm"), ((4, 5, 20), "MatMul")])
def test_linear_only_mlp(tmp_path, shape, op):
    """2-D input exports Linear as Gemm(transB=1), 3-D as MatMul(x, W^T) + Add; a 6-bit input gets
    a Clip before its uint8 Q, a 16-bit one a uint16 Q/DQ."""
    torch.manual_seed(2)
    plan = {"0": (4, 16), "2": (3, 6), "4": (2, 8)}
    qmodel = rewrite.quantize(mlp(), plan, [torch.randn(*shape) for _ in range(2)], weight_method="minmax")
    path = tmp_path / "mlp.onnx"
    report = export_onnx(qmodel, torch.randn(*shape), path, verify_inputs=[torch.randn(*shape) for _ in range(2)])
    assert [l.op for l in report.layers] == [op] * 3
    assert [l.weight_type for l in report.layers] == ["INT4"] * 3
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
        np.testing.assert_array_equal(numpy_helper.to_array(inits[f"{name}.weight"]).astype(np.int8), w.T if transpose else w)
