"""Measured per-layer latency: each layer alone, at each (w_bits, a_bits) candidate, quantized,
exported as QDQ ONNX and timed in ONNX Runtime on this machine; a cached table the solver takes
(`solve(profile, Budget(latency_ms=…), SolveSpec(latency=table.ms))`).

A layer's time is the median of `repeats` runs after `warmup` runs, on its real input (captured
from the example batch). The table is keyed by the machine, the runtime and its version, the
model's weights, the candidates and the timing settings; a cached table with another key is
measured again.
"""
from __future__ import annotations

import copy
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .artifacts import JsonArtifact, fingerprint_tensors
from .errors import ArtifactError, ConfigError
from .batches import forward, take
from .graph import fold_bn, trace_layers
from .onnx_export import export_onnx
from .onnx_verify import ort_session
from .rewrite import quantize

log = logging.getLogger(__name__)
FORMAT, VERSION = "latency", 1
TARGETS = ("ort-cpu",)


def _cand_key(c: tuple[int, int]) -> str:
    """"W4A8" for (4, 8).

    c: (w_bits, a_bits).
    """
    return f"W{c[0]}A{c[1]}"


def _parse_cand(s: str) -> tuple[int, int]:
    """(4, 8) for "W4A8"; ValueError otherwise.

    s: the key.
    """
    w, _, a = s.removeprefix("W").partition("A")
    return int(w), int(a)


def _cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo where there is one), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table_key(model: nn.Module, candidates: Sequence[tuple[int, int]], *, target: str, batch: int,
              threads: int, repeats: int) -> dict[str, Any]:
    """What a measured table depends on: machine, runtime, model weights, candidates, settings.

    model: the float model.
    candidates: (w_bits, a_bits) pairs.
    target: the runtime ("ort-cpu").
    batch: input batch size timed.
    threads: runtime threads.
    repeats: timed runs per entry.
    """
    import onnxruntime as ort

    return {"machine": f"{platform.system()} {platform.machine()}, {_cpu_name()}, {os.cpu_count()} CPUs",
            "runtime": f"onnxruntime {ort.__version__}", "target": target,
            "model": fingerprint_tensors(dict(model.state_dict())),
            "candidates": [_cand_key(c) for c in candidates], "batch": batch, "threads": threads, "repeats": repeats}


@dataclass(frozen=True)
class LatencyTable(JsonArtifact):
    """Median milliseconds per layer and candidate, with what they were measured on.

    key: see table_key.
    ms: layer name → (w_bits, a_bits) → median milliseconds.
    seconds: wall time of the measurement.
    """

    KIND, VERSION = FORMAT, VERSION

    key: dict[str, Any]
    ms: dict[str, dict[tuple[int, int], float]]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with "format": "hawq.latency/1"."""
        return {"format": self.format(), "key": self.key, "seconds": self.seconds,
                "ms": {n: {_cand_key(c): v for c, v in row.items()} for n, row in self.ms.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyTable:
        """Parse and validate; ArtifactError if malformed.

        d: the decoded JSON object.
        """
        try:
            ms = {str(n): {_parse_cand(c): float(v) for c, v in row.items()} for n, row in d["ms"].items()}
            if not ms or any(not row or any(not v >= 0 for v in row.values()) for row in ms.values()):
                raise ValueError("every layer needs times ≥ 0")
            return cls(dict(d["key"]), ms, float(d.get("seconds", 0.0)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(f"malformed latency table ({e.__class__.__name__}: {e}); measure it again with "
                                "`hawq latency`") from e


@torch.no_grad()
def _layer_inputs(model: nn.Module, example_input) -> dict[str, torch.Tensor]:
    """Each quantizable layer's input on `example_input`, in the BN-folded model.

    model: the float model.
    example_input: a batch in any form of hawq.batches (a tensor, (x, y), a dict of token ids).
    """
    folded = fold_bn(model).eval()
    names = trace_layers(folded, take(example_input, 0, 1)).names
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen.setdefault(name, inputs[0].detach().clone())
        return hook

    hooks = [folded.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    try:
        forward(folded, example_input)
    finally:
        for h in hooks:
            h.remove()
    return {n: seen[n] for n in names}


def measure_latency(model: nn.Module, example_input, candidates: Sequence[tuple[int, int]], *,
                    target: str = "ort-cpu", batch: int = 1, repeats: int = 30, warmup: int = 5, threads: int = 1,
                    cache: str | Path | None = None) -> LatencyTable:
    """Time every quantizable layer alone at every candidate in ONNX Runtime on this machine.

    model: the float model (unchanged).
    example_input: a batch of real inputs (≥ 1 sample); layer inputs are captured from it, and its
        samples calibrate each one-layer model's activation quantizer.
    candidates: (w_bits, a_bits) pairs.
    target: "ort-cpu" (ONNX Runtime's CPU execution provider).
    batch: the batch size timed.
    repeats: timed runs per entry (the median is kept), after `warmup` untimed runs.
    threads: ONNX Runtime intra-op threads.
    cache: a table file: reused when its key matches, written (atomically) otherwise.
    """
    if target not in TARGETS:
        raise ConfigError(f"target={target!r} is not one of {', '.join(TARGETS)}")
    for name, v, lo in (("batch", batch, 1), ("repeats", repeats, 1), ("warmup", warmup, 0), ("threads", threads, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name}={v!r} must be an integer ≥ {lo}")
    cands = sorted({(int(w), int(a)) for w, a in candidates})
    if not cands:
        raise ConfigError("give at least one (w_bits, a_bits) candidate")
    key = table_key(model, cands, target=target, batch=batch, threads=threads, repeats=repeats)
    if cache is not None and Path(cache).is_file():
        try:
            old = LatencyTable.load(cache)
        except ArtifactError as e:
            log.warning("measuring again: %s", e)
        else:
            if old.key == key:
                return old
            changed = sorted(k for k in key if old.key.get(k) != key.get(k))
            log.warning("measuring again: the cached table differs in %s", ", ".join(changed))
    t0 = time.perf_counter()
    inputs = _layer_inputs(model, example_input)
    folded = fold_bn(model).eval()
    ms: dict[str, dict[tuple[int, int], float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, x) in enumerate(inputs.items()):
            one = nn.Sequential(copy.deepcopy(folded.get_submodule(name)))
            xb = x[:1].expand(batch, *x.shape[1:]).contiguous()
            ms[name] = {}
            for c in cands:
                q = quantize(one, {"0": c}, [x])
                path = Path(tmp) / f"{i}_{c[0]}_{c[1]}.onnx"
                export_onnx(q, x[:1], path, verify=False)
                sess = ort_session(path, threads=threads)
                feed = {sess.get_inputs()[0].name: xb.numpy()}
                for _ in range(warmup):
                    sess.run(None, feed)
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    sess.run(None, feed)
                    times.append((time.perf_counter() - t) * 1e3)
                ms[name][c] = statistics.median(times)
            log.info("latency %s: %s", name, ", ".join(f"{_cand_key(c)} {v:.4f} ms" for c, v in ms[name].items()))
    table = LatencyTable(key, ms, time.perf_counter() - t0)
    if cache is not None:
        table.save(cache)
    return table
