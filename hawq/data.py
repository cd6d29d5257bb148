"""Fashion-MNIST: the embedded test split, a user's folder, the Debian path, or torchvision's downloader.

The embedded default uses the 10,000 test images: the first 1,000 are the calibration (and
Hessian) set, the other 9,000 the evaluation set.
"""
from __future__ import annotations

import gzip
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from .errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train split statistics
N_CALIBRATION = 1000


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (bad magic); expected Fashion-MNIST *-ubyte(.gz) files")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder} has no {stem}[.gz]; give a folder with the Fashion-MNIST IDX files")


def load_split(split: str = "test", folder: str | Path | None = None, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (N,1,28,28) float32 and labels (N,) int64.

    folder=None uses the embedded copy for the test split, else the Debian path; download=True
    asks torchvision to fetch the data into `folder` (needs the network).
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', not {split!r}")
    prefix = "t10k" if split == "test" else "train"
    if download:
        return _torchvision(split, Path(folder or "data"))
    if folder is None:
        if split == "test":
            folder = Path(str(resources.files("hawq") / "assets"))
        else:
            folder = DEBIAN_DIR
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist; install Debian's dataset-fashion-mnist, or set "
                        "[data] folder in the recipe to a folder holding the Fashion-MNIST idx files")
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or len(labels) == 0:
        raise DataError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    return _normalise(images), torch.from_numpy(labels.astype(np.int64))


def _normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return (x - MEAN) / STD


def _torchvision(split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import FashionMNIST

    try:
        ds = FashionMNIST(str(root), train=split == "train", download=True)
    except Exception as e:
        raise DataError(f"torchvision could not download Fashion-MNIST into {root} ({e}); use a local folder") from e
    return _normalise(ds.data.numpy()), ds.targets.long()


def calibration_and_eval(folder: str | Path | None = None, n_calibration: int = N_CALIBRATION,
                         download: bool = False) -> tuple[TensorDataset, TensorDataset]:
    """The test split (see load_split for `folder` and `download`) cut into (calibration = first
    n, evaluation = the rest)."""
    x, y = load_split("test", folder, download=download)
    if not 0 < n_calibration < len(y):
        raise DataError(f"n_calibration must be between 1 and {len(y) - 1}, not {n_calibration}")
    return TensorDataset(x[:n_calibration], y[:n_calibration]), TensorDataset(x[n_calibration:], y[n_calibration:])


def loader(dataset: TensorDataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g)


def shift_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Training augmentation for a batch of images (N, C, H, W): one random shift of up to 2 pixels
    for the whole batch (padded with the batch minimum), then each image flipped left-right with
    probability 1/2.

    x: the images.
    g: the random generator (the shift is drawn first, then the flips).
    """
    h, w = x.shape[-2:]
    padded = F.pad(x, (2, 2, 2, 2), value=float(x.min()))
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
    out = padded[..., dy : dy + h, dx : dx + w]
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip.reshape(-1, *([1] * (x.dim() - 1))), out.flip(-1), out)
