"""Versioned JSON artifacts: atomic writes, format checks, fingerprints."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import ArtifactError


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write via a temp file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, obj: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")


def read_json(path: str | Path, kind: str, version: int) -> dict[str, Any]:
    """Load an artifact and check its "format" is hawq.<kind>/<version>."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} not found; create it first (see `hawq --help`)")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); regenerate it") from e
    want = f"hawq.{kind}/{version}"
    got = obj.get("format") if isinstance(obj, dict) else None
    if got != want:
        raise ArtifactError(f"{path} has format {got!r}, expected {want!r}; regenerate it with this hawq version")
    return obj


def fingerprint_tensors(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint_obj(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
