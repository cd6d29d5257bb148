"""The second-order model of the actual rounding against exact answers."""
import itertools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hawq import quant
from hawq.errors import ConfigError
from hawq.perturbation import output_error_scores, perturbation_terms, perturbed_losses


class TwoBranch(nn.Module):
    """y = A x + B x: the MSE loss is exactly quadratic in (A, B) jointly, with cross terms."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 3, bias=False)

    def forward(self, x):
        return self.a(x) + self.b(x)


def _data(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8 + i, 6, generator=g), torch.randn(8 + i, 3, generator=g)) for i in range(n)]


def _loss_with(model, batches, weights=None):
    total = sum(len(y) for _, y in batches)
    with torch.no_grad():
        saved = {n: m.weight.clone() for n, m in [("a", model.a), ("b", model.b)]}
        for n, w in (weights or {}).items():
            getattr(model, n).weight.copy_(w)
        out = sum(len(y) / total * float(F.mse_loss(model(x), y)) for x, y in batches)
        for n, w in saved.items():
            getattr(model, n).weight.copy_(w)
    return out


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])  # a network linear in its weights: GGN = Hessian
def test_the_quadratic_model_is_exact_for_a_quadratic_loss(curvature):
    torch.manual_seed(0)
    model, batches, bits = TwoBranch().eval(), _data(), (2, 3, 8)
    p = perturbation_terms(model, F.mse_loss, batches, {"a": model.a, "b": model.b}, bits, chunk=4, curvature=curvature)
    base = _loss_with(model, batches)
    for wa, wb in itertools.product(bits, bits):
        q = {n: quant.fake_quant_weight(getattr(model, n).weight.detach(), w, "mse")[0] for n, w in (("a", wa), ("b", wb))}
        assert p.predict({"a": wa, "b": wb}) == pytest.approx(_loss_with(model, batches, q) - base, rel=1e-4, abs=1e-7)
    # the additive model drops exactly the cross terms, which this model has
    assert p.predict({"a": 2, "b": 2}, cross=False) != pytest.approx(p.predict({"a": 2, "b": 2}), rel=1e-3)


def test_terms_match_the_exact_hessian_of_a_small_network():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).eval()
    batches = [(torch.randn(7, 4), torch.randint(0, 3, (7,))), (torch.randn(5, 4), torch.randint(0, 3, (5,)))]
    bits = (2, 4)
    p = perturbation_terms(model, F.cross_entropy, batches, {"0": model[0], "2": model[2]}, bits, chunk=3,
                           curvature="hessian")
    ggn = perturbation_terms(model, F.cross_entropy, batches, {"0": model[0], "2": model[2]}, bits, curvature="ggn")
    w0, w2 = model[0].weight.detach(), model[2].weight.detach()
    n0 = w0.numel()

    def loss(flat):
        total, out = 12, 0.0
        for x, y in batches:
            h = torch.tanh(x.double() @ flat[:n0].view_as(w0).T + model[0].bias.double())
            out = out + len(y) / total * F.cross_entropy(h @ flat[n0:].view_as(w2).T + model[2].bias.double(), y)
        return out

    flat = torch.cat([w0.flatten(), w2.flatten()]).double().requires_grad_(True)
    H = torch.autograd.functional.hessian(loss, flat)
    g = torch.autograd.grad(loss(flat), flat)[0]
    dirs = []
    for w, off in ((w0, 0), (w2, n0)):
        for b in bits:
            d = torch.zeros_like(flat, requires_grad=False)
            d[off:off + w.numel()] = (quant.fake_quant_weight(w, b, "mse")[0] - w).flatten().double()
            dirs.append(d)
    D = torch.stack(dirs)
    assert torch.allclose(p.linear, D @ g.detach(), rtol=1e-4, atol=1e-9)
    assert torch.allclose(p.curvature, D @ H @ D.T, rtol=1e-4, atol=1e-9)

    def logits(flat):
        return torch.cat([torch.tanh(x.double() @ flat[:n0].view_as(w0).T + model[0].bias.double())
                          @ flat[n0:].view_as(w2).T + model[2].bias.double() for x, _ in batches])

    Jz = torch.autograd.functional.jacobian(logits, flat.detach()).flatten(0, 1)  # [N·C, P]
    p_ = torch.softmax(logits(flat.detach()), 1)
    Hz = torch.block_diag(*[(torch.diag(q) - torch.outer(q, q)) / 12 for q in p_])  # mean CE over 12 samples
    assert torch.allclose(ggn.curvature, D @ Jz.T @ Hz @ Jz @ D.T, rtol=1e-4, atol=1e-9)
    assert torch.allclose(ggn.linear, p.linear)


def test_bad_calls_say_so():
    model = TwoBranch()
    with pytest.raises(ConfigError, match="scalar"):
        perturbation_terms(model, lambda o, y: F.mse_loss(o, y, reduction="none"), _data(1), {"a": model.a}, (4,))
    with pytest.raises(ConfigError, match="curvature"):
        perturbation_terms(model, F.mse_loss, _data(1), {"a": model.a}, (4,), curvature="fisher")
    with pytest.raises(ConfigError, match="at least one layer"):
        perturbation_terms(model, F.mse_loss, _data(1), {}, (4,))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, stride=2)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _images(seed=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6 + i, 2, 6, 6, generator=g), torch.randint(0, 3, (6 + i,), generator=g)) for i in range(2)]


def test_perturbed_losses_are_the_loss_with_one_layer_rounded():
    torch.manual_seed(3)
    model, batches = ConvNet().eval(), _images()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = perturbed_losses(model, F.cross_entropy, batches, {"conv": model.conv, "fc": model.fc}, (2, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights restored
    total = sum(len(y) for _, y in batches)

    def loss(m):
        with torch.no_grad():
            return sum(float(F.cross_entropy(m(x), y)) * len(y) / total for x, y in batches)

    for name in ("conv", "fc"):
        for b in (2, 8):
            q = ConvNet().eval()
            q.load_state_dict(before)
            w = getattr(q, name).weight
            with torch.no_grad():
                w.copy_(quant.fake_quant_weight(w, b, "mse")[0])
            assert got[name][b] == pytest.approx(loss(q) - loss(model), rel=1e-5, abs=1e-8)
    assert got["conv"][2] > got["conv"][8]


def test_output_error_scores_match_the_definition():
    torch.manual_seed(4)
    model, batches = ConvNet().eval(), _images()
    for p_ in model.parameters():
        p_.requires_grad_(False)  # a frozen model still scores, and stays frozen
    got = output_error_scores(model, F.cross_entropy, batches, {"conv": model.conv, "fc": model.fc}, (2, 4))
    assert not any(p_.requires_grad for p_ in model.parameters())
    want = {n: {b: 0.0 for b in (2, 4)} for n in ("conv", "fc")}
    for x, y in batches:
        h = model.conv(x).requires_grad_(True)
        hin = torch.relu(h).flatten(1).detach().requires_grad_(True)
        z = model.fc(hin)
        g_fc = torch.autograd.grad(F.cross_entropy(z, y), z)[0]
        g_conv = torch.autograd.grad(F.cross_entropy(model.fc(torch.relu(h).flatten(1)), y), h)[0]
        for b in (2, 4):
            wq = quant.fake_quant_weight(model.conv.weight, b, "mse")[0]
            yq = F.conv2d(x, wq, model.conv.bias, 2, 1)
            want["conv"][b] += float(((g_conv * (yq - model.conv(x))) ** 2).sum())
            fq = quant.fake_quant_weight(model.fc.weight, b, "mse")[0]
            want["fc"][b] += float(((g_fc * (F.linear(hin, fq, model.fc.bias) - model.fc(hin))) ** 2).sum().detach())
    for n in want:
        for b in want[n]:
            assert got[n][b] == pytest.approx(want[n][b], rel=1e-4)
    assert got["fc"][2] > got["fc"][4] > 0
