"""Size and ONNX Runtime (CPU) latency of FP32, W8A8 and mixed-precision exports of the same model.

    python benchmarks/export_speed.py [--models default,resnet18,mobilenet_v2] [--res 224]
        [--targets ort,tensorrt] [--int8 u8u8,reduce-range] [--threads 1] [--repeats 50]
        [--out out/export_speed] [--omega-trace upper|mean] [--no-latency-table]

Prints one JSON line per model, variant and target:
    {"model", "variant": "fp32"|"w8a8"|"mixed", "target", "int8", "median_ms", "file_bytes",
     "weight_bytes", "plan_weight_bytes", ...}
- the embedded default is hawq.load_default_model() with its calibration images; resnet18 and
  mobilenet_v2 are torchvision's with random weights (seed 0) and N(0, 1) inputs at --res;
- fp32: the float model exported as is (opset 21); w8a8: every layer W8A8; mixed: the Hessian plan
  solved per target among what it runs (SolveSpec(target=...)) over {2, 4, 8} bits, at the size of
  the target's uniform 4-bit plan (on tensorrt convs run only at 8 bits, so that plan has W8A8 convs
  and INT4 weight-only Linears); first/last layers pinned to 8; profiled once per model on 2
  batches of 8 at 64x64 for the torchvision models, on the calibration images for the default;
- both quantized variants use hawq.quantize(..., quantize_outputs=True, target=...) (conv outputs
  feeding adds or pooling quantized too, so ONNX Runtime runs every 8-bit conv as QLinearConv;
  tensorrt: symmetric activations); `promoted_layers` and `changes` count what the legaliser still
  changed (none expected); every export is verified (hawq.export_onnx) before timing;
- weight_bytes: what the file spends on the quantized layers' weights (codes + scales + zero
  points; fp32: their float initializers); plan_weight_bytes: the plan's packed size (each layer's
  weights in the smallest ONNX container for its planned bits) plus one float32 scale per output
  channel (fp32: 4 bytes a weight); legal_plan_weight_bytes: the same for the plan as the target's
  legaliser left it (equal to plan_weight_bytes when nothing was promoted);
- int8: the ort target's scheme for 8-bit weights behind 8-bit inputs (hawq.legalize.ORT_INT8):
  one ort file per scheme in --int8 (u8u8, the default, UINT8 + 128; reduce-range, 7-bit codes in
  INT8; both exact on every CPU); null for tensorrt and fp32;
- median_ms: batch 1, the same input for all variants, `--repeats` runs after 5 warm-ups, timed
  round-robin over a model's files, in one ONNX Runtime CPU session per file with --threads
  intra-op threads (tensorrt files too: their ONNX Runtime latency says nothing of TensorRT's).
- table_sum_ms (ort, u8u8 rows): the plan's latency as the per-layer table sums it
  (hawq.measure_latency at W{2,4,8}A8, batch 1, the same threads; each layer alone, with its own
  Q/DQ at input and output), the figure a latency_ms budget limits; null elsewhere;
A last line `{"summary": ...}` checks the targets: W8A8 <= 0.6x FP32 latency on resnet18 (ort, per scheme),
and weight bytes within 5% of legal_plan_weight_bytes for every variant (the file stores what the
legalised plan says, packed); `legal_over_plan_bytes` gives legal / requested plan bytes (1 for ort);
`table_sum_over_measured` the per-layer table's sum over the whole file's median latency.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from pathlib import Path

import onnx
import torch
from torch.nn import functional as F

import hawq
from hawq.graph import trace_layers
from hawq.target import ORT_INT8

TORCHVISION = ("resnet18", "mobilenet_v2")


def load(name: str, res: int):
    """(model, calibration batches [(x, y)], profile batches, example input)."""
    g = torch.Generator().manual_seed(0)
    if name == "default":
        model = hawq.load_default_model().eval()
        cal, _ = hawq.load_data(hawq.default_recipe())  # the 1,000 calibration images
        return model, cal, cal[:2], cal[0][0][:1]
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    batches = [(torch.randn(8, 3, res, res, generator=g), torch.randint(0, 1000, (8,), generator=g)) for _ in range(2)]
    prof = [(torch.randn(8, 3, 64, 64, generator=g), torch.randint(0, 1000, (8,), generator=g)) for _ in range(2)]
    return model, batches, prof, torch.randn(1, 3, res, res, generator=g)


def profile_of(model, prof_batches, omega_trace: str = "upper") -> hawq.Profile:
    return hawq.profile(model, F.cross_entropy, prof_batches, bits=(2, 4, 8), max_probes=8, min_probes=4, rel_tol=0.2,
                        omega_trace=omega_trace)


def plans(prof: hawq.Profile, target: str) -> dict[str, hawq.Plan]:
    """W8A8, and the plan solved among what `target` runs at the size of its uniform 4-bit plan
    (the uniform plan as the target runs it: on tensorrt, convs at W8A8 and 4-bit Linears INT4
    weight-only)."""
    spec = hawq.SolveSpec(bits=(2, 4, 8), target=target)
    budget = hawq.Budget(megabytes=hawq.uniform_plan(prof, 4, spec).weight_bytes / 1e6)
    return {"w8a8": hawq.uniform_plan(prof, 8, hawq.SolveSpec(target=target)), "mixed": hawq.solve(prof, budget, spec)}


def table_sum(table, plan: hawq.Plan) -> float | None:
    """The plan's latency as the per-layer table adds it up (each layer timed alone), or None."""
    if table is None:
        return None
    return round(math.fsum(table.ms[l.name][(l.w_bits, l.a_bits)] for l in plan.layers), 3)


