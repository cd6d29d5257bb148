"""Versioned JSON artifacts: atomic writes, format checks, fingerprints."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Iterator, TypeVar

import torch

from .errors import ArtifactError, ConfigError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside `path` to write into: renamed onto `path` when the block ends
    without error (readers never see half a file), removed on every other exit. The file gets
    the mode an ordinary new file gets (mkstemp's 0600 would otherwise survive the rename).

    path: the final file; its parent is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (see atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def check_output(path: str | Path, *, folder: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written: a file path that is a folder (or
    a folder path that is a file), or one whose nearest existing parent is a file or not writable.
    Missing parents are fine: the writers create them.

    path: where a command will write.
    folder: whether `path` is an output folder rather than a file.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"output folder {path} is a file; give a folder path")
    if not folder and path.is_dir():
        raise ConfigError(f"output {path} is a folder; give a file path, e.g. {path / 'out'}")
    parent = path if folder else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: no write permission in {parent}")
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


A = TypeVar("A", bound="JsonArtifact")


class JsonArtifact:
    """Base of every versioned JSON artifact (plan, profile, frontier, latency table): the class
    names its KIND and VERSION and implements to_dict (with the "format" field) and from_dict
    (validating, ArtifactError when malformed); save writes atomically, load checks the format and
    names the file in any error."""

    KIND: ClassVar[str]
    VERSION: ClassVar[int]

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - each artifact implements it
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[A], d: dict[str, Any]) -> A:  # pragma: no cover - each artifact implements it
        raise NotImplementedError

    @classmethod
    def format(cls) -> str:
        """The artifact's "format" field, e.g. "hawq.plan/1"."""
        return f"hawq.{cls.KIND}/{cls.VERSION}"

    def save(self, path: str | Path) -> Path:
        """Write the artifact as JSON, atomically (readers never see half a file).

        path: destination file; its parent is created if missing.
        """
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[A], path: str | Path) -> A:
        """Read an artifact written by save(); ArtifactError naming the file if it is missing, of
        another format or malformed.

        path: the file.
        """
        d = read_json(path, cls.KIND, cls.VERSION)
        try:
            return cls.from_dict(d)
        except ArtifactError as e:
            raise ArtifactError(f"{path}: {e}") from e


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
