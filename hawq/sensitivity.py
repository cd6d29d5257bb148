"""Profile: per-layer Hessian traces and Ω_l(b) = Tr(H_l)/n_l · ‖Q_b(W_l) − W_l‖²; JSON I/O."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from . import quant
from .artifacts import JsonArtifact, fingerprint_obj, fingerprint_tensors, read_json, write_json
from .batches import Objective, forward, num_samples, take, tensors, to_device
from .errors import ArtifactError, ConfigError, DataError
from .graph import EMBEDDING_KINDS, fold_bn, layer_keys, select_layers, trace_layers
from .hessian import TraceResult, TraceState, activation_traces, choose_k, hutchinson_traces, world
from .perturbation import TermsState, perturbation_terms, perturbed_losses

log = logging.getLogger(__name__)
FORMAT, VERSION = "profile", 1
DEFAULT_BITS = (2, 4, 8)


@dataclass(frozen=True)
class LayerProfile:
    name: str
    kind: str
    weight_shape: tuple[int, ...]
    params: int
    macs: int
    trace: float  # mean of the per-probe estimates of Tr(H_l)
    trace_se: float  # standard error of that mean
    probes: int
    sq_error: dict[int, float]  # bits -> ‖Q_b(W) − W‖²
    omega: dict[int, float]  # bits -> Tr(H)/n · ‖Q_b(W) − W‖², Tr as settings["omega_trace"] says (absent: "mean")
    # the input activation: elements per sample (0 in profiles older than this field); when
    # profiled (Profile.act_bits): the Hessian trace w.r.t. it (mean over samples), its
    # quantization error per sample, and Ω_a(a_bits)
    act_elems: int = 0
    act_trace: float | None = None
    act_trace_se: float | None = None
    act_sq_error: dict[int, float] = field(default_factory=dict)  # a_bits -> mean ‖Q_a(x) − x‖² per sample
    act_omega: dict[int, float] = field(default_factory=dict)  # a_bits -> Tr(H_x)/n_x · that error

    @property
    def rel_se(self) -> float:
        return self.trace_se / abs(self.trace) if self.trace else math.inf

    @property
    def ci95(self) -> tuple[float, float]:
        return (self.trace - 1.96 * self.trace_se, self.trace + 1.96 * self.trace_se)


@dataclass(frozen=True)
class Interaction:
    """The cross-layer term of the loss model between layers a and b (a profiled before b):
    terms[i][k] = Δ_a(bits[i])ᵀ G Δ_b(bits[k]), the loss change that rounding both adds to the sum
    of rounding each alone, to second order (G: the Gauss-Newton matrix; hawq.perturbation)."""
    a: str
    b: str
    terms: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Profile(JsonArtifact):
    """A model's per-layer sensitivities Ω(bits) with params, MACs and traces, the groups and
    residual pairs the graph gives, optional cross-layer terms, and the fingerprints of the
    weights, data and settings it was made from (profile.json)."""

    KIND, VERSION = FORMAT, VERSION
    layers: tuple[LayerProfile, ...]  # execution order: first is the input layer, last the output
    bits: tuple[int, ...]
    groups: tuple[tuple[str, ...], ...] = ()  # layers reading the same input tensor
    unconverged: tuple[str, ...] = ()
    fingerprints: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    residual: tuple[tuple[str, ...], ...] = ()  # layers whose outputs meet at a residual add
    act_bits: tuple[int, ...] = ()  # activation widths with Ω_a on every layer; () if not profiled
    interactions: tuple[Interaction, ...] = ()  # cross-layer terms (sensitivity "perturbed_cross"); () if none
    skipped: tuple[str, ...] = ()  # quantizable layers of the model left out by profile(layers=, exclude=): kept in float

    def __post_init__(self) -> None:
        names = [l.name for l in self.layers]
        if not names:
            raise ArtifactError("a profile needs at least one layer")
        if len(set(names)) != len(names):
            raise ArtifactError("a profile has duplicate layer names")
        order = {n: i for i, n in enumerate(names)}
        seen = set()
        for it in self.interactions:
            if not (it.a in order and it.b in order and order[it.a] < order[it.b]) or (it.a, it.b) in seen:
                raise ArtifactError(f"interaction {it.a!r}–{it.b!r} must name two profiled layers in order, once")
            seen.add((it.a, it.b))
            if len(it.terms) != len(self.bits) or any(len(r) != len(self.bits) for r in it.terms) or \
                    not all(math.isfinite(v) for r in it.terms for v in r):
                raise ArtifactError(f"interaction {it.a!r}–{it.b!r} needs {len(self.bits)}×{len(self.bits)} "
                                    "finite terms, one per pair of widths")
        for l in self.layers:
            if set(l.omega) != set(self.bits):
                raise ArtifactError(f"layer {l.name} has Ω for bits {sorted(l.omega)}, expected {sorted(self.bits)}")
            if set(l.act_omega) != set(self.act_bits):
                raise ArtifactError(f"layer {l.name} has activation Ω for bits {sorted(l.act_omega)}, "
                                    f"expected {sorted(self.act_bits)}")

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.layers]

    @property
    def sensitivity(self) -> str:
        """How Ω was made (SENSITIVITIES); profiles from before the choice are "trace"."""
        return self.settings.get("sensitivity", "trace")

    @property
    def measured(self) -> bool:
        """Whether Ω was measured by rounding each layer alone (no probes): the perturbed models."""
        return self.sensitivity in PERTURBED

    @property
    def effort(self) -> str:
        """What the sensitivities cost, in their own unit: "88 perturbed forward passes" or "65 probes"."""
        passes = len(self.layers) * len(self.bits)
        if self.sensitivity == "perturbed_cross":
            return f"{passes} perturbed forward passes and {passes} forward-mode products per batch"
        if self.sensitivity == "perturbed":
            return f"{passes} perturbed forward passes"
        return f"{max((l.probes for l in self.layers), default=0)} probes"

    def cross_omega(self, w_bits: Mapping[str, int]) -> float:
        """The cross-layer part of the predicted loss change of a plan: Σ over interactions of the
        term at the two layers' widths (0 for a profile without interactions).

        w_bits: layer name → weight width, for every layer (widths among `bits`).
        """
        at = {b: i for i, b in enumerate(self.bits)}
        return math.fsum(it.terms[at[w_bits[it.a]]][at[w_bits[it.b]]] for it in self.interactions)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = self.format()
        for l in d["layers"]:
            for key in ("omega", "sq_error", "act_omega", "act_sq_error"):
                l[key] = {str(k): v for k, v in l[key].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Profile":
        try:
            layers = tuple(
                LayerProfile(
                    name=l["name"], kind=l["kind"], weight_shape=tuple(l["weight_shape"]), params=int(l["params"]),
                    macs=int(l["macs"]), trace=float(l["trace"]), trace_se=float(l["trace_se"]), probes=int(l["probes"]),
                    sq_error={int(k): float(v) for k, v in l["sq_error"].items()},
                    omega={int(k): float(v) for k, v in l["omega"].items()},
                    act_elems=int(l.get("act_elems", 0)),
                    act_trace=None if l.get("act_trace") is None else float(l["act_trace"]),
                    act_trace_se=None if l.get("act_trace_se") is None else float(l["act_trace_se"]),
                    act_sq_error={int(k): float(v) for k, v in l.get("act_sq_error", {}).items()},
                    act_omega={int(k): float(v) for k, v in l.get("act_omega", {}).items()},
                )
                for l in d["layers"]
            )
            prof = cls(
                layers=layers, bits=tuple(int(b) for b in d["bits"]), groups=tuple(tuple(g) for g in d.get("groups", ())),
                unconverged=tuple(d.get("unconverged", ())), fingerprints=dict(d.get("fingerprints", {})),
                settings=dict(d.get("settings", {})), seconds=float(d.get("seconds", 0.0)),
                residual=tuple(tuple(g) for g in d.get("residual", ())),
                act_bits=tuple(int(b) for b in d.get("act_bits", ())),
                interactions=tuple(Interaction(str(it["a"]), str(it["b"]),
                                               tuple(tuple(float(v) for v in row) for row in it["terms"]))
                                   for it in d.get("interactions", ())),
                skipped=tuple(str(n) for n in d.get("skipped", ())),
            )
            _check_loaded(prof)
            return prof
        except (KeyError, TypeError, ValueError, AttributeError, ArtifactError) as e:
            raise ArtifactError(f"malformed profile ({e.__class__.__name__}: {e}); regenerate it with `hawq profile`") from e


def _check_loaded(prof: "Profile") -> None:
    """ValueError if a loaded profile holds values no profile run can give (e.g. edited by hand):
    widths out of range, counts below 1, negative or non-finite Ω, a width without its Ω."""
    _widths(prof.bits, "bits")
    _widths(prof.act_bits, "act_bits")
    names = [l.name for l in prof.layers]
    if not names or len(set(names)) != len(names):
        raise ValueError("layers must be non-empty with unique names")
    for l in prof.layers:
        if l.params < 1 or l.macs < 0:
            raise ValueError(f"layer {l.name}: params {l.params} and macs {l.macs} must be at least 1 and 0")
        for what, table, need in (("omega", l.omega, prof.bits), ("act_omega", l.act_omega, prof.act_bits)):
            if not set(need) <= set(table) or not all(0 <= v < math.inf for v in table.values()):
                raise ValueError(f"layer {l.name}: {what} must give a finite value >= 0 at each of {list(need)}, "
                                 f"not {table}")


OMEGA_TRACES = ("upper", "mean")
SENSITIVITIES = ("trace", "perturbed", "perturbed_cross")
PERTURBED = ("perturbed", "perturbed_cross")
# chosen by benchmarks/quality.py, prediction.py and solver_scale.py --cross-profile (README: "Which sensitivity",
# "Quality at a budget"): perturbed_cross plans better, but its ILP is too slow for a frontier yet
DEFAULT_SENSITIVITY = "perturbed"
Z95 = 1.96  # the upper end of a two-sided 95% interval


def omega_z(omega_trace: str | None) -> float:
    """Standard errors above the mean of the trace Ω takes: Z95 for "upper", 0 for "mean" (and for
    None: profiles whose settings predate the choice used the mean)."""
    return Z95 if omega_trace == "upper" else 0.0


def omega_table(trace: float, sq_error: dict[int, float], params: int) -> dict[int, float]:
    return {b: max(trace, 0.0) / params * e for b, e in sq_error.items()}


def _widths(bits: Iterable[int], what: str) -> tuple[int, ...]:
    """`bits` as sorted unique ints, each a width the quantizers take; ConfigError otherwise."""
    try:
        out = tuple(sorted({int(b) for b in bits}))
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be integer widths like (2, 4, 8), not {bits!r}") from None
    bad = [b for b in out if not quant.MIN_BITS <= b <= quant.MAX_BITS]
    if bad:
        raise ConfigError(f"{what} {bad} out of range: widths must be in {quant.MIN_BITS}..{quant.MAX_BITS}")
    return out


def profile(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: Iterable[tuple[torch.Tensor, torch.Tensor]],
    bits: Iterable[int] = DEFAULT_BITS,
    *,
    rel_tol: float = 0.05,
    max_probes: int = 200,
    min_probes: int = 8,
    seed: int = 0,
    probes_per_batch: int | str = 1,
    engine: str = "auto",
    weight_method: str = "mse",
    device: str | torch.device = "cpu",
    progress: bool = False,
    cache: str | Path | None = None,
    a_bits: Iterable[int] = (),
    act_symmetric: bool = False,
    omega_trace: str = "upper",
    sensitivity: str = DEFAULT_SENSITIVITY,
    layers: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] = (),
) -> Profile:
    """Per-layer Hessian traces (Hutchinson, Rademacher probes over all layers at once) and Ω(b).

    BatchNorm is folded first (eval mode, dropout off), so traces and quantization errors refer
    to the same folded weights the rewriter quantizes. The caller's model is not changed.
    `engine`: "auto" times one probe of each HVP engine and keeps the fastest (see
    hawq.hessian.ENGINES). With `cache`, a profile saved there from the same weights, data and
    settings is loaded instead of recomputed; otherwise the run checkpoints after each round to
    `<cache>.partial` (resumed by the next call with the same inputs; the cross-layer pass of
    "perturbed_cross" after each batch, to `<cache>.cross.partial`) and saves the profile there. Under torch.distributed the data rounds are split across processes; rank 0 writes.
    `probes_per_batch`: k probes on each batch per round, or "auto": the most (≤ 8) whose memory
    fits in half the free memory (hawq.hessian.choose_k; recorded in settings["k"]).
    `a_bits`: activation widths to profile too (HAWQ-V3's activation sensitivity): a second
    Hutchinson run estimates each layer input's Hessian trace, and Ω_a(a) uses the rewriter's
    per-tensor min/max quantizer (affine, or symmetric with `act_symmetric`, as for TensorRT).
    `omega_trace`: the trace Ω uses: "upper", the upper end of its 95% interval (mean + 1.96 SE),
    or "mean", the estimate itself. A layer whose trace is zero within its noise has Ω = 0 at every
    width with "mean" (the trace clamps at 0), so the ILP spends it first; "upper" charges it what
    the noise allows.
    `sensitivity`: how Ω(b) is made (SENSITIVITIES). "trace": HAWQ-V2's Tr(H)/n · ‖ΔW‖² above.
    "perturbed": the exact loss change of rounding that layer alone at b (hawq.perturbation.
    perturbed_losses: one forward pass over the data per layer and width, no probes, no noise);
    a layer's `trace` then holds the trace an isotropic model would need for the same Ω at the
    narrowest width (n · Ω / ‖ΔW‖²), with no standard error and 0 probes. "perturbed_cross": the
    same Ω, plus the cross-layer terms Δ_aᵀ G Δ_b of every pair of layers and widths (Gauss-Newton
    G; hawq.perturbation.perturbation_terms: one forward-mode product per layer and width per
    batch) as `interactions`, which solve() then optimises with Ω (a quadratic model of the loss).
    `loss_fn`: the loss in any form hawq.batches.Objective takes: fn(output, target), fn(model,
    batch), or None for the model's own `output.loss` (cross-entropy of the logits where it has
    none); `data`: batches in any form of hawq.batches (tuples, dicts of tensors, ragged lengths).
    `layers` / `exclude`: names or regular expressions (matched whole) of the Conv2d/Linear layers
    to profile, and of those to leave out (a classifier head, say); the others are not profiled,
    stay in float in every plan made from this profile (`Profile.skipped`), and their weights'
    gradients are never needed. Default: every Conv2d and Linear layer the forward pass calls (one
    it never calls, as nn.MultiheadAttention's out_proj, whose weight it reads itself, is skipped
    too: there is nothing to quantize). An nn.Embedding is
    profiled only when `layers` names it: weight-only (per-row scales; its activation width has
    no effect, its input being token ids).
    """
    t0 = time.time()
    bits, a_bits = _widths(bits, "bits"), _widths(a_bits, "a_bits")
    if not bits:
        raise ConfigError("bits must name at least one weight width, e.g. (2, 4, 8)")
    batches = [to_device(b, device) for b in data]
    if not batches or sum(num_samples(b) for b in batches) == 0:
        raise DataError("profile data is empty; give at least one (input, target) batch")
    loss_fn = Objective(loss_fn)
    _check_profile_options(probes_per_batch, max_probes, rel_tol, omega_trace, sensitivity)
    settings = {"rel_tol": rel_tol, "max_probes": max_probes, "min_probes": min_probes, "seed": seed,
                "probes_per_batch": probes_per_batch, "weight_method": weight_method, "bits": list(bits)}
    if sensitivity != "trace":  # trace profiles made before the choice existed keep their fingerprints
        settings["sensitivity"] = sensitivity
    elif omega_trace != "mean":  # profiles made before the choice existed used the mean: their caches still match
        settings["omega_trace"] = omega_trace
    if a_bits:  # only then: profiles of weights alone keep their fingerprints
        settings.update(a_bits=list(a_bits), act_symmetric=act_symmetric)
    if layers is not None or exclude:  # likewise: profiles of every layer keep theirs
        settings.update(layers=None if layers is None else layer_keys(layers), exclude=layer_keys(exclude))
    fingerprints = {
        "weights": fingerprint_tensors(dict(model.state_dict())),
        "data": fingerprint_tensors({f"{i}.{j}": t for i, b in enumerate(batches) for j, t in enumerate(tensors(b))}),
        "settings": fingerprint_obj(settings),
    }
    if cache is not None:
        cached = _load_cached(Path(cache), fingerprints)
        if cached is not None:
            return cached
    folded = fold_bn(model).to(device).eval()
    graph = select_layers(trace_layers(folded, take(batches[0], 0, 1), embeddings=True), layers, exclude)
    mods = dict(folded.named_modules())
    weights = {l.name: mods[l.name].weight for l in graph.layers}
    for w in weights.values():  # a frozen model (requires_grad=False) still has curvature; the copy is ours
        w.requires_grad_(True)
    sq = {n: {b: quant.weight_sq_error(w, b, weight_method) for b in bits} for n, w in weights.items()}
    checkpoint = None if cache is None else Path(f"{cache}.partial")
    k = probes_per_batch
    if k == "auto" and (sensitivity == "trace" or a_bits):
        k = _auto_k(folded, loss_fn, batches[0], list(weights.values()), engine)
    interactions: tuple[Interaction, ...] = ()
    z = omega_z(omega_trace)  # how many standard errors the traces Ω uses add (weights and inputs)
    if sensitivity in PERTURBED:
        deltas = perturbed_losses(
            folded, loss_fn, batches, {n: mods[n] for n in weights}, bits, weight_method=weight_method,
            done=None if checkpoint is None else _load_perturbed(checkpoint, fingerprints, bits),
            on_layer=None if checkpoint is None else lambda t: _save_perturbed(checkpoint, fingerprints, t))
        weight_stats = {n: _Stat(_effective_trace(deltas[n], sq[n], weights[n].numel())) for n in weights}
        omegas = {n: {b: max(v, 0.0) for b, v in deltas[n].items()} for n in weights}
        unconverged, extra = [], {}
        if sensitivity == "perturbed_cross":
            t = time.time()
            cross = None if cache is None else Path(f"{cache}.cross.partial")
            terms = perturbation_terms(folded, loss_fn, batches, {n: mods[n] for n in weights}, bits,
                                       curvature="ggn", weight_method=weight_method,
                                       state=None if cross is None else _load_cross(cross, fingerprints, list(weights), bits),
                                       on_batch=None if cross is None else lambda st: _save_cross(cross, fingerprints, st))
            interactions = tuple(Interaction(a, b, m) for a, b, m in terms.pairs())
            extra["cross_seconds"] = round(time.time() - t, 3)
    else:
        importance = {n: sq[n][bits[0]] / weights[n].numel() for n in weights}
        est = hutchinson_traces(folded, loss_fn, batches, weights, importance=importance, rel_tol=rel_tol,
                                max_probes=max_probes, min_probes=min_probes, probes_per_batch=k,
                                seed=seed, engine=engine, progress=progress,
                                state=None if checkpoint is None else _load_checkpoint(checkpoint, fingerprints, list(weights)),
                                on_round=None if checkpoint is None else lambda st: _save_checkpoint(checkpoint, fingerprints, st))
        weight_stats = est.layers
        omegas = {n: omega_table(_checked_trace(n, "", est.layers[n], z), sq[n], weights[n].numel()) for n in weights}
        unconverged = list(est.unconverged)
        extra = {"engine": est.engine, "probes": est.probes, "rounds": est.rounds,
                 "engine_seconds": round(est.engine_seconds, 3)}
    act: TraceResult | None = None
    if a_bits:  # an embedding's input is token ids: no activation quantizer, Ω_a 0
        elems = {l.name: math.prod(l.in_shape) for l in graph.layers if l.kind not in EMBEDDING_KINDS}
        act_sq = act_sq_errors(folded, list(elems), batches, a_bits, act_symmetric)
        act_checkpoint = None if cache is None else Path(f"{cache}.act.partial")
        act = activation_traces(
            folded, loss_fn, batches, {l.name: l.in_shape for l in graph.layers if l.name in elems},
            importance={n: act_sq[n][a_bits[0]] / elems[n] for n in elems}, rel_tol=rel_tol, max_probes=max_probes,
            min_probes=min_probes, probes_per_batch=k, seed=seed, engine="auto", progress=progress,
            state=None if act_checkpoint is None else _load_checkpoint(act_checkpoint, fingerprints, list(elems)),
            on_round=None if act_checkpoint is None else lambda st: _save_checkpoint(act_checkpoint, fingerprints, st))
        unconverged += [f"{n} (input)" for n in act.unconverged]
        extra.update(act_engine=act.engine, act_probes=act.probes)
    rows = []
    for l in graph.layers:
        e = weight_stats[l.name]
        n_x = math.prod(l.in_shape)
        row: dict[str, Any] = {"act_elems": n_x}
        if act is not None and l.name not in act.layers:  # an embedding
            row.update(act_trace=0.0, act_trace_se=0.0, act_sq_error=dict.fromkeys(a_bits, 0.0),
                       act_omega=dict.fromkeys(a_bits, 0.0))
        elif act is not None:
            a = act.layers[l.name]
            row.update(act_trace=a.mean, act_trace_se=a.se, act_sq_error=act_sq[l.name],
                       act_omega=omega_table(_checked_trace(l.name, " input", a, z), act_sq[l.name], n_x))
        rows.append(LayerProfile(l.name, l.kind, l.weight_shape, l.params, l.macs, e.mean, e.se, e.n, sq[l.name],
                                   omegas[l.name], **row))
    result = Profile(tuple(rows), bits, graph.groups, tuple(unconverged), fingerprints, {**settings, "k": k, **extra},
                     time.time() - t0, graph.residual, a_bits, interactions, graph.skipped)
    if cache is not None and world()[0] == 0:
        result.save(cache)
        checkpoint.unlink(missing_ok=True)
        Path(f"{cache}.act.partial").unlink(missing_ok=True)
        Path(f"{cache}.cross.partial").unlink(missing_ok=True)
    return result


def _check_profile_options(probes_per_batch: Any, max_probes: Any, rel_tol: Any, omega_trace: Any,
                           sensitivity: Any) -> None:
    """ConfigError on the first of profile()'s options that is out of range (see profile)."""
    if probes_per_batch != "auto" and (isinstance(probes_per_batch, bool) or not isinstance(probes_per_batch, int)
                                       or probes_per_batch < 1):
        raise ConfigError(f"probes_per_batch must be a positive integer or 'auto', not {probes_per_batch!r}")
    if isinstance(max_probes, bool) or not isinstance(max_probes, int) or max_probes < 2:
        raise ConfigError(f"max_probes must be an integer of at least 2 to estimate a standard error, not {max_probes!r}")
    if isinstance(rel_tol, bool) or not (isinstance(rel_tol, (int, float)) and 0 <= rel_tol < math.inf):
        raise ConfigError(f"rel_tol must be a number >= 0 (a relative standard error, e.g. 0.05; 0: run to "
                          f"max_probes), not {rel_tol!r}")
    if omega_trace not in OMEGA_TRACES:
        raise ConfigError(f"omega_trace must be one of {', '.join(OMEGA_TRACES)}, not {omega_trace!r}")
    if sensitivity not in SENSITIVITIES:
        raise ConfigError(f"sensitivity must be one of {', '.join(SENSITIVITIES)}, not {sensitivity!r}")


