"""Find the quantizable layers of a model: names, shapes, parameters, MACs, execution order, and
groups of layers that read the same input tensor."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import UnsupportedModelError

QUANTIZABLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "Conv2d" | "Linear"
    weight_shape: tuple[int, ...]
    params: int  # weight elements (bias excluded)
    macs: int  # multiply-accumulates for one input sample


@dataclass(frozen=True)
class LayerGraph:
    layers: tuple[Layer, ...]  # in execution order
    groups: tuple[tuple[str, ...], ...]  # layers reading the same input tensor (size >= 2)

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.layers]

    def __getitem__(self, name: str) -> Layer:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)


def quantizable_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)}


@torch.no_grad()
def trace_layers(model: nn.Module, example_input: torch.Tensor) -> LayerGraph:
    """Run one forward pass on `example_input` (batch of >= 1) and record every Conv2d/Linear."""
    mods = quantizable_modules(model)
    if not mods:
        raise UnsupportedModelError("the model has no Conv2d or Linear layer to quantize")
    order: list[str] = []
    macs: dict[str, int] = {}
    readers: dict[int, list[str]] = {}
    keep: list[torch.Tensor] = []  # keep inputs alive so their ids stay unique during the pass
    batch = example_input.shape[0]

    def hook(name: str):
        def fn(mod: nn.Module, inputs, output):
            if name in macs:  # a layer called twice: count it once
                macs[name] += _macs(mod, output) // batch
                return
            order.append(name)
            macs[name] = _macs(mod, output) // batch
            keep.append(inputs[0])
            readers.setdefault(id(inputs[0]), []).append(name)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    layers = tuple(
        Layer(n, type(mods[n]).__name__, tuple(mods[n].weight.shape), mods[n].weight.numel(), macs[n]) for n in order
    )
    groups = tuple(tuple(g) for g in readers.values() if len(g) > 1)
    return LayerGraph(layers, groups)


def _macs(mod: nn.Module, out: torch.Tensor) -> int:
    if isinstance(mod, nn.Conv2d):
        k = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
        return out.numel() * k
    return out.numel() * mod.in_features  # Linear
