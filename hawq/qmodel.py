"""The quantized-model file (`hawq quantize` writes it, `hawq export` reads it): data, not a program.

It is `torch.save` of plain tensors and one JSON header string, read back with
`torch.load(weights_only=True)`, so loading a file someone sent cannot run code. The header
records the architecture (by name, rebuilt here), every QuantLayer's settings and calibrated
ranges, the plan and any fine-tuning summary; the tensors are the model's state dict and the
example inputs. The model is rebuilt as `quantize` builds it (BN folded, planned layers wrapped),
then its state is loaded strictly.
"""
from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import quant
from .artifacts import atomic_path
from .batches import tree_map
from .errors import ArtifactError
from .graph import EMBEDDINGS, QUANTIZABLE, fold_bn, set_module
from .rewrite import QuantLayer, quant_layers
from .solver import Plan
from .target import Target

FORMAT = "hawq.qmodel/1"
# QuantLayer attributes that are not tensors: the settings and the calibrated quantizer of its input and output
_INT = ("w_bits", "a_bits", "a_zero_point", "a_qmin", "a_qmax", "o_zero_point", "o_qmin", "o_qmax")
_FLOAT = ("a_lo", "a_hi", "a_scale", "o_lo", "o_hi", "o_scale")
_OPTIONAL_INT = ("w_code_bits", "out_bits")


@dataclass
class QModelFile:
    """What a quantized-model file holds.

    model: the fake-quant model, in eval mode.
    inputs: the example input batch (export traces one sample, verifies on all).
    arch: the architecture's name, {"name": ..., "family": "embedded" | "torchvision"}.
    plan: the plan it was quantized by, as Plan.to_dict() wrote it.
    extra: anything else recorded (e.g. "finetune": the fine-tuning summary).
    """

    model: nn.Module
    inputs: torch.Tensor
    arch: dict[str, str]
    plan: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def _layer_header(m: QuantLayer) -> dict[str, Any]:
    d: dict[str, Any] = {k: int(getattr(m, k)) for k in _INT}
    d.update({k: float(getattr(m, k)) for k in _FLOAT})
    d.update({k: None if getattr(m, k) is None else int(getattr(m, k)) for k in _OPTIONAL_INT})
    d.update(weight_method=m.weight_method, a_symmetric=bool(m.a_symmetric), calibrated=bool(m.calibrated))
    return d


def save_qmodel(path: str | Path, model: nn.Module, inputs: torch.Tensor | dict[str, torch.Tensor], arch: dict[str, str],
                plan: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write a fake-quant model (from `hawq.quantize` or `hawq.finetune`) atomically.

    path: the file.
    model: the fake-quant model; every QuantLayer calibrated, none in training mode (freeze() first).
    inputs: example input batch: a tensor, or a dict of keyword inputs (token ids, attention mask).
    arch: {"name": model name, "family": "embedded", "torchvision" or "hf"}, to rebuild it from.
    plan: Plan.to_dict() of the plan it was quantized by.
    extra: more JSON to record.
    """
    layers = quant_layers(model)
    if any(m.qat or not m.calibrated for m in layers.values()):
        raise ArtifactError("a layer is uncalibrated or still in training mode; calibrate and freeze() it first")
    target = getattr(model, "hawq_target", Target())
    header = {"format": FORMAT, "arch": dict(arch), "plan": plan, "extra": dict(extra or {}), "target": target.to_dict(),
              "layers": {n: _layer_header(m) for n, m in layers.items()}}
    if not _inputs_ok(inputs):
        raise ArtifactError(f"inputs must be a tensor or a dict of tensors, not {type(inputs).__name__}")
    blob = {"header": json.dumps(header, allow_nan=True), "inputs": tree_map(lambda t: t.detach().cpu(), inputs),
            "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return Path(path)


def _inputs_ok(inputs: Any) -> bool:
    return isinstance(inputs, torch.Tensor) or (isinstance(inputs, dict) and bool(inputs) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in inputs.items()))


def _read(path: Path) -> tuple[dict[str, Any], torch.Tensor, dict[str, torch.Tensor]]:
    """The header, inputs and state of a file, validated for shape; ArtifactError otherwise."""
    advice = "make it with `hawq quantize --plan PLAN --out FILE`"
    if not path.is_file():
        raise ArtifactError(f"{path} not found; {advice}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError) as e:
        raise ArtifactError(f"{path} is not a hawq quantized model: not a torch file of tensors alone "
                            f"({e.__class__.__name__}; objects beyond tensors are never loaded); {advice}") from None
    if not (isinstance(blob, dict) and isinstance(blob.get("header"), str) and _inputs_ok(blob.get("inputs"))
            and isinstance(blob.get("state"), dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                             for k, v in blob["state"].items())):
        raise ArtifactError(f"{path} is not a {FORMAT} file (header, inputs and state tensors); {advice}")
    try:
        header = json.loads(blob["header"])
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: its header is not valid JSON ({e}); {advice}") from None
    got = header.get("format") if isinstance(header, dict) else None
    if got != FORMAT:
        raise ArtifactError(f"{path} has format {got!r}, expected {FORMAT!r}; {advice} with this hawq version")
    return header, blob["inputs"], blob["state"]


def _layer_settings(name: str, d: Any) -> dict[str, Any]:
    """One layer's header entry, type- and range-checked; ValueError otherwise."""
    if not isinstance(d, dict):
        raise ValueError(f"layer {name}: expected an object, got {d!r}")
    out: dict[str, Any] = {}
    for k in _INT + _OPTIONAL_INT:
        v = d.get(k)
        if v is None and k in _OPTIONAL_INT:
            out[k] = None
        elif isinstance(v, int) and not isinstance(v, bool):
            out[k] = v
        else:
            raise ValueError(f"layer {name}: {k} must be an integer, not {v!r}")
    for k in _FLOAT:
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"layer {name}: {k} must be a finite number, not {v!r}")
        out[k] = float(v)
    for k in ("a_symmetric", "calibrated"):
        if not isinstance(d.get(k), bool):
            raise ValueError(f"layer {name}: {k} must be true or false, not {d.get(k)!r}")
        out[k] = d[k]
    if d.get("weight_method") not in quant.WEIGHT_METHODS:
        raise ValueError(f"layer {name}: weight_method must be one of {quant.WEIGHT_METHODS}")
    out["weight_method"] = d["weight_method"]
    if not out["calibrated"] or out["a_scale"] <= 0 or out["o_scale"] <= 0:
        raise ValueError(f"layer {name}: not calibrated (scales must be positive)")
    return out


