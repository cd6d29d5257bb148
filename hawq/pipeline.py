"""`hawq run RECIPE`: profile → solve at each budget → quantize → evaluate → export → report."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from . import data as fmnist  # the embedded Fashion-MNIST data
from .artifacts import write_json
from .batches import evaluate, take
from .errors import ArtifactError
from .frontier import Frontier, pareto
from .frontier_plot import write_frontier
from .guard import GuardCache, guarded_solve, quantize_plan
from . import hf, zoo
from .models import BUILDERS, checkpoint_path, load_checkpoint
from .onnx_export import ExportReport, export_onnx
from .recipe import Recipe
from .report import write_report
from .report_html import write_html_report
from .sensitivity import Profile, profile
from .solver import DEFAULT_PINS, Budget, Plan, SolveSpec, solve, uniform_plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    method: str  # "fp32" | "uniform" | "mixed"
    budget_bits: float | None  # the uniform bit width whose size the plan matches
    accuracy: float
    loss: float
    weight_bytes: int
    avg_bits: float
    label: str


@dataclass(frozen=True)
class RunResult:
    rows: list[Row]
    plans: dict[str, Plan]
    profile: Profile
    export: ExportReport
    seconds: float
    frontier: Frontier | None = None

    def summary(self) -> dict[str, Any]:
        v = self.export.verification
        return {
            "rows": [{"method": r.method, "budget_bits": r.budget_bits, "accuracy": r.accuracy,
                      "weight_bytes": r.weight_bytes, "avg_bits": r.avg_bits} for r in self.rows],
            "onnx": {"path": self.export.path, "file_bytes": self.export.file_bytes,
                     "top1_agreement": v.top1_agreement if v else None, "max_abs_diff": v.max_abs_diff if v else None},
            "seconds": self.seconds,
            "guard": {n: {"chosen": p.guard["chosen"], "candidates": len(p.guard["candidates"])}
                      for n, p in self.plans.items() if p.guard},
            "frontier": None if self.frontier is None else {
                "points": len(self.frontier.points), "chosen": self.frontier.chosen,
                "files": ["frontier.json", "frontier.csv", "frontier.svg"]},
        }


def load_model(recipe: Recipe) -> torch.nn.Module:
    """The recipe's model in eval mode: an embedded Fashion-MNIST model (hawq.models) or a
    torchvision one (hawq.zoo), with the weights the recipe names ("random": seeded by its seed)."""
    recipe.check_inputs()
    if recipe.family == "hf":
        return hf.build(recipe.model, recipe.checkpoint, seed=recipe.seed)
    if recipe.family == "torchvision":
        return zoo.build(recipe.model, recipe.checkpoint, seed=recipe.seed)
    if recipe.checkpoint == "random":
        return zoo.seeded(BUILDERS[recipe.model], recipe.seed).eval()
    path = checkpoint_path(recipe.model) if recipe.checkpoint == "embedded" else Path(recipe.checkpoint)
    return load_checkpoint(BUILDERS[recipe.model](), path)


def recipe_arch(recipe: Recipe) -> dict[str, str]:
    """The recipe's architecture by name, as a quantized-model file records it (see build_arch)."""
    return {"name": recipe.model, "family": recipe.family}


def build_arch(arch: dict[str, str]) -> torch.nn.Module:
    """The float model of a recorded architecture, with random weights (a file's state replaces them).

    arch: {"name": ..., "family": "embedded" | "torchvision"}, from recipe_arch.
    """
    name, family = arch.get("name"), arch.get("family")
    if family == "embedded" and name in BUILDERS:
        return zoo.seeded(BUILDERS[name], 0).eval()
    if family == "torchvision" and name in zoo.MODELS:
        return zoo.build(name, "random")
    if family == "hf" and name in hf.MODELS:
        return hf.build(name, "random")
    raise ArtifactError(f"unknown architecture {arch!r}; a file made by `hawq quantize` names an embedded model "
                        f"({', '.join(BUILDERS)}) or a torchvision one ({', '.join(zoo.MODELS)})")


def load_data(recipe: Recipe):
    """(calibration batches, evaluation data: a dataset, or re-iterable (x, y) batches whose len()
    is the image count; for a Hugging Face model, lists of dict batches)."""
    recipe.check_inputs()
    if recipe.family == "hf":
        if recipe.data_dir == "synthetic":
            return hf.synthetic_data(recipe.model, recipe.checkpoint, recipe.n_calibration, recipe.n_evaluation,
                                     recipe.batch_size, recipe.seed)
        return hf.jsonl_data(recipe.model, recipe.data_dir, recipe.checkpoint, recipe.n_calibration,
                             recipe.n_evaluation, recipe.batch_size)
    if recipe.family == "torchvision":
        if recipe.data_dir == "synthetic":
            return zoo.synthetic_data(recipe.n_calibration, recipe.n_evaluation, recipe.batch_size, recipe.seed)
        return zoo.folder_data(recipe.data_dir, recipe.n_calibration, recipe.n_evaluation, recipe.batch_size,
                               recipe.seed)
    download = recipe.data_dir == "download"
    folder = "data" if download else None if recipe.data_dir == "embedded" else recipe.data_dir
    cal, ev = fmnist.calibration_and_eval(folder, recipe.n_calibration, download=download)
    if recipe.n_evaluation:
        ev = torch.utils.data.TensorDataset(*(t[: recipe.n_evaluation] for t in ev.tensors))
    return list(fmnist.loader(cal, recipe.batch_size)), ev


