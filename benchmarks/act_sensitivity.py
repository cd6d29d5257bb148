"""Does the activation Ω predict what quantizing a layer's input costs? Measured on the demo model.

    python benchmarks/act_sensitivity.py [--a-bits 4] [--out out/act_sensitivity] [--threads 1]

Profiles the embedded ResNet-20 with activation traces (`hawq.profile(..., a_bits=(a, 8))` on the
demo recipe's calibration batches; cached in --out), then, for each layer alone, quantizes that
layer's input to `a` bits with every weight and every other input at 8 bits, and measures the
mean cross-entropy on the same 1,000 calibration images against all-W8A8. One JSON line per layer:
    {"layer", "predicted": Ω_a(a) − Ω_a(8), "measured": loss change, "act_trace", "act_trace_se"}
and a last line {"summary": {"spearman": rank correlation, "top": the layers ranked first by
each}}.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from torch.nn import functional as F

import hawq
from hawq.batches import evaluate
from hawq.guard import GuardCache, quantize_plan
from hawq.solver import SolveSpec, fixed_plan


def ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0] * len(values)
    for r, i in enumerate(order):
        out[i] = r
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a-bits", type=int, default=4, help="the input width tested on each layer alone")
    p.add_argument("--out", default="out/act_sensitivity")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = hawq.default_recipe()
    model = hawq.load_model(recipe)
    batches, _ = hawq.load_data(recipe)
    prof = hawq.profile(model, F.cross_entropy, batches, recipe.profile_bits, rel_tol=recipe.rel_tol,
                        max_probes=recipe.max_probes, seed=recipe.seed, a_bits=(a.a_bits, 8),
                        cache=out / "profile.json")
    cache = GuardCache()

    def loss(assignment: dict) -> float:
        plan = fixed_plan(prof, assignment, spec=SolveSpec(pins={}, bits=(8,)), label="probe")
        return evaluate(quantize_plan(model, plan, batches, cache), batches)[1]

    base = loss({n: (8, 8) for n in prof.names})
    rows = []
    for layer in prof.layers:
        measured = loss({n: (8, a.a_bits) if n == layer.name else (8, 8) for n in prof.names}) - base
        row = {"layer": layer.name, "predicted": layer.act_omega[a.a_bits] - layer.act_omega[8], "measured": measured,
               "act_trace": layer.act_trace, "act_trace_se": layer.act_trace_se}
        rows.append(row)
        print(json.dumps(row), flush=True)
    pred, meas = [r["predicted"] for r in rows], [r["measured"] for r in rows]
    top = lambda v: [rows[i]["layer"] for i in sorted(range(len(v)), key=v.__getitem__, reverse=True)[:3]]  # noqa: E731
    print(json.dumps({"summary": {"spearman": round(statistics.correlation(ranks(pred), ranks(meas)), 3),
                                  "top_predicted": top(pred), "top_measured": top(meas), "base_loss": base,
                                  "a_bits": a.a_bits}}))


if __name__ == "__main__":
    main()
