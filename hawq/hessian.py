"""Per-layer Hessian traces by Hutchinson's method.

One Rademacher vector v is drawn over all quantizable weights at once; Hv is computed once and
vᵀHv is split per layer: E[v_lᵀ(Hv)_l] = Tr(H_ll), the cross-layer terms vanish in expectation.

Work is organised in *rounds*: one pass over the data batches, `probes_per_batch` probes on each.
The probes of step s (batch s mod B) come from a generator seeded by (seed, s), so the samples do
not depend on the engine, on how many processes share the rounds, or on where a run was
interrupted: a resumed or distributed run reproduces the single-process result. Per-layer sums
(n, Σx, Σx²) are all-reduced across processes after each round; the run stops after a round in
which every significant layer (≥ 1% of Ω) has relative standard error ≤ rel_tol, or at the cap.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.func import grad, jvp, vmap
from tqdm.auto import tqdm

from .batches import Objective, first_input, forward, num_samples, stateless, tensors
from .errors import ArtifactError, ConfigError, NumericalError, UnsupportedModelError

log = logging.getLogger(__name__)
# hvp(V): V is a list (one per weight) of k stacked probes [k, *shape]; returns H·V likewise.
BatchedHVP = Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]]
ENGINES = ("double_backward", "double_backward_batched", "jvp_vmap")


@dataclass(frozen=True)
class TraceEstimate:
    mean: float
    se: float  # standard error of the mean
    n: int


@dataclass(frozen=True)
class TraceResult:
    layers: dict[str, TraceEstimate]
    unconverged: tuple[str, ...]  # significant layers whose relative standard error missed the target
    engine: str
    probes: int
    rounds: int
    engine_seconds: float = 0.0  # spent choosing the engine (engine="auto"), not counted in the probes


@dataclass
class TraceState:
    """Running per-layer sums; the whole state of a run, so it can be checkpointed and resumed."""

    names: list[str]
    n: int = 0
    sums: list[float] = field(default_factory=list)
    sq: list[float] = field(default_factory=list)
    rounds: int = 0

    def __post_init__(self) -> None:
        self.sums = self.sums or [0.0] * len(self.names)
        self.sq = self.sq or [0.0] * len(self.names)

    def estimates(self) -> dict[str, TraceEstimate]:
        out = {}
        for i, name in enumerate(self.names):
            mean = self.sums[i] / self.n if self.n else math.nan
            var = (self.sq[i] - self.n * mean * mean) / (self.n - 1) if self.n > 1 else math.inf
            out[name] = TraceEstimate(mean, math.sqrt(max(var, 0.0) / self.n) if self.n > 1 else math.inf, self.n)
        return out

    def to_dict(self) -> dict:
        return {"names": self.names, "n": self.n, "sums": self.sums, "sq": self.sq, "rounds": self.rounds}

    @classmethod
    def from_dict(cls, d: dict) -> "TraceState":
        return cls(list(d["names"]), int(d["n"]), [float(x) for x in d["sums"]], [float(x) for x in d["sq"]], int(d["rounds"]))


# ------------------------------------------------------------------------------------------ engines

# An engine is make(model, loss, batch, params) -> hvp: `loss` anything hawq.batches.Objective
# takes (fn(output, target), fn(model, batch), None), `batch` any batch form it reads.

def double_backward(model, loss_fn, batch, params) -> BatchedHVP:
    """PyHessian's method: gradient graph built once per batch, one backward per probe."""
    grads = torch.autograd.grad(Objective(loss_fn).loss(model, batch), params, create_graph=True)

    def hvp(vs):
        cols = [torch.autograd.grad(grads, params, [v[j] for v in vs], retain_graph=True) for j in range(len(vs[0]))]
        return [torch.stack(c) for c in zip(*cols)]

    return hvp


def double_backward_batched(model, loss_fn, batch, params) -> BatchedHVP:
    """The same graph, all k probes in one vmapped backward (`is_grads_batched`)."""
    grads = torch.autograd.grad(Objective(loss_fn).loss(model, batch), params, create_graph=True)
    return lambda vs: torch.autograd.grad(grads, params, list(vs), retain_graph=True, is_grads_batched=True)