class _Stat(NamedTuple):
    """A deterministic stand-in for a trace estimate: mean, no standard error, no probes."""
    mean: float
    se: float = 0.0
    n: int = 0


def _effective_trace(delta: dict[int, float], sq: dict[int, float], params: int) -> float:
    """n · Ω / ‖ΔW‖² at the narrowest width: the trace HAWQ-V2's isotropic model would need to give
    the measured Ω there (0 when the rounding is exact or lowers the loss)."""
    b = min(delta)
    return params * max(delta[b], 0.0) / sq[b] if sq[b] > 0 else 0.0


def _auto_k(folded: nn.Module, loss_fn: Callable, batch, params: list, engine: str) -> int:
    """probes_per_batch="auto": the most probes per batch whose memory fits (hawq.hessian.choose_k)."""
    try:
        return choose_k(folded, loss_fn, batch, params, "jvp_vmap" if engine == "auto" else engine)
    except Exception as e:  # noqa: BLE001 — an engine without a rule for some op: measure another
        log.info("measuring probe memory with jvp_vmap failed (%s); using double_backward_batched", e)
        return choose_k(folded, loss_fn, batch, params, "double_backward_batched")


def _checked_trace(name: str, what: str, e, z: float = 0.0) -> float:
    """The trace Ω uses, mean + z·SE: warns when it is negative (Ω clamps to 0) or not finite
    (NaN counts as 0)."""
    t = e.mean + z * e.se
    if not math.isfinite(t):
        log.warning("layer %s%s: Hessian trace is not finite (%s ± %s); its Ω is set to 0", name, what, e.mean, e.se)
        return 0.0
    if t < 0:
        log.warning("layer %s%s: negative Hessian trace %.3g ± %.2g (non-convex); Ω clamped to 0", name, what, e.mean,
                    e.se)
    return t