def load_qmodel(path: str | Path, build: Callable[[dict[str, str]], nn.Module] | None = None,
                model: nn.Module | None = None) -> QModelFile:
    """Read a file written by save_qmodel; ArtifactError if missing, of another format or malformed.

    path: the file.
    build: arch -> the float model (any weights; they are replaced), for architectures given by name.
    model: the float architecture itself, instead of `build` (e.g. your own nn.Module class).
    """
    path = Path(path)
    header, inputs, state = _read(path)
    try:
        arch, plan, extra, layers = header["arch"], header["plan"], header.get("extra", {}), header["layers"]
        target = Target.of(header.get("target", "ort"))  # files from before targets were recorded: ort
        if not (isinstance(arch, dict) and isinstance(plan, dict) and isinstance(extra, dict) and isinstance(layers, dict)
                and layers):
            raise ValueError("arch, plan, extra must be objects and layers a non-empty object")
        settings = {n: _layer_settings(n, d) for n, d in layers.items()}
        if "format" in plan:  # a whole plan (what `hawq quantize` records): its own checks, candidates included
            Plan.from_dict(plan)
        plan_layers = {l["name"]: (l["w_bits"], l["a_bits"]) for l in plan["layers"]}
        widths = {n: (s["w_bits"], s["a_bits"]) for n, s in settings.items()}
        if plan_layers != widths:
            raise ValueError("its layers and widths differ from its plan's")
    except (KeyError, TypeError, ValueError, AttributeError, ArtifactError) as e:
        raise ArtifactError(f"{path}: malformed header ({e.__class__.__name__}: {e}); make it again with "
                            "`hawq quantize`") from None
    if model is None:
        if build is None:
            raise ArtifactError(f"{path}: give the float model (model=) or a builder (build=) to rebuild {arch}")
        model = build(arch)
    folded = fold_bn(model)
    mods = dict(folded.named_modules())
    quantizable = {n for n, m in mods.items() if isinstance(m, QUANTIZABLE)} - set(plan.get("float_layers", ()))
    quantizable |= {n for n in settings if isinstance(mods.get(n), EMBEDDINGS)}  # quantized on request only
    if set(settings) != quantizable:
        raise ArtifactError(f"{path} does not cover exactly the quantizable layers of {arch.get('name', 'the model')} "
                            f"({len(settings)} in the file, {len(quantizable)} in the model); make it again with "
                            "`hawq quantize`")
    for name, s in settings.items():
        try:
            layer = QuantLayer(mods[name], s["w_bits"], s["a_bits"], "minmax", s["a_symmetric"], s["w_code_bits"])
        except ArtifactError:
            raise
        except ValueError as e:  # ConfigError included: a width out of range
            raise ArtifactError(f"{path}: layer {name}: {e}") from None
        for k, v in s.items():
            setattr(layer, k, v)
        set_module(folded, name, layer)
    try:
        folded.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: its tensors do not fit {arch.get('name', 'the model')} "
                            f"({str(e).splitlines()[0][:160]}); make it again with `hawq quantize`") from None
    folded.hawq_target = target
    return QModelFile(folded.eval(), inputs, arch, plan, extra)
