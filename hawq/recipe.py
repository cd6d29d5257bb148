"""Recipes: one TOML file per ready-made job (model, data, bits, budgets, export).

Three families of models: the embedded ones for 1x28x28 Fashion-MNIST (hawq.models, with their
checkpoints and the test split inside the package), torchvision's ImageNet architectures
(hawq.zoo: the user's state_dict or torchvision's download, an ImageNet-style folder) and small
Hugging Face transformers (hawq.hf: a save_pretrained folder, a JSON-lines file of texts).
`Recipe.smoke()` shrinks any recipe to a run that needs no checkpoint and no data set.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError
from .hessian import ENGINES
from .hf import MODELS as HF_MODELS
from .models import BUILDERS, checkpoint_path
from .sensitivity import DEFAULT_SENSITIVITY, OMEGA_TRACES, SENSITIVITIES
from .solver import BUDGET_UNITS
from .target import ORT_INT8, TARGETS, Target
from .zoo import MODELS as TORCHVISION_MODELS

# a recipe budget: a uniform plan's width (the mixed plan gets its size), or a weight-size limit
BUDGET_KEYS = ("uniform_bits", *BUDGET_UNITS["weight_bits"])
EMBEDDED_MODELS = tuple(BUILDERS)
MODELS = EMBEDDED_MODELS + TORCHVISION_MODELS + tuple(HF_MODELS)
# the keywords each family takes for [model] weights and [data] folder; anything else is a path
WEIGHT_WORDS = {"embedded": ("embedded", "random"), "torchvision": ("torchvision", "random"), "hf": ("random",)}
DATA_WORDS = {"embedded": ("embedded", "download"), "torchvision": ("synthetic",), "hf": ("synthetic",)}
KEYS = {
    "model": ("name", "weights", "checkpoint"),
    "data": ("folder", "calibration", "evaluation", "batch_size"),
    "profile": ("bits", "rel_tol", "max_probes", "probes_per_batch", "seed", "engine", "omega_trace", "sensitivity"),
    "solve": ("candidates", "budgets", "pin_first_last"),
    "export": ("budget_index", "opset", "target", "int8"),
}
SMOKE_ENGINE = "double_backward"  # a smoke run takes one engine instead of timing all of them


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str = "resnet20"
    # "embedded" (hawq's checkpoint) | "torchvision" (download) | "random" | the path of a state_dict
    checkpoint: str = "embedded"
    # "embedded" | "download" | an IDX folder (Fashion-MNIST); an ImageNet-style folder | "synthetic"
    data_dir: str = "embedded"
    n_calibration: int = 1000
    n_evaluation: int = 0  # evaluation images after the calibration ones; 0 = all the rest
    batch_size: int = 200
    profile_bits: tuple[int, ...] = (2, 3, 4, 8)
    rel_tol: float = 0.05
    max_probes: int = 64
    probes_per_batch: int = 1
    seed: int = 0
    engine: str = "auto"  # HVP engine: "auto" times one probe of each
    omega_trace: str = "upper"  # the trace Ω uses: "upper" (95% bound) | "mean" (see hawq.profile)
    sensitivity: str = DEFAULT_SENSITIVITY  # how Ω is made: "trace" | "perturbed" | "perturbed_cross" (hawq.profile)
    candidates: tuple[int, ...] = (2, 4, 8)
    budgets: tuple[dict[str, float], ...] = ({"uniform_bits": 8}, {"uniform_bits": 4}, {"uniform_bits": 3})
    pin_first_last: bool = True
    export_budget: int = 1  # index into budgets of the plan to export
    opset: int = 21
    target: str = "ort"  # runtime the ONNX file is legalised for: "ort" | "tensorrt"
    int8: str = ORT_INT8[0]  # ort: how 8-bit layers stay exact on every CPU (hawq.legalize.ORT_INT8)

    @property
    def quant_target(self) -> Target:
        """The runtime the job quantizes for (hawq.quantize's target): the [export] target and int8."""
        return Target(self.target, self.int8)

    @property
    def family(self) -> str:
        """"embedded" (1x28x28 Fashion-MNIST models), "torchvision" (3x224x224 ImageNet models) or
        "hf" (Hugging Face transformers fed token ids, hawq.hf)."""
        return family_of(self.model)

    def smoke(self) -> Recipe:
        """The same job shrunk so that every stage runs in seconds to a minute, needing no
        checkpoint and no data set: random weights; the embedded test images (Fashion models)
        or seeded random images with random labels (ImageNet models); 4-8 calibration and 8
        evaluation images in one or two batches; 2 probes with one fixed HVP engine; only the
        exported budget; on the ImageNet models, each layer's Ω without the cross-layer terms
        (their forward-mode pass takes minutes at 224×224; the embedded models keep them). It
        checks that the model goes through the pipeline, not how well."""
        tv = self.family == "torchvision"
        cheap = "perturbed" if tv and self.sensitivity == "perturbed_cross" else self.sensitivity
        return replace(self, name=f"{self.name}-smoke", checkpoint="random",
                       data_dir="embedded" if self.family == "embedded" else "synthetic",
                       n_calibration=4 if tv else 8, n_evaluation=8,
                       batch_size=4, max_probes=2, probes_per_batch=2,
                       engine=SMOKE_ENGINE if self.engine == "auto" else self.engine,
                       budgets=(self.budgets[self.export_budget],), export_budget=0, sensitivity=cheap)

    def check_inputs(self) -> None:
        """Raise a ConfigError naming what to set when the weights file or the data folder the
        recipe points to does not exist (e.g. a ready-made recipe's placeholder paths)."""
        missing = []
        if self.family == "hf":
            self._check_hf_inputs()
            return
        if self.checkpoint == "embedded" and not checkpoint_path(self.model).is_file():
            missing.append(f"[model] checkpoint to a state_dict file (this hawq has no embedded {self.model} checkpoint)")
        elif self.checkpoint not in WEIGHT_WORDS[self.family] and not Path(self.checkpoint).is_file():
            key, what = ("weights", 'a state_dict file or "torchvision" (downloads)') if self.family == "torchvision" \
                else ("checkpoint", 'a state_dict file or "embedded"')
            missing.append(f"[model] {key} to {what} (now {self.checkpoint!r}, not found)")
        if self.data_dir not in DATA_WORDS[self.family] and not Path(self.data_dir).is_dir():
            what = "an ImageNet-style folder (one subfolder per class)" if self.family == "torchvision" \
                else 'a folder with the Fashion-MNIST IDX files, "embedded" or "download"'
            missing.append(f"[data] folder to {what} (now {self.data_dir!r}, not found)")
        if missing:
            raise ConfigError(f"recipe {self.name}: set {' and '.join(missing)}; or run it with --smoke")

    def _check_hf_inputs(self) -> None:
        """check_inputs for a Hugging Face model: a save_pretrained folder or "random"; data
        "synthetic" or a JSON-lines file, which needs the folder's tokenizer."""
        missing = []
        if self.checkpoint != "random" and not Path(self.checkpoint).is_dir():
            missing.append(f'[model] checkpoint to a folder saved by save_pretrained or "random" '
                           f"(now {self.checkpoint!r}, not found)")
        if self.data_dir != "synthetic" and not Path(self.data_dir).is_file():
            missing.append(f'[data] folder to a JSON-lines file of {{"text": ..., "label": ...}} or "synthetic" '
                           f"(now {self.data_dir!r}, not found)")
        elif self.data_dir != "synthetic" and self.checkpoint == "random":
            missing.append("[model] checkpoint to the folder whose tokenizer reads the texts of [data] folder")
        if missing:
            raise ConfigError(f"recipe {self.name}: set {' and '.join(missing)}; or run it with --smoke")


def family_of(model: str) -> str:
    """The family of a known model name (see Recipe.family)."""
    if model in HF_MODELS:
        return "hf"
    return "embedded" if model in EMBEDDED_MODELS else "torchvision"


def _get(table: dict, key: str, kind, default, where: str):
    v = table.get(key, default)
    if kind is tuple:
        if not isinstance(v, (list, tuple)) or not all(isinstance(b, int) and not isinstance(b, bool) for b in v) or not v:
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


def _choice(table: dict, key: str, accepted: tuple[str, ...], default: str, where: str) -> str:
    v = _get(table, key, str, default, where)
    if v not in accepted:
        raise ConfigError(f"{where}.{key} {v!r} is not accepted; choose one of {', '.join(accepted)}")
    return v


def default_recipe() -> Recipe:
    """The embedded default (the same job as recipes/fashion_resnet20.toml)."""
    return Recipe(name="fashion_resnet20")


def _sections(d: dict, p: Path) -> list[dict]:
    """The five tables of a parsed recipe, each checked for unknown keys."""
    unknown = set(d) - set(KEYS) - {"name"}
    if unknown:
        raise ConfigError(f"recipe {p}: unknown section(s) {sorted(unknown)}; accepted: {sorted([*KEYS, 'name'])}")
    tables = []
    for section, keys in KEYS.items():
        t = d.get(section, {})
        if not isinstance(t, dict):
            raise ConfigError(f"recipe {p}: {section} must be a table ([{section}]), not {t!r}")
        bad = set(t) - set(keys)
        if bad:
            raise ConfigError(f"recipe {p}: unknown key(s) {sorted(bad)} in [{section}]; accepted: {', '.join(keys)}")
        tables.append(t)
    return tables


def _weights(m: dict, family: str) -> str:
    """[model] weights, or checkpoint (its other name, kept for the Fashion-MNIST recipes)."""
    if "weights" in m and "checkpoint" in m:
        raise ConfigError("model.weights and model.checkpoint name the same thing; give only one")
    key = "checkpoint" if "checkpoint" in m else "weights"
    default = WEIGHT_WORDS[family][0]
    v = _get(m, key, str, default, "model")
    other = WEIGHT_WORDS["torchvision" if family == "embedded" else "embedded"][0]
    if v == other:
        raise ConfigError(f"model.{key} {v!r} is for the other family of models; this one takes "
                          f"{' or '.join(repr(w) for w in WEIGHT_WORDS[family])} or the path of a state_dict")
    return v


def _data_folder(da: dict, model: str, family: str) -> str:
    """[data] folder; the torchvision models have no default (random images would go unnoticed)."""
    if family == "torchvision" and "folder" not in da:
        raise ConfigError(f"{model} needs [data] folder: an ImageNet-style folder (one subfolder of images per class), "
                          'or "synthetic" for random images')
    if family == "hf" and "folder" not in da:
        raise ConfigError(f'{model} needs [data] folder: a JSON-lines file of {{"text": ..., "label": ...}}, '
                          'or "synthetic" for random token ids')
    return _get(da, "folder", str, "embedded", "data")


def _default_budgets(profile_bits: tuple[int, ...]) -> list[dict[str, float]]:
    """Uniform 8, 4 and 3 bits, those of them profiled; else the three widest profiled widths."""
    widths = [b for b in (8, 4, 3) if b in profile_bits] or sorted(set(profile_bits), reverse=True)[:3]
    return [{"uniform_bits": b} for b in widths]


def _budgets(so: dict, profile_bits: tuple[int, ...]) -> tuple[dict[str, float], ...]:
    budgets = so.get("budgets", _default_budgets(profile_bits))
    if not isinstance(budgets, list) or not budgets:
        raise ConfigError(f"solve.budgets must be a non-empty list like [{{uniform_bits = 4}}], not {budgets!r}")
    for b in budgets:
        if not isinstance(b, dict) or len(b) != 1 or next(iter(b)) not in BUDGET_KEYS:
            raise ConfigError(f"solve.budgets entries must each have one key of {BUDGET_KEYS}, not {b!r}")
        v = next(iter(b.values()))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"solve.budgets entry {b!r} must have a positive number")
    return tuple(dict(b) for b in budgets)


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe file (paths it names are checked when they are used)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe {path} not found; give a .toml file (see recipes/)")
    try:
        d = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {p} is not valid TOML: {e}") from e
    m, da, pr, so, ex = _sections(d, p)
    model = _get(m, "name", str, "resnet20", "model")
    if model not in MODELS:
        raise ConfigError(f"model.name {model!r} is not known; accepted: {', '.join(MODELS)}")
    family = family_of(model)
    name = d.get("name", p.stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"recipe {p}: name must be a non-empty string, not {name!r}")
    profile_bits = _get(pr, "bits", tuple, (2, 3, 4, 8), "profile")
    _check_widths(profile_bits, "profile.bits")
    # without a [solve] choice, candidates and budgets follow the profiled widths
    candidates = _get(so, "candidates", tuple, tuple(b for b in (2, 4, 8) if b in profile_bits) or profile_bits, "solve")
    _check_widths(candidates, "solve.candidates")
    budgets = _budgets(so, profile_bits)
    r = Recipe(
        name=name,
        model=model,
        checkpoint=_weights(m, family),
        data_dir=_data_folder(da, model, family),
        n_calibration=_get(da, "calibration", int, 1000, "data"),
        n_evaluation=_get(da, "evaluation", int, 0, "data"),
        batch_size=_get(da, "batch_size", int, 200, "data"),
        profile_bits=profile_bits,
        rel_tol=_number(pr, "rel_tol", 0.05, "profile"),
        max_probes=_get(pr, "max_probes", int, 64, "profile"),
        probes_per_batch=_get(pr, "probes_per_batch", int, 1, "profile"),
        seed=_get(pr, "seed", int, 0, "profile"),
        engine=_choice(pr, "engine", ("auto", *ENGINES), "auto", "profile"),
        omega_trace=_choice(pr, "omega_trace", OMEGA_TRACES, "upper", "profile"),
        sensitivity=_choice(pr, "sensitivity", SENSITIVITIES, DEFAULT_SENSITIVITY, "profile"),
        candidates=candidates,
        budgets=budgets,
        pin_first_last=_get(so, "pin_first_last", bool, True, "solve"),
        export_budget=_get(ex, "budget_index", int, min(1, len(budgets) - 1), "export"),
        opset=_get(ex, "opset", int, 21, "export"),
        target=_choice(ex, "target", TARGETS, "ort", "export"),
        int8=_choice(ex, "int8", ORT_INT8, ORT_INT8[0], "export"),
    )
    _check(r)
    return r


