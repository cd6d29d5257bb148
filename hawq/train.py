"""Train an embedded model on the Fashion-MNIST train split.

    python -m hawq.train --epochs 4 --out hawq/assets/resnet20_fashion.pt
    python -m hawq.train --model mobilenetv2_fashion --epochs 4 --out hawq/assets/mobilenetv2_fashion.pt
    python -m hawq.train --model vit_fashion --epochs 6 --optimizer adamw --lr 0.002 --out hawq/assets/vit_fashion.pt
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from . import data as fmnist  # the embedded Fashion-MNIST data
from .batches import evaluate
from .models import BUILDERS

OPTIMIZERS = ("sgd", "adamw")


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int = 128,
          lr: float = 0.1, seed: int = 0, log=print, device: str | torch.device = "cpu",
          optimizer: str = "sgd") -> nn.Module:
    """SGD with Nesterov momentum (weight decay 5e-4), or AdamW (weight decay 0.05, as vision
    transformers train), under a one-cycle schedule; random crop (pad 2) and horizontal flips.
    Batches are drawn on the CPU (the same ones on every device) and moved to `device`."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(y) + batch_size - 1) // batch_size)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {optimizer!r}")
    opt = (torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05) if optimizer == "adamw" else
           torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        t0, seen, correct = time.time(), 0, 0
        for i in range(0, len(y), batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = fmnist.shift_flip(x[idx], g).to(device), y[idx].to(device)
            out = model(xb)
            loss = nn.functional.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            correct += (out.argmax(1) == yb).sum().item()
        log(f"epoch {epoch + 1}/{epochs}: train acc {correct / seen:.4f}, {time.time() - t0:.0f} s")
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(BUILDERS), default="resnet20")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (default: Debian's)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    x, y = fmnist.load_split("train", a.data_dir)
    model = train(BUILDERS[a.model](), x, y, a.epochs, a.batch_size, a.lr, a.seed, optimizer=a.optimizer)
    cal, ev = fmnist.calibration_and_eval()
    acc_cal, _ = evaluate(model, cal)
    acc_ev, _ = evaluate(model, ev)
    torch.save(model.state_dict(), a.out)
    print(json.dumps({"model": a.model, "epochs": a.epochs, "calibration_accuracy": acc_cal, "eval_accuracy": acc_ev, "out": a.out}))


if __name__ == "__main__":
    main()
