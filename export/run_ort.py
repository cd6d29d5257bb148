"""Run an exported model of the embedded default in ONNX Runtime: top-1 accuracy on the embedded
Fashion-MNIST evaluation images and median latency at a given batch size.

    python export/run_ort.py out/demo/model.onnx [--batch 1] [--repeats 50] [--provider cpu|cuda]

The session comes from hawq.ort_session (the workarounds hawq's exports need; export/README.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import hawq
from hawq.data import calibration_and_eval

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1, help="batch size for the latency measurement")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's default)")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    a = p.parse_args()
    if a.batch < 1 or a.repeats < 1 or a.threads < 0:
        p.error("--batch and --repeats must be at least 1, --threads at least 0")
    try:
        sess = hawq.ort_session(a.model, providers=PROVIDERS[a.provider], threads=a.threads)
    except hawq.HawqError as e:
        print(f"run_ort: error: {e}", file=sys.stderr)
        sys.exit(2)
    name = sess.get_inputs()[0].name
    _, ev = calibration_and_eval()
    x, y = ev.tensors[0].numpy(), ev.tensors[1].numpy()
    correct = sum(int((sess.run(None, {name: x[i:i + 500]})[0].argmax(1) == y[i:i + 500]).sum()) for i in range(0, len(y), 500))
    xb = x[: a.batch]
    for _ in range(5):
        sess.run(None, {name: xb})
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        sess.run(None, {name: xb})
        times.append(time.perf_counter() - t)
    print(json.dumps({"model": a.model, "accuracy": correct / len(y), "images": len(y), "batch": a.batch,
                      "median_ms": 1000 * statistics.median(times), "providers": sess.get_providers()}))


if __name__ == "__main__":
    main()