def fp32_file(model, x, path: Path) -> tuple[int, int, int]:
    """(file bytes, weight bytes in the file, 4 · Σ params) of the float export."""
    prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=21, optimize=False, verbose=False,
                             input_names=["input"], output_names=["output"], dynamic_shapes=({0: torch.export.Dim.AUTO},))
    onnx.save(prog.model_proto, str(path))
    names = {f"{n}.weight" for n in trace_layers(model, x).names}
    stored = sum(len(t.raw_data) for t in prog.model_proto.graph.initializer if t.name in names)
    params = sum(model.get_submodule(n.rsplit(".", 1)[0]).weight.numel() for n in names)
    return path.stat().st_size, stored, 4 * params


def plan_bytes(qmodel) -> int:
    """The plan's packed size plus one float32 scale per output channel."""
    from hawq.legalize import container_for, CONTAINER_BITS
    from hawq.rewrite import quant_layers

    return sum(-(-l.w_int.numel() * CONTAINER_BITS[container_for(l.w_bits, 25)] // 8) + 4 * l.w_int.shape[0]
               for l in quant_layers(qmodel).values())


def channels(qmodel) -> int:
    """Output channels of the quantized layers: one float32 scale each in the packed sizes."""
    from hawq.rewrite import quant_layers

    return sum(l.w_int.shape[0] for l in quant_layers(qmodel).values())


def median_ms(paths: list[Path], x: torch.Tensor, threads: int, repeats: int, rounds: int = 5) -> list[float]:
    """Median batch-1 latency of each file, timed round-robin (`rounds` rounds of repeats/rounds
    runs each, after 5 warm-ups) so that load from other processes hits every variant alike."""
    sessions = [hawq.ort_session(p, threads=threads) for p in paths]
    feeds = [{s.get_inputs()[0].name: x.numpy()} for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(5):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for s, f, t in zip(sessions, feeds, times):
            for _ in range(max(1, repeats // rounds)):
                t0 = time.perf_counter()
                s.run(None, f)
                t.append(time.perf_counter() - t0)
    return [1000 * statistics.median(t) for t in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="default,resnet18,mobilenet_v2")
    p.add_argument("--targets", default="ort,tensorrt")
    p.add_argument("--int8", default=",".join(ORT_INT8[:2]), help="the ort target's int8 schemes, one file each")
    p.add_argument("--res", type=int, default=224, help="input size of the torchvision models")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", default="out/export_speed")
    p.add_argument("--no-latency-table", action="store_true",
                   help="skip the per-layer latency table (hawq.measure_latency) the quantized ort plans are summed in")
    p.add_argument("--omega-trace", default="upper", choices=("upper", "mean"),
                   help="the trace the mixed plans' Ω uses (hawq.profile's omega_trace)")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    exports = [(t, s) for t in a.targets.split(",") for s in (a.int8.split(",") if t == "ort" else [None])]
    for name in a.models.split(","):
        model, batches, prof_batches, x = load(name, a.res)
        fp32 = out / f"{name}_fp32.onnx"
        file_bytes, stored, params4 = fp32_file(model, x, fp32)
        model_rows, paths = [], [fp32]
        for target in a.targets.split(","):
            model_rows.append({"model": name, "variant": "fp32", "target": target, "int8": None, "path": fp32,
                               "file_bytes": file_bytes,
                               "weight_bytes": stored, "plan_weight_bytes": params4, "legal_plan_weight_bytes": params4})
        prof = profile_of(model, prof_batches, a.omega_trace)
        table = None if a.no_latency_table else hawq.measure_latency(
            model, batches[0][0], [(w, 8) for w in (2, 4, 8)], threads=a.threads, cache=out / f"{name}_latency.json")
        for target in a.targets.split(","):
            for variant, plan in plans(prof, target).items():
                qmodel = hawq.quantize(model, plan, batches, quantize_outputs=True, target=hawq.Target(target))
                for int8 in [s for t, s in exports if t == target]:
                    path = out / f"{name}_{variant}_{target}{'' if int8 in (None, ORT_INT8[0]) else '-' + int8}.onnx"
                    t0 = time.time()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", hawq.LegalizationWarning)  # the report lists the changes
                        rep = hawq.export_onnx(qmodel, x, path, target=target, verify_inputs=[b[0] for b in batches],
                                               int8=int8 or ORT_INT8[0])
                    export_s = time.time() - t0
                    path.with_suffix(".verify.json").write_text((path.parent / "verify.json").read_text())
                    v = rep.verification
                    kernels: dict[str, int] = {}
                    for l in rep.layers:
                        kernels[l.ort_kernel] = kernels.get(l.ort_kernel, 0) + 1
                    paths.append(path)
                    model_rows.append({
                        "model": name, "variant": variant, "target": target, "int8": int8, "path": path,
                        "file_bytes": rep.file_bytes, "plan_avg_bits": round(plan.avg_bits, 4),
                        "weight_bytes": rep.weight_bytes + rep.scale_bytes, "plan_weight_bytes": plan_bytes(qmodel),
                        "legal_plan_weight_bytes": rep.packed_weight_bytes + 4 * channels(qmodel),
                        "opset": rep.opset, "promoted_layers": sorted({c.layer for c in rep.changes if c.what == "weight_bits"}),
                        "changes": len(rep.changes),
                        "cosine": round(v.cosine, 6), "top1_agreement": v.top1_agreement,
                        "frac_off_by_more_than_1_step": v.frac_off_by_more_than_1_step,
                        "float32_frac_off_by_more_than_1_step": v.float32_frac_off_by_more_than_1_step,
                        "plan_cosine": None if v.plan_cosine is None else round(v.plan_cosine, 6),
                        "kernels": kernels, "export_s": round(export_s, 1),
                        "table_sum_ms": table_sum(table, plan) if target == "ort" and int8 == ORT_INT8[0] else None})
        ms = median_ms(paths, x, a.threads, a.repeats)
        timed = {p: m for p, m in zip(paths, ms)}
        for r in model_rows:
            r = {**{k: r[k] for k in ("model", "variant", "target", "int8")}, "median_ms": round(timed[r["path"]], 3),
                 **{k: v for k, v in r.items() if k not in ("model", "variant", "target", "int8", "path")},
                 "res": None if name == "default" else a.res, "threads": a.threads}
            emit(r)
    summary = {"w8a8_over_fp32_resnet18_ort": {}, "weight_bytes_within_5pct": {}, "legal_over_plan_bytes": {},
               "table_sum_over_measured": {}}
    by = {(r["model"], r["variant"], r["target"], r["int8"]): r for r in rows}
    for (model, variant, target, int8), r in by.items():
        if (model, variant, target) == ("resnet18", "w8a8", "ort"):
            ratio = r["median_ms"] / by["resnet18", "fp32", "ort", None]["median_ms"]
            summary["w8a8_over_fp32_resnet18_ort"][int8] = [round(ratio, 3), ratio <= 0.6]
    for r in rows:
        key = f'{r["model"]}/{r["variant"]}/{r["target"]}' + (f'/{r["int8"]}' if r["int8"] else "")
        ratio = r["weight_bytes"] / r["legal_plan_weight_bytes"]
        summary["weight_bytes_within_5pct"][key] = [round(ratio, 4), abs(ratio - 1) <= 0.05]
        summary["legal_over_plan_bytes"][key] = round(r["legal_plan_weight_bytes"] / r["plan_weight_bytes"], 4)
        if r.get("table_sum_ms") is not None:
            summary["table_sum_over_measured"][key] = round(r["table_sum_ms"] / r["median_ms"], 3)
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