@torch.no_grad()
def act_sq_errors(model: nn.Module, names: list[str], batches, a_bits: tuple[int, ...],
                  symmetric: bool = False) -> dict[str, dict[int, float]]:
    """Mean per-sample ‖Q_a(x) − x‖² of each named layer's input x at each width, with the
    rewriter's quantizer: per tensor, its range the min/max over all `batches`."""
    mods = dict(model.named_modules())

    def each_input(fn) -> None:
        hooks = [mods[n].register_forward_pre_hook(lambda m, inp, n=n: fn(n, inp[0])) for n in names]
        try:
            for b in batches:
                forward(model, b)
        finally:
            for h in hooks:
                h.remove()

    seen = {n: quant.MinMaxObserver() for n in names}
    each_input(lambda n, x: seen[n](x))
    qparams = quant.symmetric_act_qparams if symmetric else quant.act_qparams
    err = {n: dict.fromkeys(a_bits, 0.0) for n in names}

    def add(n: str, x: torch.Tensor) -> None:
        for b in a_bits:
            err[n][b] += float(((quant.fake_quant_act(x, *qparams(seen[n].lo, seen[n].hi, b)) - x) ** 2).sum())

    each_input(add)
    count = sum(num_samples(b) for b in batches)
    return {n: {b: e / count for b, e in row.items()} for n, row in err.items()}


