"""The model as a graph: its quantizable layers (names, shapes, parameters, MACs, execution order),
groups of layers that read the same input tensor, pairs of layers joined by a residual add, and
the transforms on it (BatchNorm folding, replacing a module by name)."""
from __future__ import annotations

import copy
import logging
import operator
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.fx
from torch import nn

from .batches import forward, num_samples
from .errors import ConfigError, UnsupportedModelError

log = logging.getLogger(__name__)
_ADDS = (operator.add, operator.iadd, torch.add)

QUANTIZABLE = (nn.Conv2d, nn.Linear)
# quantizable on request only (profile(layers=...) naming them): weight-only, their input is token ids
EMBEDDINGS = (nn.Embedding,)
EMBEDDING_KINDS = tuple(k.__name__ for k in EMBEDDINGS)


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "Conv2d" | "Linear"
    weight_shape: tuple[int, ...]
    params: int  # weight elements (bias excluded)
    macs: int  # multiply-accumulates for one input sample
    in_shape: tuple[int, ...] = ()  # the input activation's shape for one sample


@dataclass(frozen=True)
class LayerGraph:
    layers: tuple[Layer, ...]  # in execution order
    groups: tuple[tuple[str, ...], ...]  # layers reading the same input tensor (size >= 2)
    residual: tuple[tuple[str, ...], ...] = ()  # layers whose outputs meet at one residual add
    skipped: tuple[str, ...] = ()  # quantizable layers left out by select_layers or never called

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.layers]

    def only(self, keep: set[str]) -> "LayerGraph":
        """The graph of the layers in `keep`; groups and residual ties keep their members in it
        (and only those still joining two or more layers); the Conv2d and Linear layers left out
        are `skipped` (an embedding left out is simply not quantized)."""
        def cut(groups):
            return tuple(g2 for g in groups for g2 in [tuple(n for n in g if n in keep)] if len(g2) > 1)
        return LayerGraph(tuple(l for l in self.layers if l.name in keep), cut(self.groups), cut(self.residual),
                          self.skipped + tuple(l.name for l in self.layers
                                               if l.name not in keep and l.kind not in EMBEDDING_KINDS))


def match_layers(key: str, names: Sequence[str], what: str, where: str = "the profile") -> list[str]:
    """The names `key` selects: itself if it is one, else those a regular expression matches whole.
    ConfigError (naming `what`, e.g. "pinned layers") when it is neither or matches none."""
    if key in names:
        return [key]
    shown = f"{list(names[:8])}{' …' if len(names) > 8 else ''}"
    try:
        rx = re.compile(key)
    except re.error as e:
        raise ConfigError(f"{what} ['{key}'] is neither a layer name nor a valid regular expression ({e}); "
                          f"accepted names: {shown}") from e
    hit = [n for n in names if rx.fullmatch(n)]
    if not hit:
        raise ConfigError(f"{what} ['{key}'] are not in {where} (no name matches it whole); accepted names: {shown}")
    return hit


def select_layers(graph: LayerGraph, layers: str | Iterable[str] | None, exclude: str | Iterable[str] = ()) -> LayerGraph:
    """The layers of `graph` that `layers` selects (names or regular expressions; None: every
    Conv2d and Linear layer, no embedding) less those `exclude` selects; the Conv2d and Linear
    layers left out are recorded as `skipped` (an embedding left out is simply not quantized).
    ConfigError when a pattern selects nothing or no layer is left."""
    names = graph.names
    embeddings = {l.name for l in graph.layers if l.kind in EMBEDDING_KINDS}
    include = set(names) - embeddings if layers is None else {
        n for k in layer_keys(layers) for n in match_layers(k, names, "layers", "the model")}
    drop = {n for k in layer_keys(exclude) for n in match_layers(k, names, "excluded layers", "the model")}
    keep = include - drop
    if not keep:
        raise ConfigError(f"layers={layers!r} and exclude={exclude!r} leave no layer to profile")
    return graph if keep == set(names) else graph.only(keep)


def layer_keys(patterns: str | Iterable[str]) -> list[str]:
    """Layer patterns as a list of strings (one string is one pattern); ConfigError otherwise."""
    keys = [patterns] if isinstance(patterns, str) else list(patterns)
    bad = [k for k in keys if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"layer patterns must be names or regular expressions (strings), not {bad[0]!r}")
    return keys


def quantizable_modules(model: nn.Module, embeddings: bool = False) -> dict[str, nn.Module]:
    kinds = QUANTIZABLE + EMBEDDINGS if embeddings else QUANTIZABLE
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}


