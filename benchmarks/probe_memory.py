"""The memory one more Hessian probe costs on the demo model: hawq's estimate against the peak
resident memory measured for 1, 2 and 4 probes (Linux: VmHWM, one fresh process per run).

    python benchmarks/probe_memory.py [--engines jvp_vmap,double_backward_batched] [--ks 1,2,4]

One JSON line per engine and k: {"engine", "k", "peak_mb"}; then one per engine with the measured
growth per probe between consecutive k ({"engine", "mb_per_probe": [...]}) and the estimate
hawq.hessian.choose_k uses on this CPU ({"estimate_mb_per_probe"}).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from torch import nn
from torch.nn import functional as F

import hawq
from hawq.hessian import HVP_ENGINES, hvp_context, probe_bytes, rademacher
from hawq.graph import fold_bn


def setup():
    """The demo's BN-folded model, its first calibration batch and its quantizable weights."""
    recipe = hawq.default_recipe()
    model = fold_bn(hawq.load_model(recipe)).eval()
    batches, _ = hawq.load_data(recipe)
    params = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return model, batches[0], params


def peak_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024


def one_run(engine: str, k: int) -> None:
    """In this process: one k-probe HVP, then print the peak resident memory."""
    torch.set_num_threads(1)
    model, (x, y), params = setup()
    with hvp_context():
        HVP_ENGINES[engine](model, F.cross_entropy, x, y, params)(rademacher(params, k, 0, 0))
    print(peak_mb())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default="jvp_vmap,double_backward_batched")
    p.add_argument("--ks", default="1,2,4")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # ENGINE K: a single measured run
    a = p.parse_args()
    if a.one:
        one_run(a.one[0], int(a.one[1]))
        return
    ks = [int(k) for k in a.ks.split(",")]
    model, batch, params = setup()
    for engine in a.engines.split(","):
        peaks = []
        for k in ks:
            out = subprocess.run([sys.executable, __file__, "--one", engine, str(k)], check=True,
                                 capture_output=True, text=True).stdout
            peaks.append(float(out.strip().splitlines()[-1]))
            print(json.dumps({"engine": engine, "k": k, "peak_mb": round(peaks[-1])}), flush=True)
        growth = [round((b - a_) / (kb - ka)) for a_, b, ka, kb in zip(peaks, peaks[1:], ks, ks[1:])]
        print(json.dumps({"engine": engine, "mb_per_probe": growth,
                          "estimate_mb_per_probe": round(probe_bytes(model, F.cross_entropy, batch, params, engine) / 1e6)}),
              flush=True)


if __name__ == "__main__":
    main()