def jvp_vmap(model, loss_fn, batch, params) -> BatchedHVP:
    """Forward-over-reverse: jvp of grad over functional_call, vmapped over the k probes."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    if any(id(p) not in by_id for p in params):
        raise ValueError("jvp_vmap needs the weights to be parameters of the model")
    keys = [by_id[id(p)] for p in params]
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in keys}
    buffers = dict(model.named_buffers())
    primals = tuple(p.detach() for p in params)
    objective = Objective(loss_fn)
    call = stateless(model, objective.value)

    def loss_of(ws):
        return call({**fixed, **buffers, **dict(zip(keys, ws))}, batch)

    with torch.no_grad():
        objective.loss(model, batch)  # the checks, outside the transforms

    def one(*v):
        return jvp(grad(loss_of), (primals,), (tuple(v),))[1]

    return lambda vs: vmap(one)(*vs)


# engine name → make(model, loss_fn, batch, params) → hvp(vs): the Hessian-vector product engines
HVP_ENGINES = {"double_backward": double_backward, "double_backward_batched": double_backward_batched,
               "jvp_vmap": jvp_vmap}


_SAID_SDPA = False  # hvp_context's one log line, once a process


@contextlib.contextmanager
def hvp_context():
    """Attention through the math kernel (fused SDPA kernels have no double backward)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch
        yield
        return
    global _SAID_SDPA
    if not _SAID_SDPA:
        log.info("Hessian products: scaled_dot_product_attention runs on its math kernel while they run (fused "
                 "kernels have no double-backward or forward-mode rules); the model's own choice is restored after")
        _SAID_SDPA = True
    with sdpa_kernel(SDPBackend.MATH):
        yield


def rademacher(params: Sequence[torch.Tensor], k: int, seed: int, step: int) -> list[torch.Tensor]:
    """k probes for step `step`, the same on every process and engine."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return [(torch.randint(0, 2, (k, *p.shape), generator=gen, dtype=torch.int8) * 2 - 1).to(p.device, p.dtype) for p in params]


def pick_engine(model, loss_fn, batch, params, k: int, engines: Sequence[str] = ENGINES, repeats: int = 2) -> str:
    """Time one k-probe HVP (graph included; best of `repeats`) with each engine on `batch` and
    return the fastest that works. An engine whose first (warm-up) run already takes 3× the best
    time so far is not timed again: the choice costs about one probe per engine plus `repeats`
    of the competitive ones.
    An engine that fails (an op without a forward-mode or double-backward rule) is skipped, with
    one log line saying which and why."""
    times = {}
    vs = rademacher(params, k, 0, 0)
    for name in engines:
        try:
            with hvp_context():
                t = time.perf_counter()
                HVP_ENGINES[name](model, loss_fn, batch, params)(vs)  # warm-up
                warm = time.perf_counter() - t
                if times and warm > 3 * min(times.values()):
                    times[name] = warm
                    continue
                runs = []
                for _ in range(repeats):  # the best of a few: robust to a busy machine
                    t = time.perf_counter()
                    HVP_ENGINES[name](model, loss_fn, batch, params)(vs)
                    runs.append(time.perf_counter() - t)
                times[name] = min(runs)
        except (NumericalError, ConfigError):  # the model or loss is at fault, not the engine
            raise
        except Exception as e:  # noqa: BLE001 — report and fall back to the next engine
            log.warning("HVP engine %s unavailable for this model: %s: %s", name, e.__class__.__name__,
                        str(e).splitlines()[0] if str(e) else "")
    if not times:
        raise UnsupportedModelError(f"no HVP engine works for this model ({', '.join(engines)} failed; see the "
                                    "warnings above): it needs double-backward or forward-mode rules for its ops")
    best = min(times, key=times.get)
    log.info("HVP engine: %s (%s)", best, ", ".join(f"{n} {t:.3f}s" for n, t in times.items()))
    return best


def saved_bytes(model, loss_fn, batch) -> int:
    """Bytes autograd saves for the backward of one forward pass on `batch` (the activation memory
    of training), counted by a saved-tensors hook; each storage once."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (functorch wrappers)
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), hvp_context():
        loss = Objective(loss_fn).loss(model, batch)
    del loss
    return sum(seen.values())


