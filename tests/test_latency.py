"""The measured latency table: one layer timed in ONNX Runtime, cached by key, fed to the solver."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hawq.errors import ArtifactError, ConfigError
from hawq.latency import LatencyTable, measure_latency
from hawq.sensitivity import LayerProfile, Profile
from hawq.solver import Budget, SolveSpec, solve


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16)).eval()
    path = tmp_path_factory.mktemp("lat") / "latency.json"
    table = measure_latency(model, torch.randn(8, 32), [(4, 8)], repeats=3, warmup=1, cache=path)
    return model, path, table


def test_table_measured_cached_and_keyed(measured):
    model, path, table = measured
    assert set(table.ms) == {"0"} and set(table.ms["0"]) == {(4, 8)} and table.ms["0"][(4, 8)] > 0
    assert table.key["runtime"].startswith("onnxruntime") and table.key["candidates"] == ["W4A8"]
    again = measure_latency(model, torch.randn(8, 32), [(4, 8)], repeats=3, warmup=1, cache=path)
    assert again == table  # same machine, runtime, model and settings: the cached table
    assert LatencyTable.load(path) == table
    with pytest.raises(ConfigError, match="repeats"):
        measure_latency(model, torch.randn(8, 32), [(8, 8)], repeats=0)


def test_solver_takes_the_table_and_rejects_a_mismatched_one(measured, tmp_path):
    table = LatencyTable(measured[2].key, {"0": {(4, 8): 0.02, (8, 8): 0.015}})  # 8-bit kernels faster
    om = {2: 1.0, 4: 0.1, 8: 0.01}
    prof = Profile(layers=(LayerProfile("0", "Linear", (16, 32), 512, 512, 1.0, 0.0, 1, dict(om), om),),
                   bits=(2, 4, 8))
    fastest = min(table.ms["0"].values())
    plan = solve(prof, Budget(latency_ms=fastest), spec=SolveSpec(bits=(4, 8), pins={}, latency=table.ms))
    assert plan.constraints["latency_ms"]["value"] == fastest
    assert plan.assignment()["0"] == min(table.ms["0"], key=table.ms["0"].get)
    with pytest.raises(ConfigError, match="no row for layer 0"):
        solve(prof, Budget(latency_ms=1.0), spec=SolveSpec(bits=(4, 8), pins={}, latency={"other": table.ms["0"]}))
    with pytest.raises(ConfigError, match="W2A8"):
        solve(prof, Budget(latency_ms=1.0), spec=SolveSpec(bits=(2, 4, 8), pins={}, latency=table.ms))
    bad = table.to_dict()
    bad["ms"]["0"]["W4A8"] = -1.0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="measure it again"):
        LatencyTable.load(tmp_path / "bad.json")
