"""hawq: Hessian-aware mixed-precision quantization for PyTorch.

    prof = hawq.profile(model, loss_fn, calibration_batches, bits=(2, 4, 8))
    plan = hawq.solve(prof, hawq.Budget(avg_bits=4), hawq.SolveSpec(bits=(2, 4, 8)))
    qmodel = hawq.quantize(model, plan, calibration_batches)
    hawq.export_onnx(qmodel, example_input, "model.onnx")
"""
from .batches import Objective, count_samples, evaluate, features, take
from .errors import HawqError
from .models import load_default_model, resnet20
from .legalize import LegalizationWarning, legalize
from .onnx_export import ExportReport, export_onnx
from .onnx_verify import ort_session
from .artifacts import check_output
from .pipeline import RunResult, build_arch, load_data, load_model, recipe_arch, run_recipe, table
from .qmodel import QModelFile, load_qmodel, save_qmodel
from .recipe import Recipe, default_recipe, load_recipe
from .graph import fold_bn
from .rewrite import quantize
from .finetune import FinetuneResult, ShuffledBatches, finetune, train_split_batches
from .sensitivity import LayerProfile, Profile, profile
from .target import Target, TargetMismatchWarning
from .solver import (BUDGET_KINDS, DEFAULT_PINS, Budget, LayerChoice, Plan, SolveSpec, alternatives, default_pins, solve,
                     sweep, uniform_plan, uniform_plans_within)
from .frontier import Frontier, pareto
from .frontier_plot import write_frontier
from .guard import guarded_solve
from .latency import LatencyTable, measure_latency
from .report import frontier_summary

__version__ = "0.1.0"

__all__ = [
    "FinetuneResult", "ShuffledBatches", "finetune", "train_split_batches",
    "Frontier", "LatencyTable", "write_frontier", "alternatives", "frontier_summary", "guarded_solve", "measure_latency", "pareto", "sweep", "uniform_plans_within",
    "BUDGET_KINDS", "DEFAULT_PINS", "SolveSpec", "Target", "TargetMismatchWarning", "default_pins",
    "Budget", "ExportReport", "HawqError", "LayerChoice", "LegalizationWarning", "LayerProfile", "Plan", "Profile", "Recipe", "RunResult",
    "QModelFile", "build_arch", "check_output", "load_qmodel", "recipe_arch", "save_qmodel",
    "Objective", "count_samples", "default_recipe", "evaluate", "features", "take", "export_onnx", "fold_bn", "load_data", "load_default_model", "load_model",
    "legalize", "load_recipe", "ort_session", "profile", "quantize", "resnet20", "run_recipe", "solve", "table", "uniform_plan",
]
