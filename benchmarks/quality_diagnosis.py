"""Why the Hessian plan loses on a model of the quality benchmark, from its cached sensitivities.

    python benchmarks/quality_diagnosis.py [--model mobilenetv2_fashion] [--bits 4,8] [--out out/quality]

Needs `python benchmarks/quality.py --models MODEL` run first (it caches MODEL_profile.json,
MODEL_deltas.json and MODEL_eig.json in --out). Prints one JSON line per layer whose trace is not
positive ({"layer", "trace", "trace_se", "eig_per_weight", "delta_2bit"}), then, for each size
(uniform-equivalent bits, as quality.py), the ILP-only plan's layers below 8 bits and the sum of the
measured single-layer loss deltas (quality.py's AIMET-style sensitivities) over the ILP plan and
over uniform at that width.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import hawq
from hawq.solver import SolveSpec, uniform_plan

from quality import CANDIDATES, budget_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenetv2_fashion")
    p.add_argument("--bits", default="4,8", help="uniform-equivalent sizes, comma-separated")
    p.add_argument("--out", default="out/quality")
    a = p.parse_args()
    out = Path(a.out)
    prof = hawq.Profile.load(out / f"{a.model}_profile.json")
    deltas = json.loads((out / f"{a.model}_deltas.json").read_text())
    eig = json.loads((out / f"{a.model}_eig.json").read_text())
    for l in prof.layers:
        if l.trace <= 0:
            print(json.dumps({"layer": l.name, "trace": l.trace, "trace_se": l.trace_se, "eig_per_weight": eig[l.name],
                              "delta_2bit": deltas.get(l.name, {}).get("2")}))
    for bits in (float(b) for b in a.bits.split(",")):
        plan = hawq.solve(prof, hawq.Budget(megabytes=budget_bytes(prof, bits) / 1e6), spec=SolveSpec(bits=CANDIDATES))
        wa = plan.assignment()
        uni = uniform_plan(prof, int(bits)).assignment()
        print(json.dumps({
            "budget_bits": bits, "below_8_bits": {n: w for n, (w, _) in wa.items() if w < 8},
            "sum_deltas_ilp": sum(d[str(wa[n][0])] for n, d in deltas.items()),
            "sum_deltas_uniform": sum(d[str(uni[n][0])] for n, d in deltas.items())}))


if __name__ == "__main__":
    main()
