"""The perturbed losses of one layer's widths: one forward pass per width (hawq's loop) against
all widths in one vmapped forward (torch.func.vmap over the layer's weight, so the part of the
network before the layer runs once). A method tried for the cost target and not kept.

    python benchmarks/perturbed_widths.py [--models resnet20,mobilenetv2_fashion,vit_fashion] [--images 400]

One JSON line per embedded model (its checkpoint, the first embedded test images in batches of
200, widths 2/3/4/8, one thread): loop_s, vmap_s, speedup, max_abs_diff (of the loss changes).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from torch.func import vmap

from hawq.batches import Objective, stateless
from hawq.data import load_split
from hawq.graph import fold_bn
from hawq.models import load_embedded
from hawq.perturbation import _rounding, perturbed_losses

BITS = (2, 3, 4, 8)


@torch.no_grad()
def vmapped(model: nn.Module, batches: list, layers: dict[str, nn.Module]) -> dict[str, dict[int, float]]:
    obj = Objective(None)
    n = sum(len(y) for _, y in batches)
    state = {**{k: v.detach() for k, v in model.named_parameters()}, **dict(model.named_buffers())}
    call = stateless(model, obj.value)
    base = sum(float(obj.value(model, b)) * len(b[1]) for b in batches) / n
    out = {}
    for name, mod in layers.items():
        r = _rounding({name: mod}, BITS, "mse")[name]
        ws = torch.stack([mod.weight.detach() + r[b] for b in BITS])
        total = torch.zeros(len(BITS), dtype=torch.float64)
        for b in batches:
            total += vmap(lambda w, b=b: call({**state, f"{name}.weight": w}, b))(ws).double() * len(b[1])
        out[name] = {bits: float(v) / n - base for bits, v in zip(BITS, total)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet20,mobilenetv2_fashion,vit_fashion")
    p.add_argument("--images", type=int, default=400)
    a = p.parse_args()
    torch.set_num_threads(1)
    x, y = load_split("test")
    batches = [(x[i:i + 200], y[i:i + 200]) for i in range(0, a.images, 200)]
    for name in a.models.split(","):
        model = fold_bn(load_embedded(name)).eval()
        layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        t = time.perf_counter()
        ref = perturbed_losses(model, None, batches, layers, BITS)
        loop_s = time.perf_counter() - t
        t = time.perf_counter()
        got = vmapped(model, batches, layers)
        vmap_s = time.perf_counter() - t
        diff = max(abs(got[n][b] - ref[n][b]) for n in layers for b in BITS)
        print(json.dumps({"model": name, "layers": len(layers), "images": a.images, "loop_s": round(loop_s, 2),
                          "vmap_s": round(vmap_s, 2), "speedup": round(loop_s / vmap_s, 3), "max_abs_diff": diff}))


if __name__ == "__main__":
    main()