def _write_checkpoint(path: Path, fingerprints: dict[str, str], key: str, payload: Any) -> None:
    write_json(path, {"format": f"hawq.{FORMAT}-checkpoint/{VERSION}", "fingerprints": fingerprints, key: payload})


def _read_checkpoint(path: Path, fingerprints: dict[str, str], parse: Callable[[dict], Any],
                     fits: Callable[[Any], bool]) -> Any:
    """`parse(file)` of an interrupted run's checkpoint made from the same weights, data and settings
    and that `fits` this run; None (with a log line saying why) otherwise."""
    if not path.is_file():
        return None
    try:
        d = read_json(path, f"{FORMAT}-checkpoint", VERSION)
        got = parse(d)
    except (ArtifactError, AttributeError, KeyError, TypeError, ValueError) as e:
        log.warning("ignoring the profiling checkpoint %s: %s", path, e)
        return None
    if d.get("fingerprints") != fingerprints or not fits(got):
        log.info("the profiling checkpoint %s was made from other inputs: starting afresh", path)
        return None
    return got


def _save_checkpoint(path: Path, fingerprints: dict[str, str], state: TraceState) -> None:
    _write_checkpoint(path, fingerprints, "state", state.to_dict())


def _load_checkpoint(path: Path, fingerprints: dict[str, str], names: list[str]) -> TraceState | None:
    """The state of an interrupted run with the same weights, data and settings, or None."""
    state = _read_checkpoint(path, fingerprints, lambda d: TraceState.from_dict(d["state"]),
                             lambda st: st.names == names)
    if state is not None:
        log.info("resuming the profile from %s (%d probes done)", path, state.n)
    return state