def recipe_spec(recipe: Recipe) -> SolveSpec:
    """What the recipe lets the solver choose: its candidate widths as its [export] target runs
    them (the exported file is the plan), first and last layer pinned to 8 bits unless
    pin_first_last is off."""
    return SolveSpec(bits=recipe.candidates, pins=DEFAULT_PINS if recipe.pin_first_last else {}, target=recipe.target)


def budget_plans(prof: Profile, recipe: Recipe, solve_fn=solve) -> list[tuple[float | None, Plan | None, Plan]]:
    """For each recipe budget: (uniform bits or None, the uniform plan or None, the mixed plan from
    `solve_fn`, which takes solve()'s arguments, e.g. a guarded_solve bound to the model and data)."""
    spec = recipe_spec(recipe)
    out = []
    for b in recipe.budgets:
        (kind, value), = b.items()
        if kind == "uniform_bits":
            uni = uniform_plan(prof, int(value), spec)
            budget = Budget(megabytes=uni.weight_bytes / 1e6)
            out.append((float(value), uni, solve_fn(prof, budget, spec)))
        else:
            out.append((None, None, solve_fn(prof, Budget(**{kind: value}), spec)))
    return out


def run_recipe(recipe: Recipe, out_dir: str | Path, *, progress: bool = False, log_fn=print,
               guard: bool = True) -> RunResult:
    t0 = time.time()
    out = Path(out_dir)
    torch.manual_seed(recipe.seed)
    model = load_model(recipe)
    batches, ev = load_data(recipe)
    out.mkdir(parents=True, exist_ok=True)  # only now: a bad checkpoint or data folder leaves no empty folder
    log_fn(f"profiling {len(batches)} calibration batches ...")
    prof = profile(model, None, batches, recipe.profile_bits, rel_tol=recipe.rel_tol,
                   max_probes=recipe.max_probes, seed=recipe.seed, probes_per_batch=recipe.probes_per_batch, engine=recipe.engine, progress=progress, cache=out / "profile.json",
                   omega_trace=recipe.omega_trace, sensitivity=recipe.sensitivity)
    log_fn(f"profile: {len(prof.layers)} layers, {prof.effort}, {prof.seconds:.0f} s"
           + (f", unconverged: {', '.join(prof.unconverged)}" if prof.unconverged else ""))
    acc, loss = evaluate(model, ev)
    n_params = sum(l.params for l in prof.layers)
    rows = [Row("fp32", None, acc, loss, 4 * n_params, 32.0, "fp32")]
    plans: dict[str, Plan] = {}
    qmodels = {}
    cache = GuardCache(target=recipe.quant_target)  # per-width quantized layers, shared by the guard and the final plans
    solve_fn = partial(guarded_solve, model=model, data=batches, cache=cache) if guard else solve
    for bits, uni, mixed in budget_plans(prof, recipe, solve_fn):
        for method, plan in (("uniform", uni), ("mixed", mixed)):
            if plan is None:
                continue
            name = f"{method}_{bits:g}" if bits is not None else plan.label
            plan.save(out / f"plan_{name}.json")
            plans[name] = plan
            q = quantize_plan(model, plan, batches, cache)  # = quantize(model, plan, batches, target=...), weights reused
            acc, loss = evaluate(q, ev)
            qmodels[name] = q
            rows.append(Row(method, bits, acc, loss, plan.weight_bytes, plan.avg_bits, name))
            log_fn(f"{name:>12}: accuracy {acc:.4f}, {plan.weight_bytes / 1e6:.4f} MB, {plan.avg_bits:.2f} bits")
    export_name = [k for k in plans if k.startswith("mixed")][recipe.export_budget]
    report = export_onnx(qmodels[export_name], take(batches[0], 0, 1), out / "model.onnx", target=recipe.target,
                         opset=recipe.opset, verify_inputs=batches, int8=recipe.int8)
    frontier = pareto(prof, recipe_spec(recipe), chosen=plans[export_name])
    write_frontier(frontier, out, recipe.name)
    result = RunResult(rows, plans, prof, report, time.time() - t0, frontier)
    write_json(out / "summary.json", result.summary())
    write_report(out / "report.md", recipe.name, prof, plans, rows, report, export_name, frontier=frontier)
    write_html_report(out / "report.html", recipe.name, prof, plans, rows, report, export_name, frontier=frontier)
    return result


def table(rows: list[Row]) -> str:
    lines = [f"{'method':<8} {'budget':>7} {'accuracy':>9} {'weight MB':>10} {'avg bits':>9}"]
    for r in rows:
        b = "-" if r.budget_bits is None else f"W{r.budget_bits:g}"
        lines.append(f"{r.method:<8} {b:>7} {100 * r.accuracy:>8.2f}% {r.weight_bytes / 1e6:>10.4f} {r.avg_bits:>9.2f}")
    return "\n".join(lines)
