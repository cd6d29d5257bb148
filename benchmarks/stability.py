"""Does the plan depend on the profile's random seed? Accuracy of hawq's plans over profile seeds.

    python benchmarks/stability.py                               # ResNet-20, default sensitivity
    python benchmarks/stability.py --models resnet20,mobilenetv2_fashion --sensitivity trace

For each model and seed, profiles the model (the quality benchmark's settings: widths 2/3/4/8,
64 probes at most for the trace model), then at each of the quality benchmark's weight budgets
solves the ILP alone (`hawq_noguard`) and with the measured-loss guard (`hawq`), and evaluates
both plans on the 9,000 evaluation images. Prints one JSON line per model, sensitivity, budget,
method and seed (`kind: "seed"`), then per model, sensitivity, budget and method the standard
deviation of the accuracy over the seeds in points (`sigma_points`), the mean, and how many
distinct plans the seeds gave. Profiles are kept in OUT and reused by a rerun.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

from hawq import data as D
from hawq.batches import evaluate
from hawq.guard import GuardCache, guarded_solve, quantize_plan
from hawq.models import load_embedded
from hawq.sensitivity import DEFAULT_SENSITIVITY, SENSITIVITIES, profile
from hawq.solver import Budget, SolveSpec, solve
from quality import BUDGETS, CANDIDATES, MODELS, PROFILE_BITS, budget_bytes


def run(name: str, sensitivity: str, seeds: list[int], out: Path) -> list[dict]:
    model = load_embedded(name)
    cal, ev = D.calibration_and_eval()
    batches = list(D.loader(cal, 200))
    qcache, gcache, accuracy = GuardCache(), GuardCache(), {}

    def acc(plan) -> float:
        key = tuple(sorted(plan.assignment().items()))
        if key not in accuracy:
            accuracy[key] = evaluate(quantize_plan(model, plan, batches, qcache), ev)[0]
        return accuracy[key]

    rows = []
    for seed in seeds:
        prof = profile(model, F.cross_entropy, batches, PROFILE_BITS, rel_tol=0.05, max_probes=64, seed=seed,
                       sensitivity=sensitivity, cache=out / f"{name}_{sensitivity}_seed{seed}.json")
        for bits in BUDGETS:
            budget = Budget(megabytes=budget_bytes(prof, bits) / 1e6)
            plans = {"hawq_noguard": solve(prof, budget, spec=SolveSpec(bits=CANDIDATES)),
                     "hawq": guarded_solve(prof, budget, spec=SolveSpec(bits=CANDIDATES), model=model, data=batches, cache=gcache)}
            for method, plan in plans.items():
                row = {"kind": "seed", "model": name, "sensitivity": sensitivity, "budget_bits": round(bits, 3),
                       "method": method, "seed": seed, "accuracy": acc(plan),
                       "plan": sorted(plan.assignment().items())}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "plan"}), flush=True)
    summary = []
    for bits in BUDGETS:
        for method in ("hawq_noguard", "hawq"):
            got = [r for r in rows if r["budget_bits"] == round(bits, 3) and r["method"] == method]
            accs = [100 * r["accuracy"] for r in got]
            summary.append({"model": name, "sensitivity": sensitivity, "budget_bits": round(bits, 3), "method": method,
                            "seeds": len(got), "sigma_points": statistics.pstdev(accs),
                            "mean_accuracy": statistics.fmean(accs) / 100,
                            "distinct_plans": len({json.dumps(r["plan"]) for r in got})})
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet20", help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--sensitivity", default=DEFAULT_SENSITIVITY, choices=SENSITIVITIES)
    p.add_argument("--seeds", default="0,1,2", help="profile seeds (default 0,1,2)")
    p.add_argument("--out", default="out/stability", help="profiles and stability.jsonl")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    names = a.models.split(",")
    bad = [n for n in names if n not in MODELS]
    if bad:
        sys.exit(f"unknown model {bad[0]!r}; choose from {', '.join(MODELS)}")
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        sys.exit(f"--seeds must be comma-separated integers, not {a.seeds!r}")
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        for row in run(name, a.sensitivity, seeds, out):
            print(json.dumps(row), flush=True)
            with (out / "stability.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
