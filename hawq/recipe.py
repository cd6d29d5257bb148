"""Recipes: one TOML file per ready-made job (model, data, bits, budgets, export)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError

BUDGET_KEYS = ("uniform_bits", "avg_bits", "megabytes", "ratio")
MODELS = ("resnet20",)


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str = "resnet20"
    checkpoint: str = "embedded"  # "embedded" or a path to a state_dict
    data_dir: str = "embedded"  # "embedded", a folder with the IDX files, or "download"
    n_calibration: int = 1000
    n_evaluation: int = 0  # evaluation images after the calibration ones; 0 = all the rest
    batch_size: int = 200
    profile_bits: tuple[int, ...] = (2, 3, 4, 8)
    rel_tol: float = 0.05
    max_probes: int = 64
    probes_per_batch: int = 1
    seed: int = 0
    candidates: tuple[int, ...] = (2, 4, 8)
    budgets: tuple[dict[str, float], ...] = ({"uniform_bits": 8}, {"uniform_bits": 4}, {"uniform_bits": 3})
    pin_first_last: bool = True
    export_budget: int = 1  # index into budgets of the plan to export
    opset: int = 21


def _get(table: dict, key: str, kind, default, where: str):
    v = table.get(key, default)
    if kind is tuple:
        if not isinstance(v, (list, tuple)) or not all(isinstance(b, int) for b in v) or not v:
            raise ConfigError(f"{where}.{key} must be a non-empty list of integers, not {v!r}")
        return tuple(v)
    if not isinstance(v, kind) or isinstance(v, bool) != (kind is bool):
        raise ConfigError(f"{where}.{key} must be {kind.__name__}, not {v!r}")
    return v


def _number(table: dict, key: str, default: float, where: str) -> float:
    v = table.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise ConfigError(f"{where}.{key} must be a positive number, not {v!r}")
    return float(v)


def default_recipe() -> Recipe:
    """The embedded default (the same job as recipes/fashion_resnet20.toml)."""
    return Recipe(name="fashion_resnet20")


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe {path} not found; give a .toml file (see recipes/)")
    try:
        d = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {p} is not valid TOML: {e}") from e
    known = {"model", "data", "profile", "solve", "export", "name"}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"recipe {p}: unknown section(s) {sorted(unknown)}; accepted: {sorted(known)}")
    m, da, pr, so, ex = (d.get(k, {}) for k in ("model", "data", "profile", "solve", "export"))
    model = _get(m, "name", str, "resnet20", "model")
    if model not in MODELS:
        raise ConfigError(f"model.name {model!r} is not known; accepted: {', '.join(MODELS)}")
    budgets = so.get("budgets", [{"uniform_bits": 8}, {"uniform_bits": 4}, {"uniform_bits": 3}])
    for b in budgets:
        if not isinstance(b, dict) or len(b) != 1 or next(iter(b)) not in BUDGET_KEYS:
            raise ConfigError(f"solve.budgets entries must each have one key of {BUDGET_KEYS}, not {b!r}")
    r = Recipe(
        name=d.get("name", p.stem),
        model=model,
        checkpoint=_get(m, "checkpoint", str, "embedded", "model"),
        data_dir=_get(da, "folder", str, "embedded", "data"),
        n_calibration=_get(da, "calibration", int, 1000, "data"),
        n_evaluation=_get(da, "evaluation", int, 0, "data"),
        batch_size=_get(da, "batch_size", int, 200, "data"),
        profile_bits=_get(pr, "bits", tuple, (2, 3, 4, 8), "profile"),
        rel_tol=_number(pr, "rel_tol", 0.05, "profile"),
        max_probes=_get(pr, "max_probes", int, 64, "profile"),
        probes_per_batch=_get(pr, "probes_per_batch", int, 1, "profile"),
        seed=_get(pr, "seed", int, 0, "profile"),
        candidates=_get(so, "candidates", tuple, (2, 4, 8), "solve"),
        budgets=tuple(dict(b) for b in budgets),
        pin_first_last=_get(so, "pin_first_last", bool, True, "solve"),
        export_budget=_get(ex, "budget_index", int, 1, "export"),
        opset=_get(ex, "opset", int, 21, "export"),
    )
    if not set(r.candidates) <= set(r.profile_bits):
        raise ConfigError(f"solve.candidates {list(r.candidates)} must be a subset of profile.bits {list(r.profile_bits)}")
    if not 0 <= r.export_budget < len(r.budgets):
        raise ConfigError(f"export.budget_index must be in 0..{len(r.budgets) - 1}, not {r.export_budget}")
    if r.n_evaluation < 0:
        raise ConfigError(f"data.evaluation must be >= 0 (0: all remaining images), not {r.n_evaluation}")
    if r.batch_size < 1 or r.max_probes < 2:
        raise ConfigError("data.batch_size must be >= 1 and profile.max_probes >= 2")
    return r

