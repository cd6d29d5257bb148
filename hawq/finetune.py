"""Accuracy recovery by short quantization-aware fine-tuning of a `hawq.quantize` model.

    q = hawq.quantize(model, plan, calibration_batches)
    res = hawq.finetune(q, hawq.train_split_batches(None, 128), steps=300, lr=5e-3, teacher=model)
    res.model  # a plain fake-quant module again (QAT off, buffers refreshed): export it as usual

Only the float weights and biases inside the QuantLayers train, through the straight-through
estimator at the frozen weight scales and calibrated activation qparams; BatchNorm stays folded
and every other parameter and statistic stays fixed (the model runs in eval mode). The learning
rate follows a cosine from `lr` to 0 over `steps`. With a `checkpoint` path the run saves its
whole state every `checkpoint_every` steps (atomically) and resumes from it when restarted with
the same settings, giving the same final weights as an uninterrupted run.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import data as fmnist  # the embedded Fashion-MNIST data
from .artifacts import atomic_path, fingerprint_tensors
from .errors import ArtifactError, ConfigError, DataError, NumericalError
from .rewrite import quant_layers

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "hawq.finetune-checkpoint/1"
OPTIMIZERS = ("sgd", "adam")

Batch = tuple[torch.Tensor, torch.Tensor]


class StepData(Protocol):
    """Training data addressed by step: the same step always gives the same batch."""

    def batch(self, step: int) -> Batch: ...


@dataclass(frozen=True, eq=False)
class ShuffledBatches:
    """Batches of (x, y) drawn without replacement, reshuffled each epoch; batch `step` depends
    only on (seed, step), so a resumed run sees the batches an uninterrupted one would.

    x, y: all images (N, ...) and labels (N,).
    batch_size: images per batch (the last incomplete batch of an epoch is dropped).
    seed: shuffling (and augmentation) seed.
    augment: a random shift of up to 2 pixels (per batch) and horizontal flips (per image), the
        augmentation the embedded models were trained with.
    """

    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    seed: int = 0
    augment: bool = False

    def __post_init__(self) -> None:
        if len(self.x) == 0 or len(self.x) != len(self.y):
            raise DataError(f"training data needs as many labels as images, at least one; got {len(self.x)} images "
                            f"and {len(self.y)} labels")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, not {self.batch_size!r}")

    @property
    def per_epoch(self) -> int:
        return max(len(self.y) // self.batch_size, 1)

    def batch(self, step: int) -> Batch:
        epoch, i = divmod(step, self.per_epoch)
        perm = torch.randperm(len(self.y), generator=_generator(self.seed, 2 * epoch))
        idx = perm[i * self.batch_size : (i + 1) * self.batch_size]
        x = self.x[idx]
        if self.augment:
            x = fmnist.shift_flip(x, _generator(self.seed, 2 * step + 1))
        return x, self.y[idx]


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(stream)) % 2**63)


@dataclass(frozen=True, eq=False)
class _Cycle:
    """A fixed sequence of (x, y) batches, cycled: batch `step` is batches[step % len]."""

    batches: Sequence[Batch]

    def batch(self, step: int) -> Batch:
        b = self.batches[step % len(self.batches)]
        return b[0], b[1]


def train_split_batches(folder: str | Path | None, batch_size: int, seed: int = 0, augment: bool = True) -> ShuffledBatches:
    """The Fashion-MNIST train split as ShuffledBatches.

    folder: a folder with train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]; None for
        hawq.data's default (Debian's dataset path).
    batch_size, seed, augment: see ShuffledBatches.
    """
    x, y = fmnist.load_split("train", folder)
    return ShuffledBatches(x, y, batch_size, seed, augment)


def _step_data(train_data: StepData | Sequence[Batch]) -> StepData:
    if hasattr(train_data, "batch"):
        return train_data  # type: ignore[return-value]
    if isinstance(train_data, Sequence) and not isinstance(train_data, (str, bytes)):
        if len(train_data) == 0:
            raise DataError("training data is empty; give at least one (x, y) batch")
        return _Cycle(train_data)
    raise ConfigError(f"training data must be a hawq.ShuffledBatches (or any object with batch(step)) or a list of "
                      f"(x, y) batches, not {type(train_data).__name__}; a one-pass iterator cannot be resumed exactly")


@dataclass(frozen=True)
class FinetuneResult:
    """The outcome of finetune().

    model: the fine-tuned fake-quant module (a copy; QAT off, w_int/w_fq refreshed).
    steps: optimizer steps done in total (including those before a resume).
    seconds: wall time of this call.
    losses: the training loss of every step, in order (including those before a resume).
    resumed_from: the step the run resumed from a checkpoint, or None for a fresh start.
    checkpoint: the checkpoint path, or None.
    """

    model: nn.Module = field(repr=False)
    steps: int
    seconds: float
    losses: tuple[float, ...]
    resumed_from: int | None = None
    checkpoint: str | None = None

    def loss_start(self, window: int = 20) -> float:
        """Mean training loss over the first `window` steps (NaN when no step ran)."""
        head = self.losses[:window]
        return sum(head) / len(head) if head else math.nan

    def loss_end(self, window: int = 20) -> float:
        """Mean training loss over the last `window` steps (NaN when no step ran)."""
        tail = self.losses[-window:]
        return sum(tail) / len(tail) if tail else math.nan

    def summary(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": self.seconds, "loss_start": self.loss_start(),
                "loss_end": self.loss_end(), "resumed_from": self.resumed_from, "checkpoint": self.checkpoint}


def distillation_loss(logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor,
                      weight: float, temperature: float) -> torch.Tensor:
    """weight · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − weight) · cross entropy, as
    HAWQ-V3's loss_kd, with the KL averaged per sample ("batchmean", the true KL; HAWQ-V3's
    elementwise mean also divides it by the number of classes)."""
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.softmax(teacher_logits / t, dim=1), reduction="batchmean")
    return weight * t * t * kl + (1.0 - weight) * F.cross_entropy(logits, target)


def trainable_parameters(qmodel: nn.Module) -> list[nn.Parameter]:
    """The float weights and biases of the QuantLayers, in module order (what finetune trains)."""
    return [p for m in quant_layers(qmodel).values() for p in (m.fp.weight, m.fp.bias) if p is not None]


def _check_args(qmodel: nn.Module, steps: int, lr: float, optimizer: str, distill_weight: float,
                temperature: float, checkpoint_every: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be a non-negative integer, not {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number, not {lr!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {optimizer!r}")
    if not 0.0 <= distill_weight <= 1.0:
        raise ConfigError(f"distill_weight must be in [0, 1], not {distill_weight!r}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive, not {temperature!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be a positive integer, not {checkpoint_every!r}")
    layers = quant_layers(qmodel)
    if not layers:
        raise ConfigError("the model has no quantized layers; fine-tune the output of hawq.quantize")
    if not all(m.calibrated for m in layers.values()):
        raise ConfigError("the model has uncalibrated quantized layers; fine-tune the output of hawq.quantize")


def _trainable_copy(qmodel: nn.Module) -> tuple[nn.Module, list[nn.Parameter], list[nn.Parameter]]:
    """(a copy of qmodel in eval mode, its QuantLayer weights and biases set to train, the other
    parameters it had trainable, now frozen until the end)."""
    model = copy.deepcopy(qmodel).eval()
    params = trainable_parameters(model)
    ids = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    for p in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return model, params, frozen


def _make_optimizer(params: list[nn.Parameter], name: str, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def cosine_schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """lr · ½(1 + cos(π t / steps)) at step t, in closed form (so a restored schedule is exact)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / max(steps, 1))))


