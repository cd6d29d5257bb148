"""Bad input through the real `hawq` command: one `hawq: error:` line, exit 2, no traceback, and
nothing written — every file already in the output folder byte-identical, no temporaries.

The cases run as subprocesses, two at a time, against one small profile, plan and model made once."""
import copy
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from hawq import cli
from hawq.models import resnet20

RECIPE = """name = "bad"
[model]
name = "resnet20"
checkpoint = "{checkpoint}"
[data]
calibration = 100
evaluation = 100
batch_size = 50
[profile]
bits = [2, 4, 8]
max_probes = 2
"""


def _plan_edit(plan: dict, change) -> dict:
    """A copy of `plan` changed by `change`, its totals made to match again (as a careful editor would)."""
    p = copy.deepcopy(plan)
    change(p)
    total = sum(l["params"] * l["w_bits"] for l in p["layers"])
    p["weight_bytes"] = -(-total // 8)
    p["avg_bits"] = total / sum(l["params"] for l in p["layers"])
    p["constraints"]["weight_bytes"]["value"] = total / 8
    return p


def _make_inputs(d: Path) -> None:
    """The shared inputs: recipes, a profile, a plan, a quantized model and bad variants of each."""
    torch.manual_seed(0)
    torch.save(resnet20().state_dict(), d / "w.pt")
    (d / "r.toml").write_text(RECIPE.format(checkpoint=d / "w.pt"))
    assert cli.main(["--quiet", "profile", str(d / "r.toml"), "--out", str(d / "p.json")]) == 0
    assert cli.main(["--quiet", "solve", str(d / "p.json"), "--avg-bits", "4", "--out", str(d / "plan.json")]) == 0
    assert cli.main(["--quiet", "quantize", str(d / "r.toml"), "--plan", str(d / "plan.json"), "--out",
                     str(d / "q.pt")]) == 0
    nan = resnet20().state_dict()
    nan["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(nan, d / "nan.pt")
    (d / "nan.toml").write_text(RECIPE.format(checkpoint=d / "nan.pt"))
    (d / "missing_ckpt.toml").write_text(RECIPE.format(checkpoint=d / "none.pt"))
    (d / "bad.toml").write_text("name = [unclosed\n")
    (d / "bits1.toml").write_text(RECIPE.format(checkpoint=d / "w.pt").replace("bits = [2, 4, 8]", "bits = [1, 8]"))
    prof = json.loads((d / "p.json").read_text())
    neg = copy.deepcopy(prof)
    neg["layers"][3]["params"] = -neg["layers"][3]["params"]
    (d / "neg_params.json").write_text(json.dumps(neg))
    (d / "corrupt.json").write_text('{"format": "hawq.profile/1", "layers": [')
    plan = json.loads((d / "plan.json").read_text())
    edits = {
        "w1": lambda p: p["layers"][3].update(w_bits=1),
        "a0": lambda p: p["layers"][3].update(a_bits=0),
        "lacks": lambda p: p.update(layers=p["layers"][:3] + p["layers"][4:]),
        "outside": lambda p: p["layers"][3].update(w_bits=3),
    }
    for name, change in edits.items():
        (d / f"plan_{name}.json").write_text(json.dumps(_plan_edit(plan, change)))

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(d / "ran"),))
    torch.save({"model": Evil(), "inputs": torch.zeros(1)}, d / "evil.pt")
    (d / "trunc.pt").write_bytes((d / "q.pt").read_bytes()[:4000])
    blob = torch.load(d / "q.pt", weights_only=True)
    header = json.loads(blob["header"])
    header["layers"]["conv1"]["a_scale"] = "big"
    blob["header"] = json.dumps(header)
    torch.save(blob, d / "q_bad_header.pt")
    header = json.loads(torch.load(d / "q.pt", weights_only=True)["header"])
    name = header["plan"]["layers"][3]["name"]
    header["plan"] = _plan_edit(header["plan"], lambda p: p["layers"][3].update(w_bits=3))
    header["layers"][name]["w_bits"] = 3
    blob["header"] = json.dumps(header)
    torch.save(blob, d / "q_outside.pt")
    (d / "afile").write_text("a regular file\n")


