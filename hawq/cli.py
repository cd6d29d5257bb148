"""The `hawq` command: parse, call the public API, print. User errors: one line, exit 2."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

import hawq
from hawq.target import ORT_INT8, TARGETS
from hawq.sensitivity import SENSITIVITIES


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one `hawq: error:` line like every other user error."""

    def error(self, message: str):
        print(f"hawq: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _bits(s: str) -> tuple[int, ...]:
    try:
        bits = tuple(int(b) for b in s.split(","))
    except ValueError:
        bits = ()
    if not bits or not all(2 <= b <= 16 for b in bits):
        raise argparse.ArgumentTypeError(f"expected comma-separated widths in 2..16 like 2,4,8, not {s!r}")
    return bits


def _width(s: str) -> int:
    bits = _bits(s)
    if len(bits) != 1:
        raise argparse.ArgumentTypeError(f"expected one width in 2..16, not {s!r}")
    return bits[0]


def _at_least(low: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {low}, not {s!r}")
        return v
    return parse


def _pin(s: str) -> tuple[str, int | tuple[int, int]]:
    name, _, b = s.rpartition("=")
    w, _, act = b.partition(":")
    if not name or not w.isdigit() or (act and not act.isdigit()):
        raise argparse.ArgumentTypeError(f"expected NAME=BITS or NAME=W:A like fc=8 or 'layer3\\..*=4:8', not {s!r}")
    return name, (int(w), int(act)) if act else int(w)


LIMITS = hawq.BUDGET_KINDS


def _limits(a) -> dict[str, float]:
    return {k: getattr(a, k) for k in LIMITS if getattr(a, k, None) is not None}


def _spec(a, prof: hawq.Profile, latency=None) -> hawq.SolveSpec:
    """What the solve and pareto flags let the solver choose: --pin rules after the first and last
    layer at 8 bits (unless --no-default-pins), the ties, the candidate widths, the MIP solver."""
    pins = {} if a.no_default_pins else hawq.DEFAULT_PINS
    if a.pin:
        pins = {**({} if pins == {} else hawq.default_pins(prof)), **dict(a.pin)}
    return hawq.SolveSpec(bits=a.bits, a_bits=a.a_bits, pins=pins, ties=_ties(a), latency=latency, solver=a.solver,
                          time_limit=getattr(a, "time_limit", None), target=a.target)


def _recipe(path: str | None) -> hawq.Recipe:
    return hawq.default_recipe() if path is None else hawq.load_recipe(path)


def _or(value, default):
    """The option if given, else the recipe's (0 and other falsy values count as given)."""
    return default if value is None else value


def cmd_profile(a) -> None:
    hawq.check_output(a.out)
    r = _recipe(a.recipe)
    model, (batches, _) = hawq.load_model(r), hawq.load_data(r)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():  # under torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    prof = hawq.profile(model, None, batches, _or(a.bits, r.profile_bits), rel_tol=_or(a.rel_tol, r.rel_tol),
                        max_probes=_or(a.max_probes, r.max_probes), seed=_or(a.seed, r.seed),
                        probes_per_batch=_or(a.probes_per_batch, r.probes_per_batch), engine=a.engine,
                        progress=not a.quiet, cache=a.out, a_bits=_or(a.a_bits, ()),
                        omega_trace=_or(a.omega_trace, r.omega_trace), sensitivity=_or(a.sensitivity, r.sensitivity),
                        layers=a.layers, exclude=a.exclude)
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    if prof.skipped:
        print(f"{len(prof.skipped)} layer(s) left out, kept in float: {', '.join(prof.skipped)}")
    if prof.measured:
        print(f"{len(prof.layers)} layers, Ω from each layer rounded alone ({prof.effort}), {prof.seconds:.1f} s -> {a.out}")
        for l in prof.layers:
            print(f"  {l.name:<24} " + "  ".join(f"Ω({b}) {l.omega[b]:<9.3g}" for b in sorted(prof.bits))
                  + f" params {l.params}")
        if prof.interactions:
            print(f"  and {len(prof.interactions)} cross-layer terms, which solve optimises with Ω")
        return
    print(f"{len(prof.layers)} layers, {prof.settings.get('probes')} probes, {prof.seconds:.1f} s -> {a.out}")
    for l in prof.layers:
        act = "" if l.act_trace is None else f"  input trace {l.act_trace:>9.4g} ± {1.96 * l.act_trace_se:.2g}"
        print(f"  {l.name:<24} trace {l.trace:>10.4g} ± {1.96 * l.trace_se:<9.2g} params {l.params}{act}")
    if prof.unconverged:
        print(f"not converged to the target: {', '.join(prof.unconverged)}")


def cmd_solve(a) -> None:
    hawq.check_output(a.out)
    prof = hawq.Profile.load(a.profile)
    latency = hawq.LatencyTable.load(a.latency).ms if a.latency else None
    plan = hawq.solve(prof, hawq.Budget(**_limits(a)), _spec(a, prof, latency))
    plan.save(a.out)
    print(f"{plan.label}: {plan.weight_bytes / 1e6:.4f} MB, {plan.avg_bits:.3f} avg bits, objective Σ Ω "
          f"{plan.omega:.4g}, {plan.status} (gap {plan.gap:.2g}, {plan.solver}) in {plan.solve_seconds:.2f} s -> {a.out}")
    for name, c in plan.constraints.items():
        lim = "not limited" if c["limit"] is None else f"limit {c['limit']:.6g}, slack {c['slack']:.6g}"
        print(f"  {name:<13} {c['value']:.6g}  ({lim})")
    for t in plan.ties:
        print(f"  tied: {', '.join(t)}")
    for l in plan.layers:
        print(f"  {l.name:<24} W{l.w_bits}A{l.a_bits}{'  (pinned)' if l.pinned else ''}")


def _k(s: str) -> int | str:
    if s == "auto":
        return s
    try:
        k = int(s)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, not {s!r}")
    return k


def _ties(a):
    """The graph-derived ties the flags ask for, as solve() takes them."""
    which = {(True, True): "graph", (True, False): "inputs", (False, True): "residual"}
    return which.get((a.tie_shared_inputs, a.tie_residual_adds), ())


def cmd_quantize(a) -> None:
    hawq.check_output(a.out)
    r = _recipe(a.recipe)
    model, (batches, ev) = hawq.load_model(r), hawq.load_data(r)
    plan = hawq.Plan.load(a.plan)
    target = hawq.Target(a.target or r.target, "reduce-range" if a.reduce_range else r.int8)
    q = hawq.quantize(model, plan, batches, target=target)
    acc, loss = hawq.evaluate(q, ev)
    hawq.save_qmodel(a.out, q, hawq.features(batches[0]), hawq.recipe_arch(r), plan.to_dict())
    print(f"{plan.label}: accuracy {acc:.4f} (loss {loss:.4f}) on {hawq.count_samples(ev)} samples -> {a.out}")


def _positive(kind, zero: bool = False):
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            v = None
        if v is None or not (v >= 0 if zero else v > 0) or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a {'non-negative' if zero else 'positive'} {kind.__name__}, "
                                             f"not {s!r}")
        return v
    return parse


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], not {s!r}")
    return v