@torch.no_grad()
def trace_layers(model: nn.Module, example_input, embeddings: bool = False) -> LayerGraph:
    """Run one forward pass on `example_input` (a batch of >= 1 samples: a tensor, or any batch
    form of hawq.batches, whose target is not fed) and record every Conv2d/Linear, and with
    `embeddings` every nn.Embedding (no multiply-accumulates; its input shape is the ids')."""
    mods = quantizable_modules(model, embeddings)
    if not mods:
        raise UnsupportedModelError("the model has no Conv2d or Linear layer to quantize")
    order: list[str] = []
    macs: dict[str, int] = {}
    in_shape: dict[str, tuple[int, ...]] = {}
    readers: dict[int, list[str]] = {}
    keep: list[torch.Tensor] = []  # keep inputs alive so their ids stay unique during the pass
    batch = num_samples(example_input)

    def hook(name: str):
        def fn(mod: nn.Module, inputs, output):
            if name in macs:  # a layer called twice: count it once
                macs[name] += _macs(mod, output) // batch
                return
            order.append(name)
            macs[name] = _macs(mod, output) // batch
            in_shape[name] = tuple(inputs[0].shape[1:])
            keep.append(inputs[0])
            readers.setdefault(id(inputs[0]), []).append(name)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    was_training = model.training
    try:
        model.eval()
        forward(model, example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    layers = tuple(
        Layer(n, type(mods[n]).__name__, tuple(mods[n].weight.shape), mods[n].weight.numel(), macs[n], in_shape[n])
        for n in order
    )
    groups = tuple(tuple(g) for g in readers.values() if len(g) > 1)
    rank = {n: i for i, n in enumerate(order)}
    residual = tuple(tuple(sorted(g, key=rank.__getitem__)) for g in residual_adds(model) if all(n in rank for n in g))
    # Conv2d/Linear modules the forward pass never calls (nn.MultiheadAttention reads out_proj's
    # weight itself): nothing to quantize, so they stay float in every plan, as skipped layers do
    uncalled = tuple(n for n, m in mods.items() if n not in macs and not isinstance(m, EMBEDDINGS))
    return LayerGraph(layers, groups, residual, uncalled)


def residual_adds(model: nn.Module) -> tuple[tuple[str, ...], ...]:
    """For each add of two tensors, the quantizable layers that produce its operands, found by
    walking back through single-input ops (BatchNorm, activations, reshapes); an operand that is
    itself an add (or the model input) has no producer. Only adds with two producers are kept:
    their outputs meet at one accumulator, so they can share one requantizer when they share bits.
    Needs a model torch.fx can trace; otherwise none are found (logged once)."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 — data-dependent control flow and the like
        log.info("residual ties: torch.fx cannot trace %s (%s: %s); none derived", type(model).__name__,
                 e.__class__.__name__, str(e).splitlines()[0] if str(e) else "")
        return ()
    layers = set(quantizable_modules(model))

    def is_add(node: torch.fx.Node) -> bool:
        return ((node.op == "call_function" and node.target in _ADDS)
                or (node.op == "call_method" and node.target in ("add", "add_")))

    def producer(node: torch.fx.Node) -> str | None:
        while True:
            if node.op == "call_module" and node.target in layers:
                return str(node.target)
            if node.op in ("placeholder", "get_attr") or is_add(node) or len(node.all_input_nodes) != 1:
                return None
            node = node.all_input_nodes[0]

    out = []
    for node in gm.graph.nodes:
        if is_add(node):
            found = {producer(a) for a in node.args[:2] if isinstance(a, torch.fx.Node)} - {None}
            if len(found) >= 2:
                out.append(tuple(sorted(found)))
    return tuple(out)


def _macs(mod: nn.Module, out: torch.Tensor) -> int:
    if isinstance(mod, EMBEDDINGS):
        return 0  # a table look-up
    if isinstance(mod, nn.Conv2d):
        k = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
        return out.numel() * k
    return out.numel() * mod.in_features  # Linear


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode, in the form hawq quantizes: every BatchNorm2d that directly
    follows a Conv2d folded into it (the BN becomes Identity), and every linear layer stored with
    its weight transposed (GPT-2's Conv1D) replaced by the nn.Linear it equals, under the same
    name. The caller's model is unchanged."""
    model = copy.deepcopy(model).eval()
    for name, m in list(model.named_modules()):
        if is_transposed_linear(m):
            set_module(model, name, as_linear(m))
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model  # nothing to fold (and no reason to trace, or to warn that tracing fails)
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # dynamic control flow: leave BN in place, still correct
        log.warning("BatchNorm not folded: the model cannot be traced by torch.fx (%s)", e.__class__.__name__)
        return model
    mods = dict(model.named_modules())
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(mods.get(src.target), nn.Conv2d)):
            continue
        if len(src.users) != 1:
            continue
        _fold_into(mods[src.target], mods[node.target])
        set_module(model, node.target, nn.Identity())
    return model


def is_transposed_linear(m: nn.Module) -> bool:
    """A layer computing x @ W + b with W stored [in, out]: Hugging Face's Conv1D (GPT-2 and the models
    built on it), recognised by its class name and shape, so that transformers need not be installed."""
    w = getattr(m, "weight", None)
    return (type(m).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2
            and getattr(m, "nf", None) == w.shape[1])


@torch.no_grad()
def as_linear(m: nn.Module) -> nn.Linear:
    """The nn.Linear equal to a transposed-weight linear layer (see is_transposed_linear)."""
    n_in, n_out = m.weight.shape
    lin = nn.Linear(n_in, n_out, bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
    lin.weight.copy_(m.weight.T)
    if m.bias is not None:
        lin.bias.copy_(m.bias)
    lin.requires_grad_(m.weight.requires_grad)
    return lin


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    k = gamma / std
    conv.weight.mul_(k.reshape(-1, 1, 1, 1))
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((b - bn.running_mean) * k + beta)


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` in place of the submodule called `name` (dotted, as named_modules gives it)."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