# (id, argv with {d}: the inputs, {o}: this case's output folder, a needle of the message)
CASES = [
    ("profile-bits-0", ["profile", "{d}/r.toml", "--bits", "0,4,8", "--out", "{o}/p.json"], "2..16"),
    ("profile-bits-1", ["profile", "{d}/r.toml", "--bits", "1,8", "--out", "{o}/p.json"], "2..16"),
    ("profile-bits-17", ["profile", "{d}/r.toml", "--bits", "17", "--out", "{o}/p.json"], "2..16"),
    ("profile-bits-words", ["profile", "{d}/r.toml", "--bits", "four", "--out", "{o}/p.json"], "widths"),
    ("profile-a-bits-1", ["profile", "{d}/r.toml", "--a-bits", "1", "--out", "{o}/p.json"], "--a-bits"),
    ("profile-max-probes-1", ["profile", "{d}/r.toml", "--max-probes", "1", "--out", "{o}/p.json"], "at least 2"),
    ("profile-max-probes-neg", ["profile", "{d}/r.toml", "--max-probes", "-3", "--out", "{o}/p.json"], "at least 2"),
    ("profile-max-probes-0", ["profile", "{d}/r.toml", "--max-probes", "0", "--out", "{o}/p.json"], "at least 2"),
    ("profile-rel-tol-neg", ["profile", "{d}/r.toml", "--rel-tol", "-1", "--out", "{o}/p.json"], "non-negative"),
    ("profile-probes-per-batch-0", ["profile", "{d}/r.toml", "--probes-per-batch", "0", "--out", "{o}/p.json"],
     "positive integer or auto"),
    ("profile-out-is-folder", ["profile", "{d}/r.toml", "--out", "{o}"], "is a folder"),
    ("profile-out-under-file", ["profile", "{d}/r.toml", "--out", "{d}/afile/p.json"], "is a file, not a folder"),
    ("profile-no-recipe", ["profile", "{d}/nothing.toml", "--out", "{o}/p.json"], "not found"),
    ("profile-bad-toml", ["profile", "{d}/bad.toml", "--out", "{o}/p.json"], "not valid TOML"),
    ("profile-recipe-bits-1", ["profile", "{d}/bits1.toml", "--out", "{o}/p.json"], "profile.bits"),
    ("profile-missing-checkpoint", ["profile", "{d}/missing_ckpt.toml", "--out", "{o}/p.json"], "none.pt"),
    ("solve-no-profile", ["solve", "{d}/nothing.json", "--avg-bits", "4", "--out", "{o}/plan.json"], "not found"),
    ("solve-no-limit", ["solve", "{d}/p.json", "--out", "{o}/plan.json"], "at least one limit"),
    ("solve-avg-bits-neg", ["solve", "{d}/p.json", "--avg-bits", "-1", "--out", "{o}/plan.json"], "positive"),
    ("solve-megabytes-nan", ["solve", "{d}/p.json", "--megabytes", "nan", "--out", "{o}/plan.json"], "finite"),
    ("solve-ratio-2", ["solve", "{d}/p.json", "--ratio", "2", "--out", "{o}/plan.json"], "[0, 1]"),
    ("solve-two-size-limits", ["solve", "{d}/p.json", "--avg-bits", "4", "--megabytes", "1", "--out", "{o}/plan.json"],
     "not allowed with"),
    ("solve-out-is-folder", ["solve", "{d}/p.json", "--avg-bits", "4", "--out", "{o}"], "is a folder"),
    ("solve-negative-params", ["solve", "{d}/neg_params.json", "--avg-bits", "4", "--out", "{o}/plan.json"], "params"),
    ("solve-corrupt-profile", ["solve", "{d}/corrupt.json", "--avg-bits", "4", "--out", "{o}/plan.json"], "not valid JSON"),
    ("solve-plan-as-profile", ["solve", "{d}/plan.json", "--avg-bits", "4", "--out", "{o}/plan.json"], "format"),
    ("solve-bits-not-profiled", ["solve", "{d}/p.json", "--avg-bits", "4", "--bits", "3,8", "--out", "{o}/plan.json"],
     "3"),
    ("solve-bad-pin", ["solve", "{d}/p.json", "--avg-bits", "4", "--pin", "conv1", "--out", "{o}/plan.json"], "NAME=BITS"),
    ("solve-infeasible", ["solve", "{d}/p.json", "--avg-bits", "1", "--out", "{o}/plan.json"], "avg_bits"),
    ("solve-latency-without-table", ["solve", "{d}/p.json", "--latency-ms", "1", "--out", "{o}/plan.json"],
     "latency table"),
    ("solve-time-limit-0", ["solve", "{d}/p.json", "--avg-bits", "4", "--time-limit", "0", "--out", "{o}/plan.json"],
     "positive"),
    ("quantize-no-plan", ["quantize", "{d}/r.toml", "--plan", "{d}/nothing.json", "--out", "{o}/q.pt"], "not found"),
    ("quantize-plan-w1", ["quantize", "{d}/r.toml", "--plan", "{d}/plan_w1.json", "--out", "{o}/q.pt"], "W1A8"),
    ("quantize-plan-a0", ["quantize", "{d}/r.toml", "--plan", "{d}/plan_a0.json", "--out", "{o}/q.pt"], "A0"),
    ("quantize-plan-lacks-layer", ["quantize", "{d}/r.toml", "--plan", "{d}/plan_lacks.json", "--out", "{o}/q.pt"],
     "leaves 1 quantizable layer"),
    ("quantize-plan-outside-candidates", ["quantize", "{d}/r.toml", "--plan", "{d}/plan_outside.json", "--out",
                                          "{o}/q.pt"], "candidates"),
    ("quantize-out-is-folder", ["quantize", "{d}/r.toml", "--plan", "{d}/plan.json", "--out", "{o}"], "is a folder"),
    ("quantize-nan-weights", ["quantize", "{d}/nan.toml", "--plan", "{d}/plan.json", "--out", "{o}/q.pt"],
     "layer2.0.conv1 has non-finite weights"),
    ("export-no-file", ["export", "{d}/nothing.pt", "--out", "{o}/m.onnx"], "not found"),
    ("export-crafted-pickle", ["export", "{d}/evil.pt", "--out", "{o}/m.onnx"], "never loaded"),
    ("export-truncated", ["export", "{d}/trunc.pt", "--out", "{o}/m.onnx"], "not a hawq quantized model"),
    ("export-json-as-model", ["export", "{d}/plan.json", "--out", "{o}/m.onnx"], "not a hawq quantized model"),
    ("export-bad-header", ["export", "{d}/q_bad_header.pt", "--out", "{o}/m.onnx"], "a_scale"),
    ("export-plan-outside-candidates", ["export", "{d}/q_outside.pt", "--out", "{o}/m.onnx"], "candidates"),
    ("export-out-is-folder", ["export", "{d}/q.pt", "--out", "{o}"], "is a folder"),
    ("export-unknown-int8", ["export", "{d}/q.pt", "--int8", "s4", "--out", "{o}/m.onnx"], "--int8"),
    ("pareto-points-1", ["pareto", "{d}/p.json", "--points", "1", "--out", "{o}/f"], "at least 2"),
    ("pareto-out-is-file", ["pareto", "{d}/p.json", "--out", "{d}/afile"], "is a file"),
    ("latency-a-bits-1", ["latency", "{d}/r.toml", "--a-bits", "1", "--out", "{o}/l.json"], "--a-bits"),
    ("latency-repeats-0", ["latency", "{d}/r.toml", "--repeats", "0", "--out", "{o}/l.json"], "positive"),
    ("finetune-steps-0", ["finetune", "{d}/r.toml", "--plan", "{d}/plan.json", "--steps", "0", "--out", "{o}/q.pt"],
     "positive"),
    ("finetune-no-plan", ["finetune", "{d}/r.toml", "--plan", "{d}/nothing.json", "--out", "{o}/q.pt"], "not found"),
    ("run-missing-checkpoint", ["run", "{d}/missing_ckpt.toml", "--out", "{o}/run"], "none.pt"),
    ("run-no-recipe", ["run", "{d}/nothing.toml", "--out", "{o}/run"], "not found"),
    ("unknown-command", ["quantise", "{d}/r.toml"], "invalid choice"),
    ("unknown-option", ["solve", "{d}/p.json", "--budget", "4"], "unrecognized arguments"),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    _make_inputs(d)
    inputs = _snapshot(d)
    outs = tmp_path_factory.mktemp("outputs")

    def run(case):
        name, argv, _ = case
        o = outs / name
        o.mkdir()
        (o / "kept.json").write_text('{"already": "here"}\n')
        before = _snapshot(o)
        args = [a.format(d=d, o=o) for a in argv]
        p = subprocess.run([sys.executable, "-m", "hawq", *args], capture_output=True, text=True, timeout=300)
        return name, (p, before, _snapshot(o))

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as ex:
        done = dict(ex.map(run, CASES))
    return d, inputs, done


@pytest.mark.parametrize("name, argv, needle", CASES, ids=[c[0] for c in CASES])
def test_one_line_exit_2_nothing_written(results, name, argv, needle):
    _, _, done = results
    p, before, after = done[name]
    err = p.stderr.strip()
    assert p.returncode == 2, (p.returncode, err[-2000:])
    assert "Traceback" not in p.stderr, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith("hawq: error:")]
    assert len(lines) == 1 and err.endswith(lines[0]), err[-2000:]
    assert needle in lines[0], lines[0]
    assert after == before, "the output folder changed"


def test_inputs_untouched_and_the_crafted_file_ran_nothing(results):
    d, inputs, _ = results
    assert _snapshot(d) == inputs  # no temporaries, no partial outputs next to the inputs
    assert not (d / "ran").exists()


def test_cases_cover_every_command():
    assert len(CASES) >= 40
    assert {c[1][0] for c in CASES} >= {"profile", "solve", "quantize", "export", "pareto", "latency", "finetune", "run"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any folder")
def test_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    p = subprocess.run([sys.executable, "-m", "hawq", "solve", "nothing.json", "--avg-bits", "4", "--out",
                        str(ro / "plan.json")], capture_output=True, text=True)
    assert p.returncode == 2 and "no write permission" in p.stderr and list(ro.iterdir()) == []