def _train_batches(a, r: hawq.Recipe, batches) -> hawq.ShuffledBatches:
    seed = r.seed if a.seed is None else a.seed
    if a.train_data == "embedded":
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        return hawq.ShuffledBatches(x, y, min(a.batch_size, len(y)), seed, augment=True)
    try:
        return hawq.train_split_batches(a.train_data, a.batch_size, seed)
    except hawq.HawqError as e:  # keep what went wrong, replace the advice meant for other commands
        raise hawq.HawqError(f"no Fashion-MNIST train split: {str(e).split('; ')[0]}; pass --train-data FOLDER with "
                             "train-*-ubyte[.gz], or --train-data embedded to fine-tune on the calibration images")


def cmd_finetune(a) -> None:
    hawq.check_output(a.out)
    if a.checkpoint:
        hawq.check_output(a.checkpoint)
    r = _recipe(a.recipe)
    if r.family == "hf":
        raise hawq.HawqError(f"hawq finetune trains the image recipes' classifiers; {r.name} is a Hugging Face model: "
                             "fine-tune its fake-quant model (hawq.quantize) with your own training loop")
    plan = hawq.Plan.load(a.plan)
    model, (batches, ev) = hawq.load_model(r), hawq.load_data(r)
    train = _train_batches(a, r, batches)
    q = hawq.quantize(model, plan, batches, target=r.quant_target)
    fp_acc, _ = hawq.evaluate(model, ev)
    acc0, loss0 = hawq.evaluate(q, ev)
    print(f"fp32: accuracy {fp_acc:.4f} on {hawq.count_samples(ev)} samples")
    print(f"{plan.label} before fine-tuning: accuracy {acc0:.4f} (loss {loss0:.4f})", flush=True)
    res = hawq.finetune(q, train, steps=a.steps, lr=a.lr, optimizer=a.optimizer, teacher=model if a.distill else None,
                        distill_weight=a.distill_weight, temperature=a.temperature, checkpoint=a.checkpoint,
                        checkpoint_every=a.checkpoint_every, seed=r.seed if a.seed is None else a.seed,
                        progress=not a.quiet)
    acc1, loss1 = hawq.evaluate(res.model, ev)
    hawq.save_qmodel(a.out, res.model, hawq.features(batches[0]), hawq.recipe_arch(r), plan.to_dict(),
                     {"finetune": res.summary()})
    gap = fp_acc - acc0
    recovered = f", {100 * (acc1 - acc0) / gap:.0f}% of the gap to fp32 recovered" if gap > 0 else ""
    resumed = "" if res.resumed_from is None else f", resumed from step {res.resumed_from}"
    print(f"{plan.label} after {res.steps} steps ({res.seconds:.0f} s{resumed}; training loss {res.loss_start():.4f} "
          f"-> {res.loss_end():.4f}): accuracy {acc1:.4f} (loss {loss1:.4f}){recovered} -> {a.out}")


