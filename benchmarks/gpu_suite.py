"""One prepared job for a GPU machine: a larger model through the whole hawq pipeline.

    bash benchmarks/gpu_suite.sh OUT_DIR [FASHION_MNIST_DIR] [WHEEL_DIR]
    python benchmarks/gpu_suite.py --out OUT_DIR --data-dir DIR [--device cuda] [--epochs 3]

Trains torchvision's resnet18 adapted to 1x28x28 input (3x3 stride-1 stem, no max pooling) on the
Fashion-MNIST train split, profiles its Hessian traces, solves (with the measured-loss guard) at
the sizes of uniform 8-, 4- and 3-bit weights, quantizes and evaluates every plan on the 9,000
evaluation images. Each stage's wall time and result go to OUT_DIR/gpu_suite.json (and one JSON
line per stage to stdout). `--device cpu --epochs 0.01 --max-probes 2 --limit 64` is a dry run
for any machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import hawq
from hawq import data as D
from hawq.artifacts import write_json
from hawq.guard import GuardCache
from hawq.train import train


def resnet18_28(num_classes: int = 10) -> nn.Module:
    import torchvision

    m = torchvision.models.resnet18(num_classes=num_classes)
    m.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


@torch.no_grad()
def evaluate(model: nn.Module, ds: TensorDataset, device: str) -> tuple[float, float]:
    model.eval()
    x, y = ds.tensors
    correct, loss = 0, 0.0
    for i in range(0, len(y), 1000):
        out = model(x[i:i + 1000].to(device))
        yb = y[i:i + 1000].to(device)
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    return correct / len(y), loss / len(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: the Debian path)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=float, default=3, help="fractions train on a prefix of the train split")
    p.add_argument("--max-probes", type=int, default=64)
    p.add_argument("--limit", type=int, default=0, help="dry run: use only N calibration and N evaluation images")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = a.device
    result: dict = {"device": torch.cuda.get_device_name() if dev.startswith("cuda") else platform.processor() or "cpu",
                    "torch": torch.__version__, "hawq": hawq.__version__, "stages": {}}

    def stage(name: str, t0: float, **info) -> None:
        result["stages"][name] = {"seconds": round(time.time() - t0, 2), **info}
        print(json.dumps({"stage": name, **result["stages"][name]}), flush=True)
        write_json(out / "gpu_suite.json", result)

    t0 = time.time()
    x, y = D.load_split("train", a.data_dir)
    n = len(y) if a.epochs >= 1 else max(256, int(len(y) * a.epochs))
    model = resnet18_28().to(dev)
    train(model, x[:n], y[:n], max(1, round(a.epochs)), batch_size=256, lr=0.1, device=dev, log=lambda m: print(m, flush=True))
    cal, ev = D.calibration_and_eval(a.data_dir)
    if a.limit:
        cal, ev = (TensorDataset(*(t[:a.limit] for t in d.tensors)) for d in (cal, ev))
    acc, loss = evaluate(model, ev, dev)
    stage("train", t0, model="resnet18 (28x28 stem)", params=sum(q.numel() for q in model.parameters()),
          epochs=a.epochs, train_images=n, fp32_accuracy=acc, fp32_loss=loss)
    batches = [(xb.to(dev), yb.to(dev)) for xb, yb in D.loader(cal, 250)]

    t0 = time.time()
    prof = hawq.profile(model, F.cross_entropy, batches, (2, 3, 4, 8), rel_tol=0.05, max_probes=a.max_probes,
                        min_probes=min(8, a.max_probes), seed=0, device=dev, cache=out / "profile.json")
    stage("profile", t0, layers=len(prof.layers), probes=prof.settings.get("probes"), engine=prof.settings.get("engine"),
          unconverged=len(prof.unconverged))

    rows, cache = [], GuardCache()
    for bits in (8, 4, 3):
        t0 = time.time()
        uni = hawq.uniform_plan(prof, bits)
        budget = hawq.Budget(megabytes=uni.weight_bytes / 1e6)
        mixed = hawq.guarded_solve(prof, budget, spec=hawq.SolveSpec(bits=(2, 4, 8)), model=model, data=batches, cache=cache)
        for method, plan in (("uniform", uni), ("hawq", mixed)):
            acc, loss = evaluate(hawq.quantize(model, plan, batches).to(dev), ev, dev)
            rows.append({"budget_bits": bits, "method": method, "accuracy": acc, "loss": loss,
                         "weight_bytes": plan.weight_bytes, "avg_bits": plan.avg_bits, "label": plan.label})
        stage(f"budget_w{bits}", t0, rows=rows[-2:])
    result["rows"] = rows
    write_json(out / "gpu_suite.json", result)


if __name__ == "__main__":
    main()
