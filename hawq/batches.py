"""Batches as users have them, and the loss of a model on one.

A batch is a tensor (inputs only), a tuple or list `(inputs..., target)`, or a mapping of tensors
(keyword inputs such as `input_ids` and `attention_mask`, with `labels` among them), as a
`DataLoader` over a Hugging Face data set yields. `Objective` turns what a user calls their loss
into loss(model, batch) -> scalar:

- None: the model's own loss (`output.loss`, the model called with the labels), or, where the
  output has none, the cross-entropy of its logits with the batch's labels (-100 ignored);
- a loss on the output, `fn(output, target)` (`nn.CrossEntropyLoss()`, `F.cross_entropy`): the
  model is called with the inputs only, `fn` gets its logits and the batch's target;
- a loss on the model, `fn(model, batch)` (a callable whose first parameter is named `model`,
  or `Objective(fn, on="model")`): `fn` does everything.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from .errors import ConfigError, DataError, NumericalError

LABEL_KEYS = ("labels", "label")
IGNORE_INDEX = -100  # label value the default loss and the accuracy skip (Hugging Face's padding)


def tree_map(fn: Callable[[torch.Tensor], Any], batch: Any) -> Any:
    """`batch` with `fn` applied to every tensor in it (tuples, lists and mappings kept)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: tree_map(fn, v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(tree_map(fn, v) for v in batch)
    return batch


def tensors(batch: Any) -> list[torch.Tensor]:
    """Every tensor in `batch`, in order."""
    out: list[torch.Tensor] = []
    tree_map(lambda t: out.append(t), batch)
    return out


def to_device(batch: Any, device: str | torch.device) -> Any:
    return tree_map(lambda t: t.to(device), batch)


def num_samples(batch: Any) -> int:
    """Samples in `batch`: the length of its first tensor."""
    ts = tensors(batch)
    if not ts:
        raise DataError(f"a batch must hold tensors; got {type(batch).__name__}")
    return len(ts[0]) if ts[0].dim() else 1


def count_samples(data: Any) -> int:
    """Samples in `data`: a Dataset's length, or the sum over an iterable of batches."""
    return len(data) if isinstance(data, Dataset) else sum(num_samples(b) for b in data)


def labels(batch: Any) -> torch.Tensor | None:
    """The target of `batch`: a tuple's last element, a mapping's `labels`; None for a tensor."""
    if isinstance(batch, Mapping):
        return next((batch[k] for k in LABEL_KEYS if k in batch), None)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[-1]
    return None


def model_inputs(batch: Any, *, with_labels: bool = False) -> tuple[tuple, dict]:
    """(args, kwargs) the model is called with: a tensor, a tuple's elements but the target, a
    mapping's entries (its labels only `with_labels`)."""
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, Mapping):
        return (), {k: v for k, v in batch.items() if with_labels or k not in LABEL_KEYS}
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise DataError("a batch is an empty tuple; give (inputs, target) or a tensor")
        return (tuple(batch) if len(batch) == 1 else tuple(batch[:-1])), {}
    raise DataError(f"a batch must be a tensor, a tuple (inputs..., target) or a dict of tensors, not {type(batch).__name__}")


def forward(model: nn.Module, batch: Any, *, with_labels: bool = False) -> Any:
    """The model's output on `batch`, called with its inputs (see model_inputs)."""
    args, kwargs = model_inputs(batch, with_labels=with_labels)
    return model(*args, **kwargs)


def features(batch: Any) -> Any:
    """`batch` without its target: a tensor as it is, a tuple's inputs (one tensor, or a tuple of
    several), a mapping without its labels."""
    args, kwargs = model_inputs(batch)
    if kwargs or not args:
        return kwargs
    return args[0] if len(args) == 1 else args


def first_input(batch: Any) -> torch.Tensor:
    """The first tensor the model is called with (its device and batch size are the batch's)."""
    args, kwargs = model_inputs(batch)
    ts = tensors((args, kwargs))
    if not ts:
        raise DataError("a batch has no input tensors")
    return ts[0]


def take(batch: Any, start: int, stop: int) -> Any:
    """Samples start..stop of `batch` (every tensor sliced along its first axis)."""
    return tree_map(lambda t: t[start:stop] if t.dim() else t, batch)