def _load_checkpoint(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)  # data only: a checkpoint never runs code
    except Exception as e:
        raise ArtifactError(f"checkpoint {path} cannot be read ({e.__class__.__name__}); delete it to start over") from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint; delete it or choose another path")
    if ck.get("settings") != settings:
        diff = sorted(k for k in settings if ck.get("settings", {}).get(k) != settings[k])
        raise ConfigError(f"checkpoint {path} was written by a run with other {', '.join(diff) or 'settings'}; "
                          "rerun with the same ones to resume, or delete it to start over")
    return ck


def finetune(qmodel: nn.Module, train_data: StepData | Sequence[Batch], *, steps: int, lr: float,
             optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 0.0,
             teacher: nn.Module | None = None, distill_weight: float = 0.5, temperature: float = 2.0,
             checkpoint: str | Path | None = None, checkpoint_every: int = 50, seed: int = 0,
             progress: bool = False, log_fn: Callable[[str], None] | None = None) -> FinetuneResult:
    """Quantization-aware fine-tuning of a copy of `qmodel` (the caller's module is unchanged).

    qmodel: the output of hawq.quantize (calibrated QuantLayers).
    train_data: a ShuffledBatches (or any object with batch(step) -> (x, y)), or a list of (x, y)
        batches, cycled.
    steps: optimizer steps in total (a resumed run does only those left).
    lr: peak learning rate; it follows a cosine to 0 over `steps`.
    optimizer: "sgd" (with `momentum`) or "adam". weight_decay: L2 on the trained weights.
    teacher: the FP32 model to distil from (None: cross entropy only).
    distill_weight, temperature: the mix and temperature of distillation_loss (with a teacher).
        HAWQ-V3 uses 0.95 and 6 with a KL that its elementwise mean also divides by the class
        count; with the true KL those need a ~10x lower lr, while 0.5 and 2 train at the lr that
        suits cross entropy alone (measured on the embedded ResNet-20).
    checkpoint: a file to save the run to every `checkpoint_every` steps and at the end, and to
        resume from when it exists (written by a run with the same settings).
    seed: seeds torch's global generator at a fresh start (data order comes from `train_data`).
    progress: show a tqdm bar. log_fn: called with a line at each checkpoint (default: logging).
    """
    _check_args(qmodel, steps, lr, optimizer, distill_weight, temperature, checkpoint_every)
    t0 = time.time()
    say = log_fn or log.info
    data = _step_data(train_data)
    model, params, frozen = _trainable_copy(qmodel)
    opt = _make_optimizer(params, optimizer, lr, momentum, weight_decay)
    sched = cosine_schedule(opt, steps)
    x0, y0 = data.batch(0)
    settings = {"steps": steps, "lr": float(lr), "optimizer": optimizer, "momentum": float(momentum),
                "weight_decay": float(weight_decay), "distill": teacher is not None,
                "distill_weight": float(distill_weight), "temperature": float(temperature), "seed": int(seed),
                "model": fingerprint_tensors(dict(qmodel.state_dict())),  # resume only the same quantized model
                "data": fingerprint_tensors({"x": x0, "y": y0})}  # and the same data (first batch)
    path = None if checkpoint is None else Path(checkpoint)
    ck = None if path is None else _load_checkpoint(path, settings)
    if ck is None:
        start, losses, resumed = 0, [], None
        torch.manual_seed(seed)
    else:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"])
        start, losses, resumed = int(ck["step"]), list(ck["losses"]), int(ck["step"])
        say(f"resumed from {path} at step {start}/{steps}")
    if teacher is not None:
        teacher = copy.deepcopy(teacher).eval()
    layers = list(quant_layers(model).values())
    for m in layers:
        m.enable_qat()

    def save(step: int) -> None:
        with atomic_path(path) as tmp:
            torch.save({"format": CHECKPOINT_FORMAT, "settings": settings, "step": step, "losses": losses,
                        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "rng": torch.get_rng_state()}, tmp)

    bar = tqdm(total=steps, initial=start, desc="finetune", unit="step", disable=not progress)
    try:
        for step in range(start, steps):
            loss = _train_step(model, teacher, data.batch(step), opt, distill_weight, temperature)
            if not math.isfinite(loss):
                raise NumericalError(f"the training loss became {loss} at step {step}; lower the learning rate "
                                     f"(lr={lr:g})")
            sched.step()
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            done = step + 1
            if path is not None and (done % checkpoint_every == 0 or done == steps):
                save(done)
                say(f"step {done}/{steps}: loss {sum(losses[-checkpoint_every:]) / len(losses[-checkpoint_every:]):.4f} "
                    f"-> {path}")
    finally:
        bar.close()
    if path is not None and steps == start and ck is None:
        save(steps)
    for m in layers:
        m.freeze()
    for p in frozen:
        p.requires_grad_(True)
    return FinetuneResult(model, len(losses), time.time() - t0, tuple(losses), resumed,
                          None if path is None else str(path))


def _train_step(model: nn.Module, teacher: nn.Module | None, batch: Batch, opt: torch.optim.Optimizer,
                distill_weight: float, temperature: float) -> float:
    x, y = batch
    out = model(x)
    if teacher is None:
        loss = F.cross_entropy(out, y)
    else:
        with torch.no_grad():
            t = teacher(x)
        loss = distillation_loss(out, y, t, distill_weight, temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())
