"""Per-layer Hessian trace speed: PyHessian's method against hawq's engine, side by side.

    python benchmarks/hessian_speed.py [--models resnet18,mobilenet_v2,vit_b_16] [--size 64] [--batch 8]

One JSON line per model (torchvision, random weights, seeded). Both methods compute the same
estimator (one Rademacher probe over all layers, vᵀHv split per layer); they differ in how Hv
is computed:
- pyhessian: double backward on a kept gradient graph, one probe at a time (PyHessian's
  single-batch mode);
- hawq: `hawq.hessian.pick_engine` over double backward, batched double backward
  (`is_grads_batched`) and forward-over-reverse (`jvp` of `grad`, vmapped), k probes per call.

Keys: grad_s (one forward+backward), *_s_per_probe, *_s_to_5pct (seconds until every layer
holding ≥ 1% of Ω has relative standard error ≤ 5%: the measured per-probe variance of the
estimator times the per-probe cost, since running that long on a CPU is impractical;
`probes_to_5pct` says how many probes that is), peak_bytes (peak resident memory of the
process on CPU, peak allocated on CUDA), engine and k.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import time

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from hawq import quant
from hawq.graph import fold_bn, trace_layers
from hawq.hessian import ENGINES, HVP_ENGINES, hvp_context, pick_engine, rademacher, significant


def build(name: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    if name == "vit_b_16":
        return torchvision.models.vit_b_16(image_size=size, num_classes=10)
    return getattr(torchvision.models, name)(num_classes=10)


def timed(fn, repeats: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,mobilenet_v2,vit_b_16")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--k", type=int, default=4, help="probes per call for hawq's batched engines")
    p.add_argument("--probes", type=int, default=12, help="probes used to measure the estimator's variance")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for name in a.models.split(","):
        model = fold_bn(build(name, a.size)).to(dev).eval()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(a.batch, 3, a.size, a.size, generator=g).to(dev)
        y = torch.randint(0, 10, (a.batch,), generator=g).to(dev)
        layers = trace_layers(model, x[:1]).layers
        mods = dict(model.named_modules())
        params = [mods[l.name].weight for l in layers]
        importance = {l.name: quant.weight_sq_error(mods[l.name].weight, 2) / l.params for l in layers}

        def grad_step():
            torch.autograd.grad(F.cross_entropy(model(x), y), params)

        with hvp_context():
            grad_s = timed(grad_step, a.repeats)
            kept = HVP_ENGINES["double_backward"](model, F.cross_entropy, x, y, params)
            v1 = rademacher(params, 1, 0, 0)
            pyh = timed(lambda: kept(v1), a.repeats)
            del kept
            engine = pick_engine(model, F.cross_entropy, (x, y), params, a.k, ENGINES)
            hvp = HVP_ENGINES[engine](model, F.cross_entropy, x, y, params)
            vk = rademacher(params, a.k, 0, 1)
            ours = timed(lambda: hvp(vk), a.repeats) / a.k
            samples = []
            for s in range(math.ceil(a.probes / a.k)):
                vs = rademacher(params, a.k, 0, 10 + s)
                hv = hvp(vs)
                samples.append(torch.stack([(v.double() * h.double()).flatten(1).sum(1) for v, h in zip(vs, hv)], 1).cpu())
        S = torch.cat(samples)  # [probes, layers]
        mean, std = S.mean(0), S.std(0)
        sig = significant({l.name: float(mean[i]) for i, l in enumerate(layers)}, importance)
        idx = [i for i, l in enumerate(layers) if l.name in sig]
        need = max(float((std[i] / (0.05 * mean[i].abs())) ** 2) for i in idx)
        peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({
            "model": name, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
            "input": [a.batch, 3, a.size, a.size], "layers": len(layers), "significant_layers": len(idx),
            "grad_s": round(grad_s, 4), "pyhessian_s_per_probe": round(pyh, 4), "hawq_s_per_probe": round(ours, 4),
            "engine": engine, "k": a.k, "speedup_per_probe": round(pyh / ours, 2),
            "probes_to_5pct": math.ceil(need), "pyhessian_s_to_5pct": round(need * pyh, 1),
            "hawq_s_to_5pct": round(need * ours, 1), "peak_bytes": int(peak),
        }), flush=True)


if __name__ == "__main__":
    main()