def concat(batches: Sequence[Any]) -> Any | None:
    """The batches as one (tensors concatenated along the first axis), or None where they do not
    stack: different structures, keys, or shapes past the first axis (ragged sequence lengths)."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        if all(isinstance(b, torch.Tensor) and b.dim() and b.shape[1:] == first.shape[1:] and b.dtype == first.dtype
               for b in batches):
            return torch.cat(list(batches))
        return None
    if isinstance(first, Mapping):
        if not all(isinstance(b, Mapping) and list(b) == list(first) for b in batches):
            return None
        parts = {k: concat([b[k] for b in batches]) for k in first}
        return None if any(v is None for v in parts.values()) else parts
    if isinstance(first, (tuple, list)):
        if not all(isinstance(b, (tuple, list)) and len(b) == len(first) for b in batches):
            return None
        parts = [concat([b[i] for b in batches]) for i in range(len(first))]
        return None if any(v is None for v in parts) else type(first)(parts)
    return None


def logits_of(output: Any) -> torch.Tensor:
    """The tensor a model's output holds its predictions in: the output itself, its `logits`
    (Hugging Face outputs, mappings), or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    found = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(found, torch.Tensor):
        return found
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(f"cannot find the predictions in the model's output ({type(output).__name__}); "
                      "return a tensor or an object with .logits, or pass loss=fn(model, batch)")