def probe_bytes(model, loss_fn, batch, params, engine: str) -> int:
    """Memory one more probe per batch costs with `engine`: on a GPU, measured (allocator peak of a
    2-probe HVP minus a 1-probe one); elsewhere estimated as 3× the saved activations of one
    forward (a probe carries a tangent of each saved tensor, the gradient and its tangent)."""
    device = params[0].device
    if device.type != "cuda":
        return 3 * saved_bytes(model, loss_fn, batch)
    peaks = []
    for k in (1, 2):
        vs = rademacher(params, k, 0, 0)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        with hvp_context():
            HVP_ENGINES[engine](model, loss_fn, batch, params)(vs)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device))
        del vs
    return max(peaks[1] - peaks[0], 1)


def free_bytes(device: torch.device) -> int | None:
    """Free memory on `device`: CUDA's free bytes, or the host's MemAvailable (Linux); None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def choose_k(model, loss_fn, batch, params, engine: str, *, k_max: int = 8, share: float = 0.5,
             free: int | None = None) -> int:
    """Probes per batch: the most (1..k_max) whose extra memory fits in `share` of the free memory
    (`free` bytes, default free_bytes of the weights' device); k_max when free memory is unknown."""
    free = free_bytes(params[0].device) if free is None else free
    if free is None:
        return k_max
    per = probe_bytes(model, loss_fn, batch, params, engine)
    k = max(1, min(k_max, int(share * free // per)))
    log.info("probes per batch: %d (%.3g MB a probe, %.3g MB free)", k, per / 1e6, free / 1e6)
    return k


# -------------------------------------------------------------------------------------- estimator

def significant(means: Mapping[str, float], importance: Mapping[str, float], share: float = 0.01) -> list[str]:
    """Layers holding at least `share` of the total Ω = |trace| · importance."""
    omega = {n: abs(means[n]) * importance.get(n, 1.0) for n in means}
    total = sum(v for v in omega.values() if math.isfinite(v))
    return [n for n, v in omega.items() if total > 0 and math.isfinite(v) and v >= share * total]


def _rel(e: TraceEstimate) -> float:
    return e.se / abs(e.mean) if e.mean and math.isfinite(e.mean) else math.inf


def worst_rel_se(est: Mapping[str, TraceEstimate], importance: Mapping[str, float]) -> float:
    sig = significant({n: e.mean for n, e in est.items()}, importance)
    return max((_rel(est[n]) for n in sig), default=math.inf)


def world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def hutchinson_traces(
    model: nn.Module,
    loss_fn,
    batches: Sequence,
    weights: Mapping[str, torch.Tensor],
    *,
    importance: Mapping[str, float] | None = None,
    rel_tol: float = 0.05,
    max_probes: int = 200,
    min_probes: int = 8,
    probes_per_batch: int = 1,
    seed: int = 0,
    engine: str = "double_backward",
    state: TraceState | None = None,
    on_round: Callable[[TraceState], None] | None = None,
    progress: bool = False,
) -> TraceResult:
    """Estimate Tr(H_l) for each named weight.

    Runs whole rounds (each batch once, `probes_per_batch` probes on each) until every
    significant layer (Ω_l = |Tr| · importance_l ≥ 1% of the total) has relative standard error
    ≤ rel_tol, with at least `min_probes` and at most `max_probes` (rounded up to whole rounds).
    `engine`: one of ENGINES or "auto" (time one probe of each). `state`: resume from a
    checkpoint; `on_round(state)` is called after each round (to checkpoint it). Under
    torch.distributed, rounds are split across processes and the sums all-reduced. `model` must
    be in eval mode; it is not modified."""
    params = list(weights.values())
    return _estimate(model, loss_fn, batches, list(weights), lambda x: contextlib.nullcontext(params), ENGINES,
                     importance=importance, rel_tol=rel_tol, max_probes=max_probes, min_probes=min_probes,
                     probes_per_batch=probes_per_batch, seed=seed, engine=engine, state=state, on_round=on_round,
                     progress=progress, desc="hessian probes")


class ActivationTaps:
    """Zero tensors δ_l added to the input of named layers, so that Hessian-vector products can be
    taken with respect to those activations: ∂²L/∂δ² at δ = 0 is the Hessian of the loss with
    respect to the layer's input (HAWQ-V3's activation sensitivity)."""

    def __init__(self, model: nn.Module, shapes: Mapping[str, Sequence[int]]) -> None:
        mods = dict(model.named_modules())
        missing = [n for n in shapes if n not in mods]
        if missing:
            raise ConfigError(f"no modules named {missing} in the model")
        self.model = model
        self.mods = [mods[n] for n in shapes]
        self.shapes = [tuple(s) for s in shapes.values()]
        self.dtype = next(model.parameters()).dtype
        self._seen: dict[tuple, list[tuple[int, ...]]] = {}  # input shapes of a batch → the layers' input shapes

    def input_shapes(self, batch) -> list[tuple[int, ...]]:
        """Each layer's input shape (one sample) on `batch`: `shapes` where the batch is shaped like
        the one they were traced on, else measured by one forward pass (ragged sequence lengths)
        and remembered per shape of the batch's tensors."""
        key = tuple(tuple(t.shape[1:]) for t in tensors(batch))
        if key not in self._seen:
            got: dict[int, tuple[int, ...]] = {}
            def seen(i: int):
                def hook(mod, inp) -> None:  # a pre-hook returning a value would replace the inputs
                    got.setdefault(i, tuple(inp[0].shape[1:]))
                return hook

            handles = [m.register_forward_pre_hook(seen(i)) for i, m in enumerate(self.mods)]
            try:
                with torch.no_grad():
                    forward(self.model, batch)
            finally:
                for h in handles:
                    h.remove()
            self._seen[key] = [got.get(i, s) for i, s in enumerate(self.shapes)]
        return self._seen[key]

    @contextlib.contextmanager
    def attached(self, batch):
        """Fresh zero taps for `batch`, hooked onto the layers' inputs; yields them."""
        n, device = num_samples(batch), first_input(batch).device
        taps = [torch.zeros(n, *s, dtype=self.dtype, device=device, requires_grad=True) for s in self.input_shapes(batch)]
        handles = [m.register_forward_pre_hook(lambda mod, inp, d=d: (inp[0] + d, *inp[1:]))
                   for m, d in zip(self.mods, taps)]
        try:
            yield taps
        finally:
            for h in handles:
                h.remove()


def activation_traces(
    model: nn.Module,
    loss_fn,
    batches: Sequence,
    shapes: Mapping[str, Sequence[int]],
    *,
    engine: str = "double_backward_batched",
    **kw,
) -> TraceResult:
    """Estimate, for each named layer, the trace of the Hessian of the loss with respect to the
    layer's input activation (`shapes`: name → the input's shape for one sample). With a mean
    loss over independent samples (eval mode), the estimate is the mean over samples of each
    sample's trace. The activations are not parameters, so the engines are the double-backward
    ones ("auto" picks between them); other keywords as in hutchinson_traces."""
    engines = ENGINES[:2]
    if engine not in engines + ("auto",):
        raise ConfigError(f"activation traces need engine 'auto' or one of {engines}, not {engine!r}")
    taps = ActivationTaps(model, shapes)
    return _estimate(model, loss_fn, batches, list(shapes), taps.attached, engines, engine=engine,
                     desc="activation probes", **kw)


def _estimate(model, loss_fn, batches, names: list[str], probed, engines: Sequence[str], *,
              importance: Mapping[str, float] | None = None, rel_tol: float = 0.05, max_probes: int = 200,
              min_probes: int = 8, probes_per_batch: int = 1, seed: int = 0, engine: str, state: TraceState | None = None,
              on_round: Callable[[TraceState], None] | None = None, progress: bool = False, desc: str) -> TraceResult:
    """The Hutchinson loop shared by weights and activations. `probed(batch)`: a context manager
    yielding the tensors (one per name) whose Hessian blocks are probed on that batch."""
    loss_fn = Objective(loss_fn)
    if max_probes < 2:
        raise ConfigError(f"max_probes must be an integer of at least 2 to estimate a standard error, not {max_probes!r}")
    importance = dict(importance or {})
    k = probes_per_batch
    per_round = len(batches) * k
    choosing = time.perf_counter()
    if engine == "auto":
        with probed(batches[0]) as params:
            engine = pick_engine(model, loss_fn, batches[0], params, k, engines)
    elif engine not in HVP_ENGINES:
        raise ConfigError(f"engine must be 'auto' or one of {ENGINES}, not {engine!r}")
    choosing = time.perf_counter() - choosing
    make = HVP_ENGINES[engine]
    state = state or TraceState(names)
    if state.names != names:
        raise ArtifactError("the checkpoint was made for other layers; delete it or profile the same layers")
    rank, n_proc = world()
    max_rounds = max(1, math.ceil(max_probes / per_round))
    min_rounds = max(1, math.ceil(min_probes / per_round))
    bar = tqdm(total=max_rounds * per_round, initial=state.n, desc=desc, disable=not progress or rank != 0,
               leave=False, unit="probe")
    try:
        while state.rounds < max_rounds:
            if state.rounds >= min_rounds and worst_rel_se(state.estimates(), importance) <= rel_tol:
                break
            sums = torch.zeros(2, len(names), dtype=torch.float64)
            for b in range(rank, len(batches), n_proc):
                step = state.rounds * len(batches) + b
                with probed(batches[b]) as params, hvp_context():
                    vs = rademacher(params, k, seed, step)
                    hv = make(model, loss_fn, batches[b], params)(vs)
                s = torch.stack([(v.double() * h.double()).flatten(1).sum(1) for v, h in zip(vs, hv)], 1)  # [k, L]
                sums[0] += s.sum(0)
                sums[1] += (s * s).sum(0)
            if n_proc > 1:
                dist.all_reduce(sums)
            state.n += per_round
            state.sums = [a + float(b) for a, b in zip(state.sums, sums[0])]
            state.sq = [a + float(b) for a, b in zip(state.sq, sums[1])]
            state.rounds += 1
            if on_round is not None and rank == 0:
                on_round(state)
            bar.update(per_round)
            bar.set_postfix(worst_rel_se=f"{worst_rel_se(state.estimates(), importance):.3f}")
    finally:
        bar.close()
    est = state.estimates()
    sig = significant({n: e.mean for n, e in est.items()}, importance)
    unconverged = tuple(n for n in sig if _rel(est[n]) > rel_tol)
    return TraceResult(est, unconverged, engine, state.n, state.rounds, choosing)


def top_eigenvalues(
    model: nn.Module,
    loss_fn,
    batch,
    weights: Mapping[str, torch.Tensor],
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    engine: str = "double_backward_batched",
    chunk: int | None = None,
) -> dict[str, float]:
    """Largest-magnitude eigenvalue of each layer's diagonal Hessian block H_ll (HAWQ-V1's
    sensitivity), by power iteration on `chunk` layers at once: probe j is nonzero only on layer j,
    so one batched HVP returns H_jj v_j for every layer of the chunk. A chunk stops when every
    estimate in it changes by less than `tol` (relative) or after `iters` iterations. `chunk`:
    None for as many layers as half the free memory holds (see choose_k); the start vectors, and
    so the result up to `tol`, do not depend on it."""
    names = list(weights)
    params = [weights[n] for n in names]
    gen = torch.Generator().manual_seed(seed)
    starts = []
    for p in params:
        r = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
        starts.append(r / r.norm())
    if chunk is None:
        chunk = choose_k(model, loss_fn, batch, params, engine, k_max=len(params))
    eig = torch.zeros(len(params), dtype=torch.float64)
    with hvp_context():
        hvp = HVP_ENGINES[engine](model, loss_fn, batch, params)
        for lo in range(0, len(params), max(1, chunk)):
            idx = list(range(lo, min(len(params), lo + max(1, chunk))))
            vs = [torch.zeros(len(idx), *p.shape, dtype=p.dtype, device=p.device) for p in params]
            for r, j in enumerate(idx):
                vs[j][r] = starts[j]
            cur = torch.zeros(len(idx), dtype=torch.float64)
            for _ in range(iters):
                hv = hvp(vs)
                new = torch.tensor([float((vs[j][r] * hv[j][r]).sum()) for r, j in enumerate(idx)], dtype=torch.float64)
                for r, j in enumerate(idx):
                    w = hv[j][r]
                    vs[j][r] = w / w.norm().clamp_min(1e-30)
                done = bool(((new - cur).abs() <= tol * new.abs().clamp_min(1e-30)).all())
                cur = new
                if done:
                    break
            eig[idx] = cur
    return {n: float(e) for n, e in zip(names, eig)}
