"""Time and peak memory of `hawq.profile` on Hugging Face transformers, one run per process.

    python benchmarks/hf_profile.py [--models bert_tiny,gpt2_tiny,gpt2_small] [--sensitivities perturbed,trace]
        [--sequences 4] [--length 128] [--out benchmarks/results/hf_profile.jsonl]

bert_tiny and gpt2_tiny are the recipes' models (hawq.hf, random weights) on their synthetic data
(batches of 12, 20 and 32 tokens); gpt2_small is GPT-2's default configuration (124M weights,
random) on `--sequences` random sequences of `--length` tokens in batches of 2. Each (model,
sensitivity) runs in a fresh process, so its peak resident memory (ru_maxrss) is its own; "trace"
runs 4 probes with double backward (the engine choice would time all three on a 124M model).
One JSON line each: model, sensitivity, params, layers, seconds, peak_rss_mb, base_rss_mb (the
process with the model and data built, before profiling).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def one(model_name: str, sensitivity: str, sequences: int, length: int) -> dict:
    import transformers

    import hawq
    from hawq import hf

    torch.manual_seed(0)
    if model_name == "gpt2_small":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
        g = torch.Generator().manual_seed(0)
        data = []
        for _ in range(0, sequences, 2):
            ids = torch.randint(0, model.config.vocab_size, (2, length), generator=g)
            data.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    else:
        model = hf.build(model_name)
        data, _ = hf.synthetic_data(model_name, "random", 16, 0, 8)
    base = _rss_mb()
    kw = {"sensitivity": sensitivity, "bits": (2, 4, 8)}
    if sensitivity == "trace":
        kw.update(max_probes=4, min_probes=4, engine="double_backward")
    t = time.perf_counter()
    prof = hawq.profile(model, None, data, **kw)
    seconds = time.perf_counter() - t
    return {"model": model_name, "sensitivity": sensitivity, "params": sum(l.params for l in prof.layers),
            "layers": len(prof.layers), "tokens": sum(int(b["attention_mask"].sum()) for b in data),
            "seconds": round(seconds, 2), "peak_rss_mb": round(_rss_mb()), "base_rss_mb": round(base),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="bert_tiny,gpt2_tiny,gpt2_small")
    p.add_argument("--sensitivities", default="perturbed,trace")
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--out", type=Path)
    p.add_argument("--one", nargs=2, metavar=("MODEL", "SENSITIVITY"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(*a.one, a.sequences, a.length)))
        return
    rows = []
    for m in a.models.split(","):
        for s in a.sensitivities.split(","):
            done = subprocess.run([sys.executable, __file__, "--one", m, s, "--sequences", str(a.sequences),
                                   "--length", str(a.length)], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{m} {s} failed:\n{done.stderr[-2000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
