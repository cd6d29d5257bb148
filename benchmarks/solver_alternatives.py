"""The plans the guard solves for, on saved quadratic profiles: one JSON line per model, budget and
plan (the optimum and three alternatives, as guarded_solve asks for them), with its Ω, status,
size and whether it keeps the limits and exclusions. Run it at two commits and compare the Ω of
equal positions: a solver that reports "Optimal" must never be beaten by a plan that keeps the
same limits and exclusions.

    python benchmarks/solver_alternatives.py [--profiles out/quality] > alternatives.jsonl

The profiles are those quality.py writes (`{model}_perturbed_cross_profile.json`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quality import BUDGETS, SPEC, budget_bytes  # noqa: E402

from hawq.sensitivity import Profile  # noqa: E402
from hawq.solver import Budget, alternatives  # noqa: E402

MODELS = ("resnet20", "vit_fashion", "mobilenetv2_fashion")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="out/quality", help="folder of the saved cross-term profiles")
    a = ap.parse_args()
    for name in MODELS:
        prof = Profile.load(Path(a.profiles) / f"{name}_perturbed_cross_profile.json")
        params = {l.name: l.params for l in prof.layers}
        total = sum(params.values())
        for bits in BUDGETS:
            limit = budget_bytes(prof, bits) * 8
            t0 = time.perf_counter()
            plans = alternatives(prof, Budget(megabytes=budget_bytes(prof, bits) / 1e6), SPEC, count=3, min_change=0.1)
            seconds = time.perf_counter() - t0
            for i, p in enumerate(plans):
                wa = p.assignment()
                keeps = sum(params[n] * w[0] for n, w in wa.items()) <= limit + 8 and all(
                    sum(params[n] for n in wa if wa[n] != q.assignment()[n]) >= math.ceil(0.1 * total) for q in plans[:i])
                print(json.dumps({"model": name, "budget_bits": round(bits, 3), "plan": i, "omega": p.omega,
                                  "status": p.status, "weight_bytes": p.weight_bytes, "keeps_limits": keeps,
                                  "widths": {n: list(w) for n, w in wa.items()}, "seconds_all": round(seconds, 2)}),
                      flush=True)


if __name__ == "__main__":
    main()
