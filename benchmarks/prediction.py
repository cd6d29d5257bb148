"""Does a sensitivity model predict the damage a plan does? Spearman correlation between predicted
and measured calibration-loss increase over random plans.

    python benchmarks/prediction.py                         # the three embedded models
    python benchmarks/prediction.py --models resnet20 --plans 30

For each model, at three weight budgets spanning 3-6 uniform-equivalent bits (first and last
layers at 8 bits; the others among 2, 4 and 8 bits), draws `--plans` random plans per budget (the
ILP on random sensitivities: each fills its budget), quantizes each (weights and 8-bit
activations, calibrated on the 1,000 calibration images) and measures its calibration loss minus
the float model's. Each sensitivity model predicts that increase:

- trace: HAWQ-V2's Σ_l Tr(H_l)/n_l · ‖ΔW_l‖² (the profile's Ω, its default upper-interval trace);
- measured_deltas: Σ_l of the single-layer measured loss changes the AIMET-style greedy uses;
- perturbation_diag: Σ_l gᵀΔ_l + ½ Δ_lᵀ H Δ_l, the exact second-order term of the actual rounding;
- perturbation_full: the same with every cross-layer term ½ Σ_{l≠m} Δ_lᵀ H Δ_m;
- deltas_cross: the measured single-layer deltas plus the cross-layer curvature terms;
- perturbed: Σ_l of the exact loss change of rounding layer l's weights alone (one forward pass
  over the data per layer and width, activations in float, no quantized model built);
- perturbed_cross: those plus the cross-layer curvature terms;
- grad_output: Σ_l of ModelOpt auto_quantize's score Σ (∂L/∂Y_l · (Y_l,quant − Y_l))².

Prints one JSON line per model and sensitivity: `model, sensitivity, spearman` (the mean over the
budgets of the within-budget correlation), `spearman_pooled` (all plans together), `per_budget`,
`plans`, `seconds` (time to compute that sensitivity on this machine's threads), and one line per
plan (`kind: "plan"`) with the measured and predicted values, to OUT/prediction.jsonl; the
default sensitivity model's line is repeated as `sensitivity: "default"` (its `is` names it). A model
whose summary is already there is not recomputed: an interrupted run resumes at the next model.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from hawq import data as D
from hawq.batches import evaluate
from hawq.baselines import measured_deltas, random_sensitivity, resensitized
from hawq.guard import GuardCache, quantize_plan
from hawq.models import load_embedded
from hawq.perturbation import output_error_scores, perturbation_terms, perturbed_losses
from hawq.graph import fold_bn
from hawq.sensitivity import DEFAULT_SENSITIVITY, profile
from hawq.solver import Budget, SolveSpec, default_pins, solve, uniform_plan

MODELS = ("resnet20", "mobilenetv2_fashion", "vit_fashion")
CANDIDATES = (2, 4, 8)
BUDGETS = (3.0, 4.5, 6.0)


def budget_bytes(prof, bits: float) -> float:
    """Weight bytes of uniform `bits` (first/last at 8); between widths, interpolated between the
    neighbouring candidates."""
    lo = max(b for b in CANDIDATES if b <= bits)
    hi = min(b for b in CANDIDATES if b >= bits)
    lo_b = uniform_plan(prof, lo).weight_bytes
    return float(lo_b) if lo == hi else lo_b + (uniform_plan(prof, hi).weight_bytes - lo_b) * (bits - lo) / (hi - lo)


def ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den if den else 0.0


def done_summary(path: Path, name: str) -> list[dict]:
    """The summary rows already written for `name`: a model finished by an earlier run is skipped."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("model") == name and "sensitivity" in r]


def default_row(summary: list[dict]) -> dict:
    """hawq's default sensitivity model's row again, as `sensitivity: "default"` (`is` names it)."""
    row = next(r for r in summary if r["sensitivity"] == DEFAULT_SENSITIVITY)
    return {**row, "sensitivity": "default", "is": DEFAULT_SENSITIVITY}


