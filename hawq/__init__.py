"""hawq: Hessian-aware mixed-precision quantization for PyTorch.

    prof = hawq.profile(model, loss_fn, calibration_batches, bits=(2, 4, 8))
    plan = hawq.solve(prof, hawq.Budget(avg_bits=4))
    qmodel = hawq.quantize(model, plan, calibration_batches)
    hawq.export_onnx(qmodel, example_input, "model.onnx")
"""
from .data import evaluate
from .errors import HawqError
from .models import load_default_model, resnet20
from .onnx_export import ExportReport, export_onnx
from .pipeline import RunResult, load_data, load_model, run_recipe, table
from .recipe import Recipe, default_recipe, load_recipe
from .rewrite import fold_bn, quantize
from .sensitivity import LayerProfile, Profile, profile
from .solver import Budget, LayerChoice, Plan, solve, uniform_plan

__version__ = "0.1.0"

__all__ = [
    "Budget", "ExportReport", "HawqError", "LayerChoice", "LayerProfile", "Plan", "Profile", "Recipe", "RunResult",
    "default_recipe", "evaluate", "export_onnx", "fold_bn", "load_data", "load_default_model", "load_model",
    "load_recipe", "profile", "quantize", "resnet20", "run_recipe", "solve", "table", "uniform_plan",
]
