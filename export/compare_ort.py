"""Time several ONNX files of the same model (FP32, W8A8, mixed, ...) in ONNX Runtime on the same
inputs, and compare their outputs with the first one's.

    python export/compare_ort.py fp32=out/m_fp32.onnx w8a8=out/m_w8a8.onnx mixed=out/m_mixed.onnx \
        [--batch 1] [--repeats 50] [--threads 1] [--provider cpu|cuda] [--seed 0] [--embedded]

Inputs are N(0, 1) of the first file's input shape (its batch dimension set to --batch; the same
array for every file), or with --embedded the first --batch embedded Fashion-MNIST evaluation
images (for exports of hawq's default model). Timing is round-robin over the files (5 rounds), after 5 warm-up runs each,
so that load from other processes hits every file alike. Sessions come from hawq.ort_session,
which applies the ONNX Runtime workarounds hawq's exports need (see export/README.md). Prints one
JSON line per file: label, path, provider(s), median_ms, output shape, max |diff| and top-1
agreement against the first file.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import hawq

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="LABEL=PATH, e.g. fp32=model_fp32.onnx")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's default)")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embedded", action="store_true", help="use the embedded Fashion-MNIST evaluation images")
    a = p.parse_args()
    pairs = [m.split("=", 1) if "=" in m else (m, m) for m in a.models]
    sessions = [hawq.ort_session(path, providers=PROVIDERS[a.provider], threads=a.threads) for _, path in pairs]
    first = sessions[0].get_inputs()[0]
    shape = [a.batch] + [d if isinstance(d, int) else 1 for d in first.shape[1:]]
    if a.embedded:
        from hawq.data import calibration_and_eval

        x = calibration_and_eval()[1].tensors[0][: a.batch].numpy()
    else:
        x = np.random.default_rng(a.seed).standard_normal(shape).astype(np.float32)
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    outs = [s.run(None, f)[0] for s, f in zip(sessions, feeds)]
    for s, f in zip(sessions, feeds):
        for _ in range(5):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(5):
        for s, f, t in zip(sessions, feeds, times):
            for _ in range(max(1, a.repeats // 5)):
                t0 = time.perf_counter()
                s.run(None, f)
                t.append(time.perf_counter() - t0)
    for (label, path), s, y, t in zip(pairs, sessions, outs, times):
        row = {"label": label, "path": path, "providers": s.get_providers(), "median_ms": round(1000 * statistics.median(t), 3),
               "output_shape": list(y.shape), "max_abs_diff_vs_first": float(np.abs(y - outs[0]).max())}
        if y.ndim == 2:
            row["top1_agreement_vs_first"] = float((y.argmax(1) == outs[0].argmax(1)).mean())
        print(json.dumps(row))


if __name__ == "__main__":
    main()