def aligned(z: torch.Tensor, target: torch.Tensor | None, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and labels paired for the default loss and the accuracy. Labels that repeat the
    batch's `input_ids` (-100 aside) are next-token labels, the Hugging Face convention for causal
    language models: the logits at t are paired with the label at t + 1, as the model's own loss does."""
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    if (target is None or ids is None or target.shape != ids.shape or target.dim() != 2 or z.dim() != 3
            or not bool(((target == ids) | (target == IGNORE_INDEX)).all())):
        return z, target
    return z[:, :-1], target[:, 1:]


def default_loss(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits `z` [..., classes] with integer `target` [...], -100 ignored."""
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX)


def _model_loss(output: Any) -> torch.Tensor | None:
    found = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return found if isinstance(found, torch.Tensor) else None


def _on_model(fn: Callable) -> bool:
    """Whether `fn` takes (model, batch): its first parameter is named `model`."""
    if isinstance(fn, nn.Module):
        return False
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature take (output, target)
        return False
    return bool(params) and params[0].name == "model"


class Objective:
    """loss(model, batch) -> scalar tensor, from whatever the user calls their loss (see the module
    docstring). `on`: "model" or "output" to say which form `loss` takes, instead of reading it off
    the name of its first parameter."""

    def __init__(self, loss: Any = None, *, on: str | None = None) -> None:
        if isinstance(loss, Objective):
            self.fn, self.on = loss.fn, loss.on
            return
        if loss is not None and not callable(loss):
            raise ConfigError(f"loss must be a callable (fn(output, target) or fn(model, batch)) or None, "
                              f"not {type(loss).__name__}")
        if on not in (None, "model", "output"):
            raise ConfigError(f"on must be 'model' or 'output', not {on!r}")
        self.fn = loss
        self.on = "default" if loss is None else on or ("model" if _on_model(loss) else "output")

    def __repr__(self) -> str:
        return f"Objective({getattr(self.fn, '__name__', type(self.fn).__name__)}, on={self.on!r})"

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The loss of `model` on `batch`: one finite scalar tensor (ConfigError or NumericalError)."""
        return checked(self.value(model, batch))

    def value(self, model: nn.Module, batch: Any) -> Any:
        """The loss unchecked (inside torch.func transforms, which cannot branch on values)."""
        return self._run(model, batch)[0]

    def _run(self, model: nn.Module, batch: Any) -> tuple[Any, Any]:
        """(loss, the model's output; None for a loss on the model) from one forward pass."""
        if self.on == "model":
            return self.fn(model, batch), None
        output = forward(model, batch, with_labels=self.on == "default")
        own = _model_loss(output) if self.on == "default" else None
        return (own if own is not None else self.tail(logits_of(output), batch)), output

    def loss_and_logits(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss (a scalar, possibly not finite: a broken quantized model) and the model's logits
        on `batch` (one forward pass, two for a loss on the model)."""
        loss, output = self._run(model, batch)
        return checked(loss, finite=False), (self.logits(model, batch) if output is None else logits_of(output))

    def logits(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The model's predictions on `batch`, called with its inputs only (no labels)."""
        return logits_of(forward(model, batch))

    def check_splits(self, model: nn.Module, batch: Any) -> None:
        """ConfigError unless the loss is a known function of the logits (`tail`), as the
        Gauss-Newton matrix needs: not for a loss on the model, nor for a model whose output
        carries its own loss."""
        if self.on == "default":
            with torch.no_grad():
                own = _model_loss(forward(model, batch, with_labels=True)) is not None
        if self.on == "model" or (self.on == "default" and own):
            raise ConfigError("the Gauss-Newton terms need the loss as a function of the model's logits: pass "
                              "loss=fn(logits, labels) (e.g. torch.nn.CrossEntropyLoss()), or use sensitivity='perturbed'")

    def tail(self, z: torch.Tensor, batch: Any) -> torch.Tensor:
        """The loss as a function of the logits `z` of `batch`."""
        target = labels(batch)
        if target is None:
            raise DataError("the loss needs labels: give (inputs, target) batches or a dict with 'labels', "
                            "or pass loss=fn(model, batch)")
        if self.fn is not None:
            return self.fn(z, target)
        return default_loss(*aligned(z, target, batch))


def checked(loss: Any, *, finite: bool = True) -> torch.Tensor:
    """`loss` as a 0-d tensor; ConfigError unless it is one scalar tensor, NumericalError unless it
    is finite (with `finite`)."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ConfigError(f"the loss must be one scalar tensor, got {shape}; reduce it (e.g. reduction='mean')")
    if finite and not torch.isfinite(loss):
        raise NumericalError(f"the loss is {loss.item()} on a batch; check the model, data and loss function")
    return loss.reshape(())


class _Bound(nn.Module):
    """`fn(model, batch)` as a module, so that torch.func.functional_call can swap the weights."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, batch: Any) -> Any:
        return self.fn(self.model, batch)


def stateless(model: nn.Module, fn: Callable[[nn.Module, Any], Any]) -> Callable[[Mapping[str, torch.Tensor], Any], Any]:
    """g(state, batch) = fn(model with its parameters and buffers replaced by `state`, batch)."""
    bound = _Bound(model, fn)
    return lambda state, batch: functional_call(bound, {f"model.{k}": v for k, v in state.items()}, (batch,))


def weighted_mean(values: Iterable[tuple[float, int]]) -> float:
    """Σ v·n / Σ n over (value, samples) pairs."""
    pairs = list(values)
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else float("nan")


def correct(z: torch.Tensor, target: torch.Tensor | None) -> tuple[int, int]:
    """(top-1 hits, labels counted) of logits `z` [..., classes] against integer `target` [...],
    -100 skipped; (0, 0) where the target is not class labels of the logits."""
    if target is None or target.is_floating_point() or tuple(z.shape[:-1]) != tuple(target.shape):
        return 0, 0
    keep = target != IGNORE_INDEX
    return int(((z.argmax(-1) == target) & keep).sum()), int(keep.sum())


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 500, loss: Any = None) -> tuple[float, float]:
    """(top-1 accuracy, mean loss per sample) of `model` on a Dataset or an iterable of batches.
    `loss` as Objective takes it (None: the model's own loss, or cross-entropy). The accuracy
    counts the labels the logits classify (tokens for a language model, -100 skipped); NaN
    where the batches have no such labels."""
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size)
    objective = Objective(loss)
    was_training = model.training
    model.eval()
    losses, hits, counted = [], 0, 0
    try:
        for batch in data:
            value, z = objective.loss_and_logits(model, batch)
            losses.append((float(value), num_samples(batch)))
            h, c = correct(*aligned(z, labels(batch), batch))
            hits, counted = hits + h, counted + c
    finally:
        model.train(was_training)
    if not losses:
        raise DataError("evaluation data is empty")
    return (hits / counted if counted else float("nan")), weighted_mean(losses)