def cmd_export(a) -> None:
    hawq.check_output(a.out)
    hawq.check_output(Path(a.out).parent / "verify.json")
    f = hawq.load_qmodel(a.qmodel, build=hawq.build_arch)
    q, x = f.model, f.inputs
    rep = hawq.export_onnx(q, hawq.take(x, 0, 1), a.out, target=a.target, verify=not a.no_verify, opset=a.opset, verify_inputs=x,
                           int8=a.int8)  # None: what the model was quantized for
    print(rep.summary())
    d = {k: v for k, v in rep.to_dict().items() if k not in ("layers", "changes")}
    if d["verification"]:
        d["verification"] = {k: v for k, v in d["verification"].items() if k != "kernels"}
    print(json.dumps(d, indent=1))


def cmd_pareto(a) -> None:
    hawq.check_output(a.out, folder=True)
    prof = hawq.Profile.load(a.profile)
    limits = _limits(a)
    chosen = hawq.Plan.load(a.plan) if a.plan else None
    if chosen is not None:
        chosen.check_profile(prof)
    f = hawq.pareto(prof, _spec(a, prof), points=a.points, axis=a.axis,
                    budget=hawq.Budget(**limits) if limits else None, chosen=chosen)
    hawq.write_frontier(f, a.out, Path(a.profile).stem)
    print("\n".join(hawq.frontier_summary(f)))
    print(f"{len(f.points)} non-dominated of {a.points} swept in {f.seconds:.1f} s -> {a.out}/frontier.json, "
          "frontier.csv, frontier.svg")


def cmd_latency(a) -> None:
    hawq.check_output(a.out)
    r = _recipe(a.recipe)
    model, (batches, _) = hawq.load_model(r), hawq.load_data(r)
    bits = a.bits or r.candidates
    table = hawq.measure_latency(model, hawq.features(batches[0]), [(w, a.a_bits) for w in bits], target=a.target, batch=a.batch,
                                 repeats=a.repeats, threads=a.threads, cache=a.out)
    cands = sorted({c for row in table.ms.values() for c in row})
    print(f"{'layer':<24}" + "".join(f"{f'W{w}A{x} ms':>12}" for w, x in cands))
    for name, row in table.ms.items():
        print(f"{name:<24}" + "".join(f"{row[c]:>12.4f}" for c in cands))
    print(f"{table.key['machine']}; {table.key['runtime']}; batch {table.key['batch']}, "
          f"{table.key['threads']} thread(s), median of {table.key['repeats']} -> {a.out}")


def cmd_run(a) -> None:
    r = hawq.load_recipe(a.recipe)
    if a.target and a.target != r.target:
        r = replace(r, name=f"{r.name}-{a.target}", target=a.target)
    r = r.smoke() if a.smoke else r
    out = hawq.check_output(a.out or f"out/{r.name}", folder=True)
    _print_run(hawq.run_recipe(r, out, progress=not a.quiet, guard=not a.no_guard), str(out))


