"""torchvision models and ImageNet-style data for the ready-made recipes.

`build(name, weights)` makes a named torchvision architecture with random weights, a user's
state_dict, or torchvision's default pretrained weights (a download: online users only).
`folder_data` reads an ImageNet-style folder (one subfolder of images per class, as
torchvision's ImageFolder; the classes sorted by folder name, so ImageNet's wnid folders give
the usual 1,000 class indices) with the standard evaluation transform: resize 256, center crop
224, ImageNet normalisation. `synthetic_data` gives seeded random images of the same shape with
random labels: what smoke runs use, where no real data is at hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .errors import ConfigError, DataError
from .models import load_checkpoint

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "vit_b_16")
IMAGE_SHAPE = (3, 224, 224)
NUM_CLASSES = 1000
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESIZE, CROP = 256, 224


def build(name: str, weights: str = "random", seed: int = 0) -> nn.Module:
    """torchvision model `name` (one of MODELS) in eval mode.

    weights: "random" (torchvision's initialisation, seeded by `seed`; Conv2d/Linear layers it
        leaves at zero, like ViT's head, get PyTorch's default initialisation instead, so that the
        output depends on the input), "torchvision" (the default pretrained weights, downloaded;
        needs the network), or the path of a state_dict.
    """
    from torchvision import models as tvm

    if name not in MODELS:
        raise ConfigError(f"torchvision model {name!r} is not known; accepted: {', '.join(MODELS)}")
    if weights == "torchvision":
        try:
            return tvm.get_model(name, weights="DEFAULT").eval()
        except Exception as e:  # offline, proxy, corrupt cache: all say the same to the user
            raise ConfigError(f"could not download torchvision's pretrained {name} weights ({e.__class__.__name__}); "
                              "set [model] weights to the path of a state_dict instead") from e
    if weights == "random":
        return seeded(lambda: _no_zero_layers(tvm.get_model(name, weights=None)), seed).eval()
    return load_checkpoint(tvm.get_model(name, weights=None), weights)


def _no_zero_layers(model: nn.Module) -> nn.Module:
    """Re-initialise the Conv2d/Linear layers whose weights are all zero (in place)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not bool(m.weight.any()):
            m.reset_parameters()
    return model


def seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    """make() with its random initialisation drawn from `seed`; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


@dataclass(frozen=True)
class Batches:
    """(x, y) batches over a dataset of single samples, read lazily; len() is the sample count."""

    dataset: Dataset
    batch_size: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


def image_folder(folder: str | Path) -> Dataset:
    """torchvision ImageFolder over `folder` with the ImageNet evaluation transform."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(RESIZE), transforms.CenterCrop(CROP), transforms.ToTensor(),
                             transforms.Normalize(MEAN, STD)])
    try:
        return datasets.ImageFolder(str(folder), transform=tf)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{folder} is not an ImageNet-style folder ({str(e).splitlines()[0]}); "
                        "give a folder with one subfolder of images per class") from e


def folder_data(folder: str | Path, n_calibration: int, n_evaluation: int, batch_size: int,
                seed: int = 0) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], Batches]:
    """(calibration batches in memory, evaluation batches read lazily) from an ImageNet-style folder.

    The images are shuffled once with `seed` (the folder is sorted by class); the first
    `n_calibration` calibrate, the next `n_evaluation` (0: all the rest) evaluate.
    """
    ds = image_folder(folder)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
    cal_idx, ev_idx = _split(order, n_calibration, n_evaluation, str(folder))
    cal = [(x, y) for x, y in Batches(Subset(ds, cal_idx), batch_size)]
    return cal, Batches(Subset(ds, ev_idx), batch_size)


def synthetic_data(n_calibration: int, n_evaluation: int, batch_size: int, seed: int = 0,
                   shape: tuple[int, ...] = IMAGE_SHAPE, num_classes: int = NUM_CLASSES
                   ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], TensorDataset]:
    """Seeded standard-normal images of `shape` with uniform random labels: (calibration batches,
    evaluation dataset of `n_evaluation` images, 0: as many as calibration). For smoke runs: it
    exercises every stage, it measures nothing."""
    n_evaluation = n_evaluation or n_calibration
    g = torch.Generator().manual_seed(seed)
    n = n_calibration + n_evaluation
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, num_classes, (n,), generator=g)
    cal = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n_calibration, batch_size)]
    return cal, TensorDataset(x[n_calibration:], y[n_calibration:])


def _split(order: list[int], n_calibration: int, n_evaluation: int, where: str) -> tuple[list[int], list[int]]:
    need = n_calibration + max(n_evaluation, 1)
    if len(order) < need:
        raise DataError(f"{where} holds {len(order)} images; the recipe needs {need} "
                        f"({n_calibration} calibration + {n_evaluation or 'at least 1'} evaluation): "
                        "lower [data] calibration/evaluation or add images")
    end = len(order) if n_evaluation == 0 else n_calibration + n_evaluation
    return order[:n_calibration], order[n_calibration:end]
