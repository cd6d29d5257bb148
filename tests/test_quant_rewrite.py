"""Quantizer math, BN folding and the rewriter against hand computations."""
import copy

import pytest
import torch
from torch import nn

from hawq import quant
from hawq.errors import ArtifactError, DataError
from hawq.graph import fold_bn, trace_layers
from hawq.models import resnet20
from hawq.rewrite import QuantLayer, quant_layers, quantize
from hawq.target import Target


def trained_like_resnet():
    torch.manual_seed(0)
    m = resnet20()
    for mod in m.modules():  # non-trivial BN statistics
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


def test_weight_quantization_by_hand():
    w = torch.tensor([[0.7, -0.35, 0.1], [2.0, 1.0, -0.4]])
    for bits in (2, 3, 4, 8):
        qmax = 2 ** (bits - 1) - 1
        wq, q, s = quant.fake_quant_weight(w, bits, "minmax")
        hand_s = torch.tensor([0.7, 2.0]) / qmax
        assert torch.allclose(s, hand_s)
        hand_q = torch.clamp(torch.round(w / hand_s[:, None]), -qmax, qmax)
        assert torch.equal(q, hand_q)
        assert torch.allclose(wq, hand_q * hand_s[:, None])


def test_mse_scale_never_worse_than_minmax():
    w = torch.randn(16, 64) ** 3  # heavy tails
    for bits in (2, 3, 4, 8):
        assert quant.weight_sq_error(w, bits, "mse") <= quant.weight_sq_error(w, bits, "minmax") + 1e-9


def test_error_shrinks_as_bits_grow():
    w = torch.randn(32, 3, 3, 3)
    errs = [quant.weight_sq_error(w, b) for b in (2, 3, 4, 6, 8)]
    assert all(a > b for a, b in zip(errs, errs[1:]))


def test_activation_qparams():
    assert quant.act_qparams(0.0, 2.55, 8) == pytest.approx((0.01, 0, 0, 255))
    s, zp, lo, hi = quant.act_qparams(-1.0, 3.0, 8)
    assert s == pytest.approx(4 / 255) and zp == round(1 / s) and (lo, hi) == (0, 255)


def test_bn_folding_is_exact_and_leaves_model_alone():
    m = trained_like_resnet()
    before = copy.deepcopy(m.state_dict())
    f = fold_bn(m)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in f.modules())
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(m(x), f(x), atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_graph_layers_macs_and_groups():
    g = trace_layers(resnet20(), torch.randn(2, 1, 28, 28))
    assert len(g.layers) == 22 and g.layers[0].name == "conv1" and g.layers[-1].name == "fc"
    macs = {l.name: l.macs for l in g.layers}
    assert macs["conv1"] == 16 * 28 * 28 * 9
    assert macs["layer2.0.conv1"] == 32 * 14 * 14 * 16 * 9
    assert macs["fc"] == 640
    assert ("layer2.0.conv1", "layer2.0.shortcut.0") in g.groups
    # the stem reaches layer1.0's identity skip through BN, ReLU; a skip from an add has no producer
    assert g.residual == (("conv1", "layer1.0.conv2"), ("layer2.0.conv2", "layer2.0.shortcut.0"),
                          ("layer3.0.conv2", "layer3.0.shortcut.0"))


class _Branchy(nn.Module):
    """Adds of two layers, of a layer and a constant, of a layer and an add, and a data-free graph."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Linear(4, 4) for _ in range(4))

    def forward(self, x):
        s = self.a(x) + torch.relu(self.b(x))  # tie a, b
        t = self.c(s) + 1.0  # no tie: one producer
        return self.d(torch.add(t, s)) + s  # c joins the add s (no producer): no tie; d + s: none


def test_residual_adds_walk_back_through_single_input_ops():
    assert trace_layers(_Branchy(), torch.randn(2, 4)).residual == (("a", "b"),)


def test_untraceable_model_has_no_residual_ties():
    class DataDependent(_Branchy):
        def forward(self, x):
            return self.a(x) + self.b(x) if x.sum() > 0 else self.c(x)

    g = trace_layers(DataDependent(), torch.ones(2, 4))
    assert g.residual == () and g.names == ["a", "b"]


def test_uniform_plan_weights_equal_hand_quantization():
    m = trained_like_resnet()
    names = [l.name for l in trace_layers(m, torch.randn(1, 1, 28, 28)).layers]
    plan = {n: (8 if n in ("conv1", "fc") else 4) for n in names}
    data = [(torch.randn(16, 1, 28, 28), None) for _ in range(2)]
    q = quantize(m, plan, data, weight_method="minmax")
    folded = dict(fold_bn(m).named_modules())
    layers = quant_layers(q)
    assert set(layers) == set(names)
    for n, ql in layers.items():
        w = folded[n].weight.detach()
        qmax = 2 ** (plan[n] - 1) - 1
        s = w.reshape(w.shape[0], -1).abs().amax(1) / qmax
        hand = torch.clamp(torch.round(w / s.reshape(-1, *[1] * (w.dim() - 1))), -qmax, qmax)
        assert torch.equal(ql.w_int.float(), hand), n
        assert torch.allclose(ql.w_fq, hand * s.reshape(-1, *[1] * (w.dim() - 1))), n


def test_quantize_close_to_float_at_8_bits_and_model_unchanged():
    m = trained_like_resnet()
    before = copy.deepcopy(m.state_dict())
    names = [l.name for l in trace_layers(m, torch.randn(1, 1, 28, 28)).layers]
    x = torch.randn(32, 1, 28, 28)
    q = quantize(m, {n: 8 for n in names}, [(x, None)])
    ref, out = m(x), q(x)
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0)
    assert cos > 0.999
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not any(isinstance(x, QuantLayer) for x in m.modules())


def test_quantize_errors():
    m = resnet20()
    with pytest.raises(ArtifactError, match="lacks"):
        quantize(m, {"nope.conv": 4}, [(torch.randn(2, 1, 28, 28), None)])
    with pytest.raises(DataError, match="empty"):
        quantize(m, {"conv1": 4}, [])


def test_reduce_range_codes_survive_training():
    """reduce_range's 7-bit codes hold through the training path (enable_qat, a step, freeze)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(32, 16)
    q = quantize(net, {"0": (8, 8), "2": (4, 8)}, [x], target=Target("ort", "reduce-range"))
    first, second = quant_layers(q)["0"], quant_layers(q)["2"]
    assert (first.code_bits, second.code_bits) == (7, 4) and "w_code_bits=7" in repr(first)
    first.enable_qat()
    with torch.no_grad():
        first.fp.weight.mul_(3)  # push codes past ±63: the training path must clamp them there
    q(x).sum().backward()
    assert first.fp.weight.grad is not None
    first.freeze()
    assert int(first.w_int.abs().max()) == 63