def _save_perturbed(path: Path, fingerprints: dict[str, str], table: Mapping[str, Mapping[int, float]]) -> None:
    _write_checkpoint(path, fingerprints, "perturbed", {n: {str(b): v for b, v in row.items()} for n, row in table.items()})


def _load_perturbed(path: Path, fingerprints: dict[str, str], bits: Sequence[int]) -> dict[str, dict[int, float]] | None:
    """The layers an interrupted perturbed profile with the same weights, data and settings measured, or None."""
    table = _read_checkpoint(
        path, fingerprints,
        lambda d: {str(n): {int(b): float(v) for b, v in row.items()} for n, row in d["perturbed"].items()},
        lambda t: all(set(row) == set(bits) for row in t.values()))
    if table is not None:
        log.info("resuming the profile from %s (%d layers done)", path, len(table))
    return table


def _save_cross(path: Path, fingerprints: dict[str, str], state: TermsState) -> None:
    _write_checkpoint(path, fingerprints, "cross", state.to_dict())


def _load_cross(path: Path, fingerprints: dict[str, str], names: list[str], bits: Sequence[int]) -> TermsState | None:
    """The sums of an interrupted cross-term pass with the same weights, data and settings, or None."""
    state = _read_checkpoint(path, fingerprints, lambda d: TermsState.from_dict(d["cross"]),
                             lambda st: list(st.names) == names and list(st.bits) == sorted(bits))
    if state is not None:
        log.info("resuming the cross-layer terms from %s (%d batches done)", path, state.batches)
    return state


def _load_cached(path: Path, fingerprints: dict[str, str]) -> Profile | None:
    if not path.is_file():
        return None
    try:
        old = Profile.load(path)
    except ArtifactError as e:
        log.warning("ignoring the cached profile: %s", e)
        return None
    changed = [k for k, v in fingerprints.items() if old.fingerprints.get(k) != v]
    if changed:
        log.info("cached profile %s was made from other %s: recomputing", path, " and ".join(changed))
        return None
    log.info("using the cached profile %s (same weights, data and settings)", path)
    return old
