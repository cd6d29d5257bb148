"""Quality at a budget: hawq's plan against every other allocation a user could make, at the same size.

    python benchmarks/quality.py                       # the three embedded models, all budgets
    python benchmarks/quality.py --models resnet20     # one model

For the embedded ResNet-20, the MobileNetV2-style network and the small vision transformer (all
trained on Fashion-MNIST by `python -m hawq.train`), at weight budgets equal to uniform 8-, 4- and
3-bit weights, two points between 3 and 4 bits, and 2.5 bits (first and last layers at 8 bits in
every method; mixed methods choose among 2, 4 and 8 bits), prints one JSON line per model, budget and method:
`model, budget_bits, method, accuracy, calibration_loss, weight_bytes` (plus avg_bits, label).

Methods: fp32; uniform (between widths: the widest uniform plan that fits); hawq (the ILP on
`sensitivity="perturbed"`, each layer's measured Ω alone, with the measured-loss guard: hawq's
default, what `hawq run` does) and
hawq_noguard (the ILP optimum alone); hawq_cross and hawq_cross_noguard (the same two on the
quadratic model, `sensitivity="perturbed_cross"`: each layer's measured Ω plus every cross-layer
Gauss-Newton term, optimised exactly by the ILP); hawq_trace (the ILP alone on HAWQ-V2's trace model, `sensitivity="trace"`);
inverted (hawq's sensitivities dealt in reverse rank); grad_output_score (the same ILP on NVIDIA
ModelOpt auto_quantize's gradient-weighted output error); random_mean and random_best (5 plans
from random sensitivities, each filling the budget; best = highest evaluation accuracy, an
oracle pick); aimet_greedy (one layer quantized at a time, measured loss change, greedy);
hawq_v1_eig (top Hessian eigenvalue per layer instead of the trace). Accuracy is top-1 on the
9,000 evaluation images; calibration loss is the cross-entropy on the 1,000 calibration images
the quantizers were calibrated on.

Rows already in OUT/results.jsonl are not recomputed: an interrupted run resumes. The eigenvalue
rows come last, after every other method at every budget: their power iterations take longer
than the rest of the model's run. The seconds each
sensitivity took on this machine's threads go to OUT/cost.jsonl (`model, sensitivity, seconds,
threads`), once per computation.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.nn import functional as F

from hawq import data as D
from hawq.batches import evaluate
from hawq.baselines import (eigen_sensitivity, greedy_plan, inverted_sensitivity, measured_deltas,
                            output_error_sensitivity, random_sensitivity, resensitized, with_omegas)
from hawq.guard import GuardCache, guarded_solve, quantize_plan
from hawq.models import load_embedded
from hawq.sensitivity import DEFAULT_SENSITIVITY, SENSITIVITIES, profile
from hawq.solver import Budget, SolveSpec, solve, uniform_plan

MODELS = ("resnet20", "mobilenetv2_fashion", "vit_fashion")
PROFILE_BITS = (2, 3, 4, 8)
CANDIDATES = (2, 4, 8)
SPEC = SolveSpec(bits=CANDIDATES)  # what every allocation may choose (first and last layer at 8 bits)
BUDGETS = (8.0, 4.0, 3.0 + 2 / 3, 3.0 + 1 / 3, 3.0, 2.5)
CROSS = "perturbed_cross"


def budget_bytes(prof, bits: float) -> float:
    """Weight bytes of uniform `bits` (first/last at 8); between widths, interpolated linearly."""
    lo, hi = int(bits), -(-bits // 1)
    lo_b = uniform_plan(prof, lo).weight_bytes
    if lo == bits:
        return float(lo_b)
    return lo_b + (uniform_plan(prof, int(hi)).weight_bytes - lo_b) * (bits - lo)


def rows_done(path: Path) -> dict[tuple, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
                done[(r["model"], round(r["budget_bits"], 3), r["method"])] = r
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by an interrupted run
    return done


def run_model(name: str, out: Path, n_random: int, log, budgets=BUDGETS, max_probes: int = 64,
              sensitivity: str = "perturbed") -> None:
    results = out / "results.jsonl"
    done = rows_done(results)
    model = load_embedded(name)
    cal, ev = D.calibration_and_eval()
    batches = list(D.loader(cal, 200))

    def cost(kind: str, seconds: float) -> None:
        with (out / "cost.jsonl").open("a") as f:
            f.write(json.dumps({"model": name, "sensitivity": kind, "seconds": seconds,
                                "threads": torch.get_num_threads()}) + "\n")

    profiles = {}

    def prof_of(kind: str):
        """The profile of one sensitivity model, computed when a row first needs it and kept in OUT."""
        if kind not in profiles:
            path = out / f"{name}_{kind}_profile.json"
            fresh = not path.is_file()
            profiles[kind] = profile(model, F.cross_entropy, batches, PROFILE_BITS, rel_tol=0.05,
                                     max_probes=max_probes, seed=0, sensitivity=kind, cache=path)
            if fresh:
                cost(kind, profiles[kind].seconds)
            log(f"{name}: {kind} profile {profiles[kind].seconds:.0f} s ({profiles[kind].effort})")
        return profiles[kind]

    def sizes():
        """The layers and sizes every profile holds, without cross-layer terms (the baselines'
        sensitivities replace Ω and are additive): one already made, else the default."""
        return replace(next(iter(profiles.values()), None) or prof_of(sensitivity), interactions=())

    qcache, gcache, evaluated = GuardCache(), GuardCache(), {}
    lazy: dict[str, dict] = {}

    def sens(kind: str):
        """The eigenvalue, measured-delta or output-error sensitivities, computed once and kept in OUT."""
        path = out / f"{name}_{kind}.json"
        if kind not in lazy and path.is_file():
            d = json.loads(path.read_text())
            lazy[kind] = d if kind == "eig" else {n: {int(b): v for b, v in row.items()} for n, row in d.items()}
        if kind not in lazy:
            t = time.time()
            if kind == "eig":
                lazy[kind] = eigen_sensitivity(model, F.cross_entropy, batches[0], sizes(), engine="jvp_vmap")
            elif kind == "grad_output":
                lazy[kind] = output_error_sensitivity(model, F.cross_entropy, batches, sizes())
            else:
                lazy[kind] = measured_deltas(model, sizes(), batches, spec=SPEC, cache=qcache)
            path.write_text(json.dumps(lazy[kind]))
            cost(kind, time.time() - t)
            log(f"{name}: {kind} sensitivities {time.time() - t:.0f} s")
        return lazy[kind]

    def measure(plan) -> tuple[float, float]:
        key = tuple(sorted(plan.assignment().items()))
        if key not in evaluated:
            q = quantize_plan(model, plan, batches, qcache)
            evaluated[key] = (evaluate(q, ev)[0], evaluate(q, batches)[1])
        return evaluated[key]

    def emit(bits: float, method: str, acc: float, loss: float, plan=None, **extra) -> None:
        row = {"model": name, "budget_bits": round(bits, 3), "method": method, "accuracy": acc,
               "calibration_loss": loss, "weight_bytes": plan.weight_bytes if plan else 4 * sum(l.params for l in sizes().layers),
               "avg_bits": plan.avg_bits if plan else 32.0, "label": plan.label if plan else "fp32", **extra}
        print(json.dumps(row), flush=True)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def planned(bits: float, method: str, make) -> None:
        if (name, round(bits, 3), method) in done:
            print(json.dumps(done[(name, round(bits, 3), method)]), flush=True)
            return
        plan = make()
        emit(bits, method, *measure(plan), plan)

    if (name, 32.0, "fp32") in done:
        print(json.dumps(done[(name, 32.0, "fp32")]), flush=True)
    else:
        emit(32.0, "fp32", evaluate(model, ev)[0], evaluate(model, batches)[1])
    def budget_at(bits: float) -> Budget:
        return Budget(megabytes=budget_bytes(sizes(), bits) / 1e6)

    for bits in budgets:
        t = time.time()
        prof = lambda: prof_of(sensitivity)  # noqa: E731
        planned(bits, "uniform", lambda: uniform_plan(sizes(), int(bits)))
        planned(bits, "hawq", lambda: guarded_solve(prof(), budget_at(bits), spec=SPEC, model=model, data=batches, cache=gcache))
        planned(bits, "hawq_noguard", lambda: solve(prof(), budget_at(bits), spec=SPEC))
        planned(bits, "hawq_cross", lambda: guarded_solve(prof_of(CROSS), budget_at(bits), spec=SPEC, model=model, data=batches, cache=gcache))
        planned(bits, "hawq_cross_noguard", lambda: solve(prof_of(CROSS), budget_at(bits), spec=SPEC))
        planned(bits, "hawq_trace", lambda: solve(prof_of("trace"), budget_at(bits), spec=SPEC))
        planned(bits, "inverted", lambda: solve(resensitized(prof(), inverted_sensitivity(prof())), budget_at(bits), spec=SPEC))
        planned(bits, "aimet_greedy", lambda: greedy_plan(sizes(), sens("deltas"), budget_at(bits), spec=SPEC, label="aimet-greedy"))
        planned(bits, "grad_output_score", lambda: solve(with_omegas(sizes(), sens("grad_output")), budget_at(bits), spec=SPEC))
        key = (name, round(bits, 3), "random_mean")
        if key in done and (name, round(bits, 3), "random_best") in done:
            for m in ("random_mean", "random_best"):
                print(json.dumps(done[(name, round(bits, 3), m)]), flush=True)
        else:
            budget = budget_at(bits)
            plans = [solve(resensitized(prof(), random_sensitivity(prof(), s)), budget, spec=SPEC)
                     for s in range(n_random)]
            got = [measure(p) for p in plans]
            best = max(range(n_random), key=lambda i: got[i][0])
            emit(bits, "random_mean", statistics.fmean(a for a, _ in got), statistics.fmean(l for _, l in got),
                 plans[best], n=n_random, accuracies=[a for a, _ in got])
            emit(bits, "random_best", *got[best], plans[best], seed=best)
        log(f"{name}: budget W{bits:.2f} done in {time.time() - t:.0f} s")
    for bits in budgets:  # last: HAWQ-V1's eigenvalues cost more than everything else together
        planned(bits, "hawq_v1_eig", lambda: solve(resensitized(sizes(), sens("eig")), budget_at(bits), spec=SPEC))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--random", type=int, default=5, help="random plans per budget")
    p.add_argument("--out", default="out/quality", help="profiles and results.jsonl (resumed from)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--budgets", default=",".join(f"{b:.6g}" for b in BUDGETS),
                   help="uniform-equivalent weight bits, in the order to run them")
    p.add_argument("--max-probes", type=int, default=64, help="Hutchinson probes at most (the recipes' 64)")
    p.add_argument("--sensitivity", default="perturbed", choices=SENSITIVITIES,
                   help="the model of the hawq rows (default perturbed); perturbed_cross runs as hawq_cross (hawq's "
                        f"default is {DEFAULT_SENSITIVITY}), the trace model as hawq_trace")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.models.split(","):
        if name not in MODELS:
            sys.exit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        run_model(name, out, a.random, lambda m: print(m, file=sys.stderr, flush=True),
                  budgets=[float(b) for b in a.budgets.split(",")], max_probes=a.max_probes, sensitivity=a.sensitivity)


if __name__ == "__main__":
    main()