def _check_widths(bits: tuple, key: str) -> None:
    if not all(2 <= b <= 16 for b in bits):  # _get has checked it is a non-empty list of integers
        raise ConfigError(f"{key} must be widths in 2..16 like [2, 4, 8], not {list(bits)}")


def _check(r: Recipe) -> None:
    """Constraints between values of a parsed recipe."""
    other = DATA_WORDS["torchvision" if r.family == "embedded" else "embedded"]
    if r.data_dir in other and r.data_dir not in DATA_WORDS[r.family]:
        raise ConfigError(f"data.folder {r.data_dir!r} is for the other family of models; {r.model} takes "
                          f"{' or '.join(repr(w) for w in DATA_WORDS[r.family])} or a folder")
    if not set(r.candidates) <= set(r.profile_bits):
        raise ConfigError(f"solve.candidates {list(r.candidates)} must be a subset of profile.bits {list(r.profile_bits)}")
    bad = [b["uniform_bits"] for b in r.budgets if "uniform_bits" in b and b["uniform_bits"] not in r.profile_bits]
    if bad:
        raise ConfigError(f"solve.budgets uniform_bits {bad} must be among profile.bits {list(r.profile_bits)}")
    if not 0 <= r.export_budget < len(r.budgets):
        raise ConfigError(f"export.budget_index must be in 0..{len(r.budgets) - 1}, not {r.export_budget}")
    if r.n_evaluation < 0:
        raise ConfigError(f"data.evaluation must be >= 0 (0: all remaining images), not {r.n_evaluation}")
    if r.n_calibration < 1:
        raise ConfigError(f"data.calibration must be >= 1, not {r.n_calibration}")
    if r.batch_size < 1 or r.max_probes < 2 or r.probes_per_batch < 1:
        raise ConfigError("data.batch_size and profile.probes_per_batch must be >= 1, and profile.max_probes >= 2")
