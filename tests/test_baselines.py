"""The comparison allocators: exact answers on tiny problems, and fixed plans' bookkeeping."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hawq.baselines import (eigen_sensitivity, greedy_plan, hessian_sensitivity, inverted_sensitivity,
                            measured_deltas, output_error_sensitivity, random_sensitivity, resensitized,
                            with_omegas)
from hawq.errors import ConfigError, InfeasibleBudgetError
from hawq.guard import GuardCache, quantize_plan
from hawq.batches import evaluate
from hawq.sensitivity import LayerProfile, Profile, profile
from hawq.solver import Budget, SolveSpec, fixed_plan, solve, uniform_plan

BITS = (2, 4, 8)


def toy_profile(traces: list[float], params: list[int]) -> Profile:
    layers = tuple(
        LayerProfile(name=f"l{i}", kind="Linear", weight_shape=(p,), params=p, macs=p, trace=t, trace_se=0.0, probes=1,
                     sq_error={b: p * 4.0 ** -b for b in BITS}, omega={b: max(t, 0) / p * p * 4.0 ** -b for b in BITS})
        for i, (t, p) in enumerate(zip(traces, params)))
    return Profile(layers=layers, bits=BITS, fingerprints={"weights": "toy"})


def test_hessian_sensitivity_reproduces_the_profile():
    prof = toy_profile([5.0, -1.0, 30.0, 2.0], [100, 200, 300, 400])
    again = resensitized(prof, hessian_sensitivity(prof))
    for a, b in zip(prof.layers, again.layers):
        assert a.omega == pytest.approx(b.omega, rel=1e-12)


def test_inverted_sensitivity_reverses_the_ranks():
    prof = toy_profile([1.0, 8.0, 3.0, 20.0], [100] * 4)  # s = trace/100
    inv = inverted_sensitivity(prof)
    assert inv == pytest.approx({"l3": 0.01, "l1": 0.03, "l2": 0.08, "l0": 0.20})
    # with widths 2 or 8 and room for half the layers at 8: hawq keeps l3, l1 wide; inverted keeps l0, l2
    budget = Budget(avg_bits=5)
    hawq = solve(prof, budget, spec=SolveSpec(pins={}, bits=(2, 8))).assignment()
    inverted = solve(resensitized(prof, inv), budget, spec=SolveSpec(pins={}, bits=(2, 8))).assignment()
    assert {n for n, (w, _) in hawq.items() if w == 8} == {"l1", "l3"}
    assert {n for n, (w, _) in inverted.items() if w == 8} == {"l0", "l2"}


def test_random_sensitivity_is_seeded():
    prof = toy_profile([1.0] * 6, [10] * 6)
    assert random_sensitivity(prof, 3) == random_sensitivity(prof, 3)
    assert random_sensitivity(prof, 3) != random_sensitivity(prof, 4)
    assert all(1e-3 <= v <= 1e3 for v in random_sensitivity(prof, 3).values())


def test_greedy_takes_the_cheapest_loss_per_bit_first():
    prof = toy_profile([1.0] * 3, [100, 100, 200])
    deltas = {"l0": {8: 0.0, 4: 0.01, 2: 0.50}, "l1": {8: 0.0, 4: 0.02, 2: 0.03}, "l2": {8: 0.0, 4: 0.10, 2: 0.40}}
    # per bit saved: l0 8→4 0.01/400, l1 8→4 0.02/400, l2 8→4 0.10/800; then l1 4→2 0.01/200 ...
    plan = greedy_plan(prof, deltas, Budget(megabytes=(100 * 4 + 100 * 4 + 200 * 8) / 8e6), spec=SolveSpec(bits=BITS, pins={}))
    assert {l.name: l.w_bits for l in plan.layers} == {"l0": 4, "l1": 4, "l2": 8}
    plan = greedy_plan(prof, deltas, Budget(megabytes=(100 * 4 + 100 * 2 + 200 * 4) / 8e6), spec=SolveSpec(bits=BITS, pins={}))
    assert {l.name: l.w_bits for l in plan.layers} == {"l0": 4, "l1": 2, "l2": 4}
    assert plan.status == "Fixed" and plan.constraints["weight_bytes"]["slack"] >= 0
    with pytest.raises(InfeasibleBudgetError, match="raise the budget"):
        greedy_plan(prof, deltas, Budget(megabytes=1e-6), spec=SolveSpec(bits=BITS, pins={}))


def test_greedy_keeps_pins():
    prof = toy_profile([1.0] * 3, [100, 100, 100])
    deltas = {"l1": {8: 0.0, 4: 0.1, 2: 0.2}}
    plan = greedy_plan(prof, deltas, Budget(avg_bits=6), spec=SolveSpec(bits=BITS))  # default pins: l0 and l2 at 8
    assert [l.w_bits for l in plan.layers] == [8, 2, 8] and plan.layers[0].pinned


def test_fixed_plan_matches_the_uniform_plan_and_rejects_what_pins_forbid():
    prof = toy_profile([1.0, 2.0, 3.0], [100, 200, 300])
    uni = uniform_plan(prof, 4)
    fixed = fixed_plan(prof, {l.name: w for l, w in zip(prof.layers, (8, 4, 8))}, label="x")
    assert (fixed.weight_bytes, fixed.avg_bits, fixed.omega) == (uni.weight_bytes, uni.avg_bits, pytest.approx(uni.omega))
    with pytest.raises(ConfigError, match="not allowed"):
        fixed_plan(prof, {"l0": 4, "l1": 4, "l2": 8}, label="x")
    with pytest.raises(ConfigError, match="no bit width"):
        fixed_plan(prof, {"l0": 8}, label="x")


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 3))
    with torch.no_grad():
        m[4].weight.mul_(6.0)  # confident logits, so quantization error shows in the loss
    return m.eval()


def tiny_data(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Inputs labelled by the model itself, so quantization error can only raise the loss."""
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return [(x, model(x).argmax(1))]


