"""The README's quality, prediction and cost tables, as Markdown, from the committed JSON lines.

    python benchmarks/tables.py                      # from benchmarks/results/
    python benchmarks/tables.py --results out/quality

Reads RESULTS/quality.jsonl (benchmarks/quality.py's results.jsonl), RESULTS/prediction.jsonl
(benchmarks/prediction.py's summary lines) and RESULTS/cost.jsonl where present, and prints one
accuracy table per model (each method's top-1 in %, the best mixed method per budget in bold),
the Spearman table and the seconds each sensitivity took.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS = (("uniform", "uniform"), ("hawq", "**hawq default**: perturbed (guard)"), ("hawq_noguard", "perturbed, ILP only"),
           ("hawq_cross", "perturbed + cross terms (guard)"), ("hawq_cross_noguard", "perturbed + cross terms, ILP only"),
           ("hawq_trace", "HAWQ-V2 trace, ILP"), ("grad_output_score", "grad-output score, ILP"),
           ("hawq_v1_eig", "HAWQ-V1 eigenvalue"), ("aimet_greedy", "AIMET-style greedy"), ("inverted", "inverted"),
           ("random_mean", "random, mean of 5"), ("random_best", "random, best of 5"))
MIXED = {"hawq", "hawq_noguard", "hawq_cross", "hawq_cross_noguard", "hawq_trace", "grad_output_score", "hawq_v1_eig", "aimet_greedy"}
NAMES = {"resnet20": "ResNet-20", "mobilenetv2_fashion": "MobileNetV2", "vit_fashion": "ViT"}


def read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def quality_tables(rows: list[dict]) -> list[str]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        got = {(r["budget_bits"], r["method"]): r for r in rows if r["model"] == model}
        fp = got.get((32.0, "fp32"))
        out.append(f"**{NAMES.get(model, model)}**" + (f", FP32 {100 * fp['accuracy']:.2f}%" if fp else "") + ":\n")
        out.append("| budget (bits) | " + " | ".join(h for _, h in METHODS) + " |")
        out.append("|---" * (len(METHODS) + 1) + "|")
        for bits in sorted({b for b, _ in got if b != 32.0}, reverse=True):
            best = max((got[(bits, m)]["accuracy"] for m in MIXED if (bits, m) in got), default=None)
            cells = []
            for m, _ in METHODS:
                r = got.get((bits, m))
                if r is None:
                    cells.append("–")
                    continue
                c = f"{100 * r['accuracy']:.2f}"
                cells.append(f"**{c}**" if m in MIXED and r["accuracy"] == best else c)
            out.append(f"| {bits:g} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def prediction_table(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if "sensitivity" in r and "spearman" in r]
    models = list(dict.fromkeys(r["model"] for r in rows))
    kinds = list(dict.fromkeys(r["sensitivity"] for r in rows))
    got = {(r["model"], r["sensitivity"]): r for r in rows}
    out = ["| sensitivity | " + " | ".join(f"{NAMES.get(m, m)}: Spearman (pooled), s" for m in models) + " |",
           "|---" * (len(models) + 1) + "|"]
    for k in kinds:
        cells = []
        for m in models:
            r = got.get((m, k))
            cells.append("–" if r is None else f"{r['spearman']:.3f} ({r['spearman_pooled']:.3f}), {r['seconds']:.0f}")
        label = k if k != "default" else f"default ({got[(models[0], k)].get('is', '?')})"  # the last default row
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out + [""]


def cost_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    out = ["| model | sensitivity | seconds | threads |", "|---|---|---|---|"]
    out += [f"| {NAMES.get(r['model'], r['model'])} | {r['sensitivity']} | {r['seconds']:.0f} | {r['threads']} |"
            for r in rows]
    return out + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(Path(__file__).parent / "results"), help="folder of the JSON lines")
    a = p.parse_args()
    d = Path(a.results)
    quality = read(d / "quality.jsonl") or read(d / "results.jsonl")
    lines = quality_tables(quality) + prediction_table(read(d / "prediction.jsonl")) + cost_table(read(d / "cost.jsonl"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
