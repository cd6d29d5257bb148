"""The measured-loss guard: a planted misleading profile, the candidates it measures, its record."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hawq.errors import ConfigError, DataError
from hawq.guard import GuardCache, guard, guarded_solve, quantize_plan, split_calibration
from hawq.rewrite import quant_layers, quantize
from hawq.sensitivity import LayerProfile, Profile
from hawq.solver import Budget, Plan, SolveSpec, solve, uniform_plan

BITS = (2, 3, 4, 8)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 4))
    with torch.no_grad():
        m[4].weight.mul_(6.0)  # confident logits, so quantization error shows in the loss
    return m.eval()


def batches(model: nn.Module, n: int = 4, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.randn(size, 16, generator=g)
        with torch.no_grad():
            out.append((x, model(x).argmax(1)))
    return out


def planted_profile(model: nn.Module) -> Profile:
    """Ω that calls the big middle layer insensitive (0 at every width): a misleading profile."""
    layers = []
    for name in ("0", "2", "4"):
        w = model.get_submodule(name).weight
        sens = 0.0 if name == "2" else 1.0
        om = {b: sens * 4.0 ** -b for b in BITS}
        layers.append(LayerProfile(name=name, kind="Linear", weight_shape=tuple(w.shape), params=w.numel(),
                                   macs=w.numel(), trace=sens, trace_se=0.0, probes=1, sq_error=dict(om), omega=om))
    return Profile(layers=tuple(layers), bits=BITS, fingerprints={"weights": "planted"})


def test_guard_picks_uniform_when_the_hessian_plan_is_planted_to_be_worse(tmp_path):
    model = mlp()
    data = batches(model)
    prof = planted_profile(model)
    budget = Budget(megabytes=uniform_plan(prof, 4, spec=SolveSpec(pins={})).weight_bytes / 1e6)
    hessian = solve(prof, budget, spec=SolveSpec(bits=(2, 4, 8), pins={}))
    assert hessian.assignment()["2"] == (2, 8)  # the big layer at 2 bits buys 8 bits elsewhere
    cache = GuardCache()
    plan = guarded_solve(prof, budget, spec=SolveSpec(bits=(2, 4, 8), pins={}), model=model, data=data, count=0, cache=cache)
    g = plan.guard
    loss = {c["label"]: c["calibration_loss"] for c in g["candidates"]}
    assert set(loss) == {hessian.label, "uniform-w2", "uniform-w3", "uniform-w4"}
    assert g["chosen"] == plan.label == "uniform-w4" and plan.status == "Uniform"
    assert loss["uniform-w4"] < loss[hessian.label]
    assert g["held_out_samples"] == 128 and g["calibration_samples"] == 128
    # the record survives plan.json, and the guarded plan meets the budget
    back = Plan.load(plan.save(tmp_path / "plan.json"))
    assert back.guard == json.loads(json.dumps(g)) and back.assignment() == plan.assignment()
    for c in json.loads((tmp_path / "plan.json").read_text())["guard"]["candidates"]:
        assert {"label", "predicted_omega", "calibration_loss"} <= set(c)
    assert plan.weight_bytes <= budget.megabytes * 1e6
    # with alternatives to the optimum, the choice is still never worse than any uniform plan
    more = guarded_solve(prof, budget, spec=SolveSpec(bits=(2, 4, 8), pins={}), model=model, data=data, count=2, cache=cache)
    loss2 = {c["label"]: c["calibration_loss"] for c in more.guard["candidates"]}
    assert len(loss2) >= 5 and loss2[more.guard["chosen"]] == min(loss2.values())
    assert loss2[more.guard["chosen"]] <= min(v for k, v in loss2.items() if k.startswith("uniform"))


def test_guard_keeps_the_hessian_plan_when_it_measures_best():
    model = mlp()
    data = batches(model)
    prof = planted_profile(model)
    u4 = uniform_plan(prof, 4, spec=SolveSpec(pins={}))
    good = solve(prof, Budget(megabytes=u4.weight_bytes / 1e6), spec=SolveSpec(bits=(4, 8), pins={"2": 4}))
    plan = guard(model, [good, u4, uniform_plan(prof, 2, spec=SolveSpec(pins={}))], data)
    assert plan.guard["chosen"] == good.label  # 8-bit small layers, 4-bit big one: better than uniform 4
    assert plan.assignment() == good.assignment()
    with pytest.raises(ConfigError, match="at least one"):
        guard(model, [], data)


def test_cached_quantization_equals_rewrite_quantize():
    """The cache keeps weight quantization only: layers cached on other data give rewrite.quantize's
    model once the activations are calibrated on the data given."""
    model = mlp()
    data = batches(model, n=3)
    prof = planted_profile(model)
    plan = solve(prof, Budget(avg_bits=4), spec=SolveSpec(bits=(2, 4, 8), pins={}))
    cache = GuardCache()
    quantize_plan(model, plan, data[:1], cache)  # every pair of the plan cached on one batch
    uniform_plan_q = quantize_plan(model, uniform_plan(prof, 4, spec=SolveSpec(pins={})), data, cache)
    q = quantize_plan(model, plan, data, cache)
    ref = quantize(model, plan, data)
    x = torch.randn(32, 16)
    assert torch.equal(q(x), ref(x)) and not torch.equal(q(x), uniform_plan_q(x))
    assert set(cache.pairs) == {(4, 8)} | set(plan.assignment().values())


def test_split_calibration():
    x, y = torch.randn(10, 3), torch.arange(10)
    cal, held, really = split_calibration([(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])], 0.3)
    assert really and [len(b[1]) for b in cal] == [4, 3] and [len(b[1]) for b in held] == [3]
    assert torch.equal(torch.cat([b[1] for b in cal + held]), y)
    one = split_calibration([(x[:1], y[:1])])
    assert one[2] is False and torch.equal(one[0][0][0], one[1][0][0])
    with pytest.raises(DataError, match="labelled"):
        split_calibration([x])
    with pytest.raises(DataError, match="empty"):
        split_calibration([])
    with pytest.raises(ConfigError, match="holdout"):
        split_calibration([(x, y)], 1.0)


def test_weight_only_plans_solve_guard_and_quantize():
    """a_bits=32 (WEIGHT_ONLY, inputs left in float) is a candidate the solver, the guard and
    quantize all take; mixed with 8-bit inputs it needs no activation sensitivity for 32."""
    model = mlp()
    data = batches(model)
    prof = planted_profile(model)
    budget = Budget(megabytes=uniform_plan(prof, 4, spec=SolveSpec(pins={})).weight_bytes / 1e6)
    spec = SolveSpec(bits=(2, 4, 8), a_bits=32, pins={})
    plan = guarded_solve(prof, budget, spec, model=model, data=data, count=1, cache=GuardCache())
    assert {a for _, a in plan.assignment().values()} == {32}
    assert {c["label"] for c in plan.guard["candidates"]} >= {"uniform-w4a32", "uniform-w2a32"}
    q = quantize(model, plan, data)
    assert all(m.weight_only for m in quant_layers(q).values())
    both = solve(prof, budget, SolveSpec(bits=(2, 4, 8), a_bits=(8, 32), pins={},
                                         act_omega={n: {8: 1.0} for n in ("0", "2", "4")}))
    assert {a for _, a in both.assignment().values()} == {32}  # Ω_a(32) = 0 < Ω_a(8): float inputs win