def test_eigen_sensitivity_matches_the_exact_hessian_blocks():
    model = tiny_model()
    data = tiny_data(model)
    prof = profile(model, F.cross_entropy, data, BITS, max_probes=4, min_probes=2)
    s = eigen_sensitivity(model, F.cross_entropy, data[0], prof, iters=300, tol=1e-9)
    x, y = data[0]
    for name in ("0", "2", "4"):
        w0 = model.get_submodule(name).weight.detach()

        def loss_of(w, name=name):
            return F.cross_entropy(torch.func.functional_call(model, {f"{name}.weight": w}, (x,)), y)

        h = torch.autograd.functional.hessian(loss_of, w0).reshape(w0.numel(), w0.numel())
        ev = torch.linalg.eigvalsh(h.double())
        top = float(ev[ev.abs().argmax()])
        assert s[name] == pytest.approx(max(top, 0.0) / w0.numel(), rel=1e-3)


def test_measured_deltas_are_single_layer_loss_changes():
    model = tiny_model()
    data = tiny_data(model)
    prof = profile(model, F.cross_entropy, data, BITS, max_probes=4, min_probes=2)
    cache = GuardCache()
    d = measured_deltas(model, prof, data, spec=SolveSpec(bits=BITS), cache=cache)
    assert set(d) == {"2"}  # first and last are pinned by default
    base = evaluate(quantize_plan(model, fixed_plan(prof, {"0": 8, "2": 8, "4": 8}, label="b"), data, cache), data)[1]
    at2 = evaluate(quantize_plan(model, fixed_plan(prof, {"0": 8, "2": 2, "4": 8}, label="c"), data, cache), data)[1]
    assert d["2"][8] == 0.0 and d["2"][2] == pytest.approx(at2 - base, abs=1e-7)
    assert d["2"][2] > d["2"][4]  # 2-bit weights hurt more than 4-bit ones


def test_with_omegas_replaces_the_table_and_the_ilp_follows_it():
    prof = toy_profile([1.0, 1.0], [100, 100])
    # l0 hurts at every width, l1 costs nothing: under a budget that forces one layer to 2 bits it is l1
    table = {"l0": {2: 5.0, 4: 1.0, 8: 0.0}, "l1": {2: -0.5, 4: 0.0, 8: 0.0}}
    p = with_omegas(prof, table)
    assert p.layers[0].omega == {2: 5.0, 4: 1.0, 8: 0.0} and p.layers[1].omega[2] == 0.0  # clamped at 0
    budget = Budget(megabytes=(100 * 8 + 100 * 2) / 8e6)
    plan = solve(p, budget, spec=SolveSpec(bits=BITS, pins={}))
    assert {n: wa[0] for n, wa in plan.assignment().items()} == {"l0": 8, "l1": 2}


def test_output_error_sensitivity_grows_as_widths_narrow():
    model = tiny_model()
    data = tiny_data(model)
    prof = profile(model, F.cross_entropy, data, BITS, max_probes=4, min_probes=2)
    s = output_error_sensitivity(model, F.cross_entropy, data, prof)
    assert set(s) == set(prof.names)
    for row in s.values():
        assert row[2] > row[4] > row[8] >= 0
