"""How to keep ONNX Runtime's 8-bit integers exact on every CPU: the ort target's `int8` schemes
side by side, on the same quantized models, in one run.

    python benchmarks/ort_int8.py [--models resnet20,mobilenetv2_fashion,resnet18] [--threads 1]
        [--repeats 200] [--out out/ort_int8] > benchmarks/results/ort_int8.jsonl

Schemes (hawq.export_onnx(..., int8=...), see hawq.legalize):
  - u8u8: 8-bit weights behind 8-bit inputs stored UINT8 with zero point 128 (u8×u8 kernels);
  - reduce-range: those weights given 7-bit codes (±63) in INT8 (u8×s8 kernels, no pair exceeds
    int16), by hawq.quantize(..., target=Target("ort", "reduce-range")), so the export changes nothing;
  - s8-vnni: INT8 at full range (u8×s8 kernels), exact only on CPUs with VNNI, AMX or ARM64.
Models: the two embedded Fashion-MNIST models with their checkpoints (accuracy of the ONNX file
in ONNX Runtime on the 9,000 evaluation images, and of hawq.quantize's fake-quant model in PyTorch,
the accuracy hawq reports),
and torchvision's resnet18 with random weights at 224×224 (latency only: there the integer
kernels dominate). Every layer W8A8, outputs quantized too (hawq.quantize(...,
quantize_outputs=True)) so that every conv runs as QLinearConv. Latency: batch 1 and batch 64
(embedded models) or 8 (resnet18), median of `--repeats` runs timed round-robin over the three
files. Each file is verified (except s8-vnni on a CPU whose probe says its u8×s8 kernel
saturates: `verified` false) and its integers checked against this CPU's probe. One JSON line per
model and scheme, then {"cpu": ...} (hawq.cpu.describe) and a summary of ratios to u8u8.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import hawq
from hawq import cpu
from hawq import data as D
from hawq.errors import VerificationError
from hawq.graph import trace_layers
from hawq.target import ORT_INT8
from hawq.models import load_embedded
from hawq.rewrite import quant_layers


def load(name: str):
    """(model, calibration batches, evaluation (x, y) or None, latency batch sizes)."""
    if name == "resnet18":
        import torchvision

        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        return model, [torch.randn(8, 3, 224, 224, generator=g) for _ in range(2)], None, (1, 8)
    cal, ev = D.calibration_and_eval()
    x, y = ev.tensors
    return load_embedded(name), [b[0] for b in D.loader(cal, 200)], (x, y), (1, 64)


def ort_accuracy(sess, x: torch.Tensor, y: torch.Tensor) -> float:
    name = sess.get_inputs()[0].name
    hits = sum(int((sess.run(None, {name: x[i:i + 500].numpy()})[0].argmax(1) == y[i:i + 500].numpy()).sum())
               for i in range(0, len(y), 500))
    return hits / len(y)


def latencies(sessions: list, x: np.ndarray, repeats: int, rounds: int = 5) -> list[float]:
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(3):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for s, f, t in zip(sessions, feeds, times):
            for _ in range(max(1, repeats // rounds)):
                t0 = time.perf_counter()
                s.run(None, f)
                t.append(time.perf_counter() - t0)
    return [1000 * statistics.median(t) for t in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet20,mobilenetv2_fashion,resnet18")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--out", default="out/ort_int8")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.models.split(","):
        model, cal, ev, batch_sizes = load(name)
        plan = {n: (8, 8) for n in trace_layers(model, cal[0]).names}
        full = hawq.quantize(model, plan, cal, quantize_outputs=True)
        narrowed = hawq.quantize(model, plan, cal, quantize_outputs=True, target=hawq.Target("ort", "reduce-range"))
        model_rows, paths = [], []
        for scheme in ORT_INT8:
            qmodel = narrowed if scheme == "reduce-range" else full
            path = out / f"{name}_{scheme}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", hawq.LegalizationWarning)  # reduce-range: its changes are reported
                try:
                    rep = hawq.export_onnx(qmodel, cal[0][:1], path, int8=scheme, verify_inputs=cal[:2])
                    verified = True
                except VerificationError:
                    rep = hawq.export_onnx(qmodel, cal[0][:1], path, int8=scheme, verify=False)
                    verified = False
            row = {"model": name, "int8": scheme, "verified": verified, "exact_on": rep.exact_on,
                   "weight_types": sorted({l.weight_type for l in rep.layers}),
                   "layers_7bit_codes": sum(bool(l.w_code_bits) for l in quant_layers(qmodel).values()),
                   "export_changes": len(rep.changes),
                   "kernels": {k: sum(l.ort_kernel == k for l in rep.layers) for k in {l.ort_kernel for l in rep.layers}},
                   "file_bytes": rep.file_bytes}
            if rep.verification is not None:
                row["cosine"] = round(rep.verification.cosine, 6)
            if ev is not None:
                row["pytorch_accuracy"] = round(hawq.evaluate(qmodel, list(zip(ev[0].split(500), ev[1].split(500))))[0], 4)
                row["ort_accuracy"] = round(ort_accuracy(hawq.ort_session(path, threads=a.threads), *ev), 4)
            model_rows.append(row)
            paths.append(path)
        sessions = [hawq.ort_session(p, threads=a.threads) for p in paths]
        for b in batch_sizes:
            x = (cal[0][:b] if cal[0].shape[0] >= b else cal[0][:1].repeat(b, *([1] * (cal[0].dim() - 1)))).numpy()
            for row, ms in zip(model_rows, latencies(sessions, x, a.repeats if b == 1 else max(10, a.repeats // 10))):
                row[f"median_ms_batch{b}"] = round(ms, 3)
        for row in model_rows:
            row["threads"] = a.threads
            rows.append(row)
            print(json.dumps(row), flush=True)
    info = cpu.describe()
    print(json.dumps({"cpu": info}))
    by = {(r["model"], r["int8"]): r for r in rows}
    summary = {}
    for (m, s), r in by.items():
        base = by[(m, "u8u8")]
        summary[f"{m}/{s}"] = {k: round(r[k] / base[k], 3) for k in r if k.startswith("median_ms")}
    print(json.dumps({"summary": {"latency_over_u8u8": summary}}))


if __name__ == "__main__":
    main()