def run_model(name: str, out: Path, n_plans: int, max_probes: int, log) -> list[dict]:
    done = done_summary(out / "prediction.jsonl", name)
    if done:
        log(f"{name}: already in {out / 'prediction.jsonl'}, skipped")
        if [r.get("is") for r in done if r["sensitivity"] == "default"][-1:] != [DEFAULT_SENSITIVITY]:
            # written before the default row existed, or when the default was another model
            done.append(default_row(done))
            with (out / "prediction.jsonl").open("a") as f:
                f.write(json.dumps(done[-1]) + "\n")
        return done
    model = load_embedded(name)
    cal, _ = D.calibration_and_eval()
    batches = list(D.loader(cal, 200))
    seconds = {}
    t = time.time()
    prof = profile(model, F.cross_entropy, batches, CANDIDATES, rel_tol=0.05, max_probes=max_probes, seed=0,
                   cache=out / f"{name}_profile.json")
    seconds["trace"] = prof.seconds if prof.seconds else time.time() - t
    pins = default_pins(prof)
    cache = GuardCache()
    t = time.time()
    deltas = measured_deltas(model, prof, batches, spec=SolveSpec(bits=CANDIDATES, pins=pins), cache=cache)
    seconds["measured_deltas"] = time.time() - t
    log(f"{name}: measured deltas {seconds['measured_deltas']:.0f} s")
    folded = fold_bn(model).eval()
    mods = dict(folded.named_modules())
    t = time.time()
    pert = perturbation_terms(folded, F.cross_entropy, batches, {l.name: mods[l.name] for l in prof.layers}, CANDIDATES)
    seconds["perturbation_diag"] = seconds["perturbation_full"] = time.time() - t
    seconds["deltas_cross"] = seconds["measured_deltas"] + seconds["perturbation_full"]
    log(f"{name}: perturbation terms {seconds['perturbation_full']:.0f} s")
    layer_mods = {l.name: mods[l.name] for l in prof.layers if l.name not in pins}
    t = time.time()
    perturbed = perturbed_losses(folded, F.cross_entropy, batches, layer_mods, CANDIDATES)
    seconds["perturbed"] = time.time() - t
    seconds["perturbed_cross"] = seconds["perturbed"] + seconds["perturbation_full"]
    t = time.time()
    grad_out = output_error_scores(folded, F.cross_entropy, batches, layer_mods, CANDIDATES)
    seconds["grad_output"] = time.time() - t
    log(f"{name}: perturbed losses {seconds['perturbed']:.0f} s, output-error scores {seconds['grad_output']:.0f} s")
    with torch.no_grad():
        fp_loss = evaluate(model, batches)[1]
    idx = {n: i for i, n in enumerate(pert.names)}
    B = len(pert.bits)

    def cross_only(w: dict[str, int]) -> float:
        j = torch.tensor([idx[n] * B + pert.bits.index(w[n]) for n in pert.names])
        block = pert.curvature[j][:, j]
        return 0.5 * float(block.sum() - block.diagonal().sum())

    rows = []
    for bits in BUDGETS:
        budget = Budget(megabytes=budget_bytes(prof, bits) / 1e6)
        seen = set()
        for seed in range(10 * n_plans):
            if len(seen) >= n_plans:
                break
            plan = solve(resensitized(prof, random_sensitivity(prof, 1000 * int(10 * bits) + seed)), budget, spec=SolveSpec(bits=CANDIDATES, pins=pins))
            key = tuple(sorted(plan.assignment().items()))
            if key in seen:
                continue
            seen.add(key)
            w = {n: wa[0] for n, wa in plan.assignment().items()}
            measured = evaluate(quantize_plan(model, plan, batches, cache), batches)[1] - fp_loss
            pred = {"trace": plan.omega,
                    "measured_deltas": sum(deltas[n][w[n]] for n in deltas),
                    "perturbation_diag": pert.predict(w, cross=False),
                    "perturbation_full": pert.predict(w)}
            pred["deltas_cross"] = pred["measured_deltas"] + cross_only(w)
            pred["perturbed"] = sum(perturbed[n][w[n]] for n in perturbed)
            pred["perturbed_cross"] = pred["perturbed"] + cross_only(w)
            pred["grad_output"] = sum(grad_out[n][w[n]] for n in grad_out)
            rows.append({"kind": "plan", "model": name, "budget_bits": bits, "avg_bits": plan.avg_bits,
                         "measured": measured, "predicted": pred})
        log(f"{name}: {len(seen)} plans at W{bits:g}")
    summary = []
    for s in seconds:
        per = {}
        for bits in BUDGETS:
            r = [x for x in rows if x["budget_bits"] == bits]
            per[f"{bits:g}"] = spearman([x["predicted"][s] for x in r], [x["measured"] for x in r])
        summary.append({"model": name, "sensitivity": s, "spearman": statistics.fmean(per.values()),
                        "spearman_pooled": spearman([x["predicted"][s] for x in rows], [x["measured"] for x in rows]),
                        "per_budget": per, "plans": len(rows), "seconds": seconds[s],
                        "threads": torch.get_num_threads()})
    summary.append(default_row(summary))
    with (out / "prediction.jsonl").open("a") as f:
        for r in rows + summary:
            f.write(json.dumps(r) + "\n")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--plans", type=int, default=30, help="random plans per budget (default 30)")
    p.add_argument("--max-probes", type=int, default=64, help="Hutchinson probes for the trace model (default 64)")
    p.add_argument("--out", default="out/prediction", help="profiles and prediction.jsonl")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.models.split(","):
        if name not in MODELS:
            sys.exit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        for row in run_model(name, out, a.plans, a.max_probes, lambda m: print(m, file=sys.stderr, flush=True)):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