def cmd_demo(a) -> None:
    hawq.check_output(a.out, folder=True)
    _print_run(hawq.run_recipe(hawq.default_recipe(), a.out, progress=not a.quiet, guard=not a.no_guard), a.out)


def _print_run(res: hawq.RunResult, out: str) -> None:
    print()
    print(hawq.table(res.rows))
    s = res.summary()["onnx"]
    print(f"\nONNX: {s['path']} ({s['file_bytes']} bytes), onnxruntime vs PyTorch: top-1 agreement "
          f"{s['top1_agreement']}, max |diff| {s['max_abs_diff']:.3g}")
    for name, plan in res.plans.items():
        if plan.guard:
            print(f"guard {name}: chose {plan.guard['chosen']} of {len(plan.guard['candidates'])} measured candidates")
    print(f"{res.seconds:.0f} s; wrote {out}/: profile.json, plan_*.json, model.onnx, verify.json, report.md, report.html, summary.json"
          ", frontier.json/.csv/.svg")


def _limit_options(s: argparse.ArgumentParser, title: str) -> None:
    g = s.add_argument_group(title)
    w = g.add_mutually_exclusive_group()
    w.add_argument("--megabytes", type=float, help="weight size in MB (1e6 bytes)")
    w.add_argument("--avg-bits", type=float, help="weight size as average weight bits")
    w.add_argument("--ratio", type=float, help="weight size r in [0,1] between all-lowest and all-highest bits")
    b = g.add_mutually_exclusive_group()
    b.add_argument("--gbops", type=float, help="bit operations per sample, Σ MACs·w·a, in 1e9")
    b.add_argument("--bops-ratio", type=float, help="BOPs r in [0,1] between the least and the most")
    g.add_argument("--act-kb", type=float,
                   help="peak activation memory in kB: the largest quantized layer input of one sample (a_bits/8 "
                        "bytes per element); choose activation bits with --a-bits 4,8")


