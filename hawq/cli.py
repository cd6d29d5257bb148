"""The `hawq` command: parse, call the public API, print. User errors: one line, exit 2."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F

import hawq


def _bits(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,4,8, not {s!r}")


def _pin(s: str) -> tuple[str, int]:
    name, _, b = s.rpartition("=")
    if not name or not b.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=BITS like fc=8, not {s!r}")
    return name, int(b)


def _recipe(path: str | None) -> hawq.Recipe:
    return hawq.default_recipe() if path is None else hawq.load_recipe(path)


def cmd_profile(a) -> None:
    r = _recipe(a.recipe)
    model, (batches, _) = hawq.load_model(r), hawq.load_data(r)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():  # under torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    prof = hawq.profile(model, F.cross_entropy, batches, a.bits or r.profile_bits, rel_tol=a.rel_tol or r.rel_tol,
                        max_probes=a.max_probes or r.max_probes, seed=r.seed if a.seed is None else a.seed,
                        probes_per_batch=a.probes_per_batch or r.probes_per_batch, engine=a.engine,
                        progress=not a.quiet, cache=a.out)
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    print(f"{len(prof.layers)} layers, {prof.settings.get('probes')} probes, {prof.seconds:.1f} s -> {a.out}")
    for l in prof.layers:
        print(f"  {l.name:<24} trace {l.trace:>10.4g} ± {1.96 * l.trace_se:<9.2g} params {l.params}")
    if prof.unconverged:
        print(f"not converged to the target: {', '.join(prof.unconverged)}")


def cmd_solve(a) -> None:
    prof = hawq.Profile.load(a.profile)
    kind = next(k for k in ("megabytes", "avg_bits", "ratio") if getattr(a, k) is not None)
    pins = {} if a.no_default_pins else None
    if a.pin:
        pins = {**({} if pins == {} else _first_last(prof)), **dict(a.pin)}
    ties = prof.groups if a.tie_shared_inputs else ()
    plan = hawq.solve(prof, hawq.Budget(**{kind: getattr(a, kind)}), bits=a.bits, pins=pins, ties=ties)
    plan.save(a.out)
    print(f"{plan.label}: {plan.weight_bytes / 1e6:.4f} MB, {plan.avg_bits:.3f} avg bits, Ω {plan.omega:.4g}, "
          f"{plan.status} in {plan.solve_seconds:.2f} s -> {a.out}")
    for l in plan.layers:
        print(f"  {l.name:<24} W{l.w_bits}A{l.a_bits}{'  (pinned)' if l.pinned else ''}")


def _first_last(prof: hawq.Profile) -> dict[str, int]:
    return {prof.layers[0].name: 8, prof.layers[-1].name: 8}


def cmd_quantize(a) -> None:
    r = _recipe(a.recipe)
    model, (batches, ev) = hawq.load_model(r), hawq.load_data(r)
    plan = hawq.Plan.load(a.plan)
    q = hawq.quantize(model, plan, batches)
    acc, loss = hawq.evaluate(q, ev)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(a.out) + ".tmp")
    torch.save({"model": q, "inputs": batches[0][0], "plan": plan.to_dict()}, tmp)
    tmp.replace(a.out)
    print(f"{plan.label}: accuracy {acc:.4f} (loss {loss:.4f}) on {len(ev)} images -> {a.out}")


def cmd_export(a) -> None:
    try:
        blob = torch.load(a.qmodel, map_location="cpu", weights_only=False)
        q, x = blob["model"], blob["inputs"]
    except FileNotFoundError:
        raise hawq.HawqError(f"{a.qmodel} not found; make it with `hawq quantize --plan PLAN --out {a.qmodel}`")
    except Exception as e:
        raise hawq.HawqError(f"{a.qmodel} is not a hawq quantized model ({e.__class__.__name__}); make it with `hawq quantize`")
    rep = hawq.export_onnx(q, x[:1], a.out, verify=not a.no_verify, opset=a.opset, verify_inputs=x)
    print(json.dumps({k: v for k, v in rep.to_dict().items() if k != "layers"}, indent=1))


def cmd_run(a) -> None:
    r = hawq.load_recipe(a.recipe)
    _print_run(hawq.run_recipe(r, a.out or f"out/{r.name}", progress=not a.quiet), a.out or f"out/{r.name}")


def cmd_demo(a) -> None:
    _print_run(hawq.run_recipe(hawq.default_recipe(), a.out, progress=not a.quiet), a.out)


def _print_run(res: hawq.RunResult, out: str) -> None:
    print()
    print(hawq.table(res.rows))
    s = res.summary()["onnx"]
    print(f"\nONNX: {s['path']} ({s['file_bytes']} bytes), onnxruntime vs PyTorch: top-1 agreement "
          f"{s['top1_agreement']}, max |diff| {s['max_abs_diff']:.3g}")
    print(f"{res.seconds:.0f} s; wrote {out}/: profile.json, plan_*.json, model.onnx, verify.json, report.md, summary.json")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hawq", description="Hessian-aware mixed-precision quantization for PyTorch.")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    p.add_argument("--version", action="version", version=f"hawq {hawq.__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    rec_help = "recipe TOML (default: the embedded ResNet-20 on Fashion-MNIST)"

    s = sub.add_parser("profile", help="per-layer Hessian traces and Ω(bits) -> profile.json")
    s.add_argument("recipe", nargs="?", help=rec_help)
    s.add_argument("--out", default="profile.json")
    s.add_argument("--bits", type=_bits, help="bit widths to compute Ω for, e.g. 2,3,4,8")
    s.add_argument("--rel-tol", type=float, help="target relative standard error of each significant layer")
    s.add_argument("--max-probes", type=int, help="probe cap")
    s.add_argument("--seed", type=int)
    s.add_argument("--probes-per-batch", type=int, help="Rademacher probes on each batch per round")
    s.add_argument("--engine", default="auto", choices=("auto", "double_backward", "double_backward_batched", "jvp_vmap"),
                   help="HVP engine; auto times one probe of each and keeps the fastest")
    s.set_defaults(fn=cmd_profile)

    s = sub.add_parser("solve", help="per-layer bits under a weight budget (ILP) -> plan.json")
    s.add_argument("profile", help="profile.json from `hawq profile`")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--megabytes", type=float, help="weight budget in MB (1e6 bytes)")
    g.add_argument("--avg-bits", type=float, help="budget as average weight bits")
    g.add_argument("--ratio", type=float, help="budget r in [0,1] between all-lowest and all-highest bits")
    s.add_argument("--bits", type=_bits, help="candidate weight bits (default: the profile's)")
    s.add_argument("--pin", type=_pin, action="append", help="NAME=BITS; repeatable (first and last layers are pinned to 8 unless --no-default-pins)")
    s.add_argument("--no-default-pins", action="store_true", help="do not pin the first and last layers to 8 bits")
    s.add_argument("--tie-shared-inputs", action="store_true", help="layers reading the same tensor get equal bits")
    s.add_argument("--out", default="plan.json")
    s.set_defaults(fn=cmd_solve)

    s = sub.add_parser("quantize", help="fake-quantize and calibrate a model by a plan, and evaluate it")
    s.add_argument("recipe", nargs="?", help=rec_help)
    s.add_argument("--plan", required=True)
    s.add_argument("--out", default="qmodel.pt")
    s.set_defaults(fn=cmd_quantize)

    s = sub.add_parser("export", help="QDQ ONNX from `hawq quantize` output, verified in onnxruntime")
    s.add_argument("qmodel", help="file written by `hawq quantize`")
    s.add_argument("--out", default="model.onnx")
    s.add_argument("--opset", type=int, default=21)
    s.add_argument("--no-verify", action="store_true")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("run", help="the whole pipeline for a recipe")
    s.add_argument("recipe")
    s.add_argument("--out", help="output folder (default out/<recipe name>)")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("demo", help="the whole pipeline on the embedded ResNet-20 / Fashion-MNIST")
    s.add_argument("--out", default="out/demo")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    a.quiet = a.quiet or not sys.stderr.isatty()
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        a.fn(a)
    except hawq.HawqError as e:
        print(f"hawq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hawq: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
