"""Per-layer Hutchinson traces against exact Hessians of tiny models."""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hawq.errors import NumericalError
from hawq.hessian import activation_traces, hutchinson_traces


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(1, 3, 3), nn.Conv2d(3, 2, 3, padding=1), nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        x = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return self.fc(x.flatten(1))


def exact_traces(model, batches):
    """Tr of each layer's diagonal block of the Hessian of the mean batch loss, by autograd."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    mods = dict(model.named_modules())
    shapes = [mods[n].weight.shape for n in names]
    sizes = [mods[n].weight.numel() for n in names]
    flat0 = torch.cat([mods[n].weight.detach().flatten() for n in names])
    total = {n: 0.0 for n in names}
    for x, y in batches:
        def loss_of(flat):
            ws = dict(zip(names, torch.split(flat, sizes)))
            params = {f"{n}.weight": ws[n].reshape(s) for n, s in zip(names, shapes)}
            return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)
        h = torch.autograd.functional.hessian(loss_of, flat0)
        start = 0
        for n, k in zip(names, sizes):
            total[n] += float(torch.diagonal(h[start:start + k, start:start + k]).sum()) / len(batches)
            start += k
    return total


def estimate(model, batches, probes, seed):
    weights = {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    return hutchinson_traces(model, F.cross_entropy, batches, weights, rel_tol=0.0, max_probes=probes,
                             min_probes=probes, seed=seed)


@pytest.mark.parametrize("make,shape", [(MLP, (16, 6)), (CNN, (8, 1, 6, 6))])
def test_traces_match_exact_hessian(make, shape):
    torch.manual_seed(1)
    model = make().double().eval()
    batches = [(torch.randn(*shape, dtype=torch.float64), torch.randint(0, 3, (shape[0],))) for _ in range(3)]
    exact = exact_traces(model, batches)
    res = estimate(model, batches, probes=300, seed=0)
    for name, true in exact.items():
        est = res.layers[name]
        assert est.n == 300
        assert abs(est.mean - true) <= 3 * est.se, (name, est, true)
        assert est.se < 0.5 * abs(true) + 1e-9  # the estimate is informative, not just wide


def exact_activation_traces(model, batches):
    """Tr of the Hessian of the mean batch loss w.r.t. each layer's input, by autograd."""
    mods = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    total = {n: 0.0 for n in mods}
    for x, y in batches:
        shapes = {}
        hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: shapes.setdefault(n, inp[0].shape) and None)
                 for n, m in mods.items()]
        model(x)
        for h in hooks:
            h.remove()
        for n, m in mods.items():
            def loss_of(d, m=m, shape=shapes[n]):
                h = m.register_forward_pre_hook(lambda mod, inp: (inp[0] + d.reshape(shape),))
                try:
                    return F.cross_entropy(model(x), y)
                finally:
                    h.remove()
            zero = torch.zeros(math.prod(shapes[n]), dtype=torch.float64)
            total[n] += float(torch.diagonal(torch.autograd.functional.hessian(loss_of, zero)).sum()) / len(batches)
    return total


@pytest.mark.parametrize("engine", ["double_backward", "double_backward_batched"])
@pytest.mark.parametrize("make,shape", [(MLP, (16, 6)), (CNN, (8, 1, 6, 6))])
def test_activation_traces_match_exact_hessian(make, shape, engine):
    torch.manual_seed(4)
    model = make().double().eval()
    batches = [(torch.randn(*shape, dtype=torch.float64), torch.randint(0, 3, (shape[0],))) for _ in range(3)]
    batches[-1] = (batches[-1][0][:5], batches[-1][1][:5])  # a short last batch
    exact = exact_activation_traces(model, batches)
    in_shapes = {"fc1": (6,), "fc2": (5,), "fc3": (4,)} if make is MLP else \
        {"conv1": (1, 6, 6), "conv2": (3, 4, 4), "fc": (32,)}
    res = activation_traces(model, F.cross_entropy, batches, in_shapes, rel_tol=0.0, max_probes=300, min_probes=300,
                            engine=engine, probes_per_batch=2)
    for name, true in exact.items():
        est = res.layers[name]
        assert abs(est.mean - true) <= 3 * est.se, (name, est, true)
        assert est.se < 0.1 * max(map(abs, exact.values())), (name, est, exact)  # informative, not just wide
    assert not any(h for m in model.modules() for h in m._forward_pre_hooks.values())  # taps removed


def test_interval_coverage_over_seeds():
    """The 95% interval covers the exact per-layer trace in most seeds."""
    torch.manual_seed(2)
    model = MLP().double().eval()
    batches = [(torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,)))]
    exact = exact_traces(model, batches)
    hits = total = 0
    for seed in range(40):
        res = estimate(model, batches, probes=40, seed=seed)
        for name, true in exact.items():
            e = res.layers[name]
            hits += abs(e.mean - true) <= 1.96 * e.se
            total += 1
    assert 0.85 <= hits / total <= 1.0, hits / total


def test_stops_early_when_converged_and_reports_unconverged():
    torch.manual_seed(3)
    model = MLP().double().eval()
    batches = [(torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,)))]
    weights = {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    loose = hutchinson_traces(model, F.cross_entropy, batches, weights, rel_tol=0.5, max_probes=500, min_probes=4)
    assert loose.probes < 500 and loose.unconverged == ()
    tight = hutchinson_traces(model, F.cross_entropy, batches, weights, rel_tol=1e-6, max_probes=6, min_probes=2)
    assert tight.probes == 6 and len(tight.unconverged) > 0


def test_same_seed_same_result_and_model_unchanged():
    model = MLP().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(8, 6), torch.randint(0, 3, (8,)))]
    a = estimate(model, batches, 10, seed=5)
    b = estimate(model, batches, 10, seed=5)
    assert a.layers == b.layers
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nan_loss_is_a_clear_error():
    model = MLP().eval()
    x = torch.full((4, 6), float("nan"))
    with pytest.raises(NumericalError, match="loss is nan"):
        estimate(model, [(x, torch.zeros(4, dtype=torch.long))], 4, seed=0)


def test_top_eigenvalues_match_exact_blocks():
    from hawq.hessian import top_eigenvalues
    torch.manual_seed(4)
    model = MLP().double().eval()
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
    names = ["fc1", "fc2", "fc3"]
    mods = dict(model.named_modules())
    sizes = [mods[n].weight.numel() for n in names]
    flat0 = torch.cat([mods[n].weight.detach().flatten() for n in names])

    def loss_of(flat):
        ws = dict(zip(names, torch.split(flat, sizes)))
        return F.cross_entropy(torch.func.functional_call(model, {f"{n}.weight": ws[n].reshape(mods[n].weight.shape)
                                                                   for n in names}, (x,)), y)
    h = torch.autograd.functional.hessian(loss_of, flat0)
    for chunk in (None, 1, 2):  # all layers at once when memory allows, or a few at a time
        got = top_eigenvalues(model, F.cross_entropy, (x, y), {n: mods[n].weight for n in names}, iters=500,
                              tol=1e-10, chunk=chunk)
        start = 0
        for n, k in zip(names, sizes):
            ev = torch.linalg.eigvalsh(h[start:start + k, start:start + k])
            start += k
            top = ev[ev.abs().argmax()]
            assert got[n] == pytest.approx(float(top), rel=1e-3), (n, chunk)