def _candidate_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--bits", type=_bits, help="candidate weight bits (default: the profile's)")
    s.add_argument("--a-bits", type=_bits, default=(8,),
                   help="candidate activation bits, e.g. 4,8 (needs a profile made with --a-bits; default 8)")
    s.add_argument("--pin", type=_pin, action="append",
                   help="NAME=BITS or NAME=W:A, NAME a layer or a regular expression matching whole names; "
                        "repeatable, later ones win (first and last layers are pinned to 8 unless --no-default-pins)")
    s.add_argument("--no-default-pins", action="store_true", help="do not pin the first and last layers to 8 bits")
    s.add_argument("--tie-shared-inputs", action="store_true",
                   help="layers reading the same tensor (the profile's groups) get the same bits")
    s.add_argument("--tie-residual-adds", action="store_true",
                   help="layers whose outputs meet at a residual add get the same bits (one requantizer at the add)")
    s.add_argument("--solver", choices=["auto", "highs", "cbc"], default="auto",
                   help="MIP solver (default auto: CBC up to 300 free layers, HiGHS beyond if highspy is installed)")
    s.add_argument("--target", choices=TARGETS,
                   help="choose each layer among what this runtime runs, so the export changes nothing (tensorrt: "
                        "convs at W8A8, 3-4-bit Linears as INT4 weight-only, no INT2); default: any")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hawq", description="Hessian-aware mixed-precision quantization for PyTorch.")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    p.add_argument("--version", action="version", version=f"hawq {hawq.__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    rec_help = "recipe TOML (default: the embedded ResNet-20 on Fashion-MNIST)"

    s = sub.add_parser("profile", help="per-layer Hessian traces and Ω(bits) -> profile.json")
    s.add_argument("recipe", nargs="?", help=rec_help)
    s.add_argument("--out", default="profile.json")
    s.add_argument("--bits", type=_bits, help="bit widths to compute Ω for, e.g. 2,3,4,8")
    s.add_argument("--rel-tol", type=_positive(float, zero=True),
                   help="target relative standard error of each significant layer (0: run to --max-probes)")
    s.add_argument("--max-probes", type=_at_least(2), help="probe cap (at least 2, to estimate a standard error)")
    s.add_argument("--seed", type=int)
    s.add_argument("--probes-per-batch", type=_k,
                   help="Rademacher probes on each batch per round, or auto: as many (<= 8) as half the free memory holds")
    s.add_argument("--engine", default="auto", choices=("auto", "double_backward", "double_backward_batched", "jvp_vmap"),
                   help="HVP engine; auto times one probe of each and keeps the fastest")
    s.add_argument("--a-bits", type=_bits,
                   help="also profile each layer's input activation and give Ω at these widths, e.g. 4,8 "
                        "(lets `hawq solve --a-bits 4,8` choose activation bits)")
    s.add_argument("--omega-trace", choices=("upper", "mean"),
                   help="the trace Ω uses: upper, the top of its 95%% interval (the default: a trace that is zero "
                        "within its noise does not make a layer free), or mean, the estimate itself")
    s.add_argument("--sensitivity", choices=SENSITIVITIES,
                   help="how Ω is made (default: the recipe's, else perturbed): perturbed (the loss change "
                        "of rounding each layer alone, one forward pass per layer and width), perturbed_cross (that "
                        "plus every cross-layer Gauss-Newton term, optimised by solve) or trace (HAWQ-V2's Hessian "
                        "trace times the rounding error)")
    s.add_argument("--layers", nargs="+", metavar="PATTERN",
                   help="profile only these layers (names or regular expressions matched whole); the rest stay in float")
    s.add_argument("--exclude", nargs="+", metavar="PATTERN", default=(),
                   help="leave these layers (names or regular expressions) out of the profile: they stay in float")
    s.set_defaults(fn=cmd_profile)

    s = sub.add_parser("solve", help="per-layer bits under weight-size and BOPs limits at once (ILP) -> plan.json")
    s.add_argument("profile", help="profile.json from `hawq profile`")
    _limit_options(s, "limits (each optional, at least one, all held at once)")
    _candidate_options(s)
    s.add_argument("--time-limit", type=_positive(float), help="solver time limit in seconds (default: none, prove optimality)")
    s.add_argument("--latency", help="latency table from `hawq latency` (needed for --latency-ms)")
    s.add_argument("--latency-ms", type=float, help="limit on the summed per-layer latency of the table")
    s.add_argument("--out", default="plan.json")
    s.set_defaults(fn=cmd_solve)

    s = sub.add_parser("pareto", help="total Ω against weight size or BOPs over a budget sweep -> frontier.json/.csv/.svg")
    s.add_argument("profile", help="profile.json from `hawq profile`")
    s.add_argument("--axis", choices=["weight", "bops"], default="weight", help="the limit swept (default weight)")
    s.add_argument("--points", type=_at_least(2), default=50, help="limits swept (default 50)")
    _limit_options(s, "other limits held fixed during the sweep (not on the swept axis)")
    _candidate_options(s)
    s.add_argument("--plan", help="plan.json to highlight (e.g. the one you deploy)")
    s.add_argument("--out", default="frontier", help="output folder (default ./frontier)")
    s.set_defaults(fn=cmd_pareto)

    s = sub.add_parser("latency", help="time each layer alone at each candidate in ONNX Runtime -> latency.json")
    s.add_argument("recipe", nargs="?", help=rec_help)
    s.add_argument("--target", choices=["ort-cpu"], default="ort-cpu", help="runtime (default ort-cpu)")
    s.add_argument("--bits", type=_bits, help="weight bits to time (default: the recipe's candidates)")
    s.add_argument("--a-bits", type=_width, default=8, help="activation bits (default 8)")
    s.add_argument("--batch", type=_positive(int), default=1, help="batch size timed (default 1)")
    s.add_argument("--repeats", type=_positive(int), default=30, help="timed runs per entry; the median is kept (default 30)")
    s.add_argument("--threads", type=_positive(int), default=1, help="ONNX Runtime threads (default 1)")
    s.add_argument("--out", default="latency.json", help="the table; reused when machine, runtime, model and "
                   "settings match (default latency.json)")
    s.set_defaults(fn=cmd_latency)

    s = sub.add_parser("quantize", help="fake-quantize and calibrate a model by a plan, and evaluate it")
    s.add_argument("recipe", nargs="?", help=rec_help)
    s.add_argument("--plan", required=True)
    s.add_argument("--out", default="qmodel.pt")
    s.add_argument("--target", choices=TARGETS,
                   help="runtime the model is quantized for, so its accuracy is the runtime's: ort (unsigned "
                        "activations) or tensorrt (symmetric); default: the recipe's [export] target")
    s.add_argument("--reduce-range", action="store_true",
                   help="7-bit weight codes where 8-bit weights meet 8-bit inputs, so that the ort export runs them "
                        "in ONNX Runtime's faster u8×s8 kernels, exactly on every CPU (default: the recipe's "
                        "[export] int8 = \"reduce-range\")")
    s.set_defaults(fn=cmd_quantize)

    s = sub.add_parser("finetune", help="quantize by a plan, then recover accuracy by short quantization-aware "
                       "fine-tuning; writes what `hawq quantize` writes")
    s.add_argument("recipe", nargs="?", help=rec_help)
    s.add_argument("--plan", required=True)
    s.add_argument("--steps", type=_positive(int), default=300, help="optimizer steps (default 300)")
    s.add_argument("--lr", type=_positive(float), default=5e-3, help="peak learning rate, cosine-decayed to 0 (default 5e-3)")
    s.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd (momentum 0.9, default) or adam")
    s.add_argument("--batch-size", type=_positive(int), default=128, help="training batch size (default 128)")
    s.add_argument("--train-data", metavar="FOLDER|embedded",
                   help="training images: a folder with the Fashion-MNIST train split (train-*-ubyte[.gz]); default "
                        "Debian's /usr/share/datasets/fashion-mnist; 'embedded': the recipe's calibration images only "
                        "(shifted and flipped), which needs no dataset but may overfit")
    s.add_argument("--distill", action="store_true", help="distil from the FP32 model (KL on softened logits, "
                   "mixed with cross entropy, as HAWQ-V3)")
    s.add_argument("--distill-weight", type=_fraction, default=0.5, help="weight of the distillation term (default 0.5)")
    s.add_argument("--temperature", type=_positive(float), default=2.0, help="distillation temperature (default 2)")
    s.add_argument("--checkpoint", help="save the run here periodically and resume from it when it exists")
    s.add_argument("--checkpoint-every", type=_positive(int), default=50, help="steps between checkpoints (default 50)")
    s.add_argument("--seed", type=int, help="data order and augmentation seed (default: the recipe's)")
    s.add_argument("--out", default="qmodel.pt")
    s.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar or info logs")
    s.set_defaults(fn=cmd_finetune)

    s = sub.add_parser("export", help="QDQ ONNX from `hawq quantize` output, verified in onnxruntime")
    s.add_argument("qmodel", help="file written by `hawq quantize`")
    s.add_argument("--out", default="model.onnx")
    s.add_argument("--target", choices=TARGETS,
                   help="runtime to legalise for: ort (ONNX Runtime) or tensorrt (symmetric INT8, INT4 weight-only "
                        "MatMul); default: the one the model was quantized for")
    s.add_argument("--opset", type=int, default=21, help="lowest opset (the ort target raises it to 25 for INT2 weights)")
    s.add_argument("--int8", choices=ORT_INT8,
                   help="ort: how 8-bit weights of 8-bit-input layers are stored (default: as quantized, else u8u8): "
                        "u8u8 (UINT8 + 128, exact on "
                        "every CPU), reduce-range (7-bit codes, exact everywhere, faster on VNNI CPUs) or s8-vnni (full "
                        "INT8, exact only on CPUs with VNNI, AMX or ARM64)")
    s.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("run", help="the whole pipeline for a recipe")
    s.add_argument("recipe")
    s.add_argument("--out", help="output folder (default out/<recipe name>)")
    s.add_argument("--no-guard", action="store_true", help="take the ILP's optimum without measuring the alternatives")
    s.add_argument("--smoke", action="store_true",
                   help="a smoke run of the recipe's model through every stage: random weights, 4-8 embedded or "
                        "random images, 2 probes, the exported budget only; needs no checkpoint or data set "
                        "(default out/<recipe name>-smoke)")
    s.add_argument("--target", choices=("ort", "tensorrt"),
                   help="export for this runtime instead of the recipe's [export] target (default out/<recipe name>-<target>)")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("demo", help="the whole pipeline on the embedded ResNet-20 / Fashion-MNIST")
    s.add_argument("--out", default="out/demo")
    s.add_argument("--no-guard", action="store_true", help="take the ILP's optimum without measuring the alternatives")
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
