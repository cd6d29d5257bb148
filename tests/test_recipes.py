"""The ready-made recipes: each loads, bad ones are refused in one line, and each model goes
through the whole pipeline in smoke mode (random weights, a few embedded or random images)."""
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hawq import cli, ort_session
from hawq.errors import ConfigError, HawqError
from hawq.pipeline import load_data, load_model
from hawq.target import TARGETS
from hawq.recipe import default_recipe, load_recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))
IMAGENET = ("resnet18", "resnet50", "mobilenet_v2", "vit_b_16")


def test_the_eight_recipes_are_there():
    assert {p.stem for p in RECIPES} >= {"fashion_resnet20", "fashion_mobilenetv2", *IMAGENET, "hf_bert_tiny",
                                          "hf_gpt2_tiny"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads(path):
    r = load_recipe(path)
    assert r.name == path.stem
    raw = tomllib.loads(path.read_text())
    assert "budgets" in raw["solve"] and "target" in raw["export"], "every recipe states its budgets and target"
    s = r.smoke()
    s.check_inputs()  # a smoke run needs no file
    assert s.checkpoint == "random" and s.max_probes == 2 and len(s.budgets) == 1 and s.export_budget == 0
    assert s.budgets[0] == r.budgets[r.export_budget] and s.target == r.target and s.model == r.model
    # the cross-layer terms are kept on the small embedded models, dropped for the ImageNet ones
    assert s.sensitivity == (r.sensitivity if r.family == "embedded" or r.sensitivity != "perturbed_cross"
                             else "perturbed")


def test_default_recipe_is_the_file():
    assert load_recipe(ROOT / "recipes" / "fashion_resnet20.toml") == default_recipe()


@pytest.mark.parametrize("name", IMAGENET)
def test_placeholder_paths_say_what_to_set(name, one_line_error, tmp_path):
    one_line_error(["--quiet", "run", str(ROOT / "recipes" / f"{name}.toml"), "--out", str(tmp_path)],
                   "[model] weights", "[data] folder", "--smoke")


def test_missing_fashion_checkpoint(tmp_path):
    text = (ROOT / "recipes" / "fashion_resnet20.toml").read_text()
    (tmp_path / "r.toml").write_text(text.replace('checkpoint = "embedded"', f'checkpoint = "{tmp_path / "no.pt"}"'))
    with pytest.raises(ConfigError, match=r"\[model\] checkpoint"):
        load_model(load_recipe(tmp_path / "r.toml"))


BAD = [
    ('[model]\nname = "resnet1000"\n', "accepted"),
    ('[modle]\nname = "resnet20"\n', "unknown section"),
    ('[model]\nname = "resnet18"\nwieghts = "x.pt"\n', "unknown key"),
    ('[export]\ntarget = "tflite"\n', "export.target"),
    ('[export]\nint8 = "s8"\n', "export.int8"),
    ('[profile]\nengine = "fast"\n', "profile.engine"),
    ('[profile]\nomega_trace = "median"\n', "profile.omega_trace"),
    ('[model]\nname = "resnet20"\nweights = "torchvision"\n', "other family"),
    ('[model]\nname = "resnet18"\ncheckpoint = "embedded"\n', "other family"),
    ('[model]\nname = "resnet18"\n[data]\nfolder = "download"\n', "other family"),
    ('[model]\nname = "resnet18"\n', r"needs \[data\] folder"),
    ('[model]\nname = "resnet18"\nweights = "a.pt"\ncheckpoint = "b.pt"\n', "only one"),
    ('[solve]\nbudgets = []\n', "non-empty"),
    ('[solve]\nbudgets = [{uniform_bits = 5}]\n', "profile.bits"),
    ('[solve]\nbudgets = [{avg_bits = -1}]\n', "positive"),
    ('[solve]\ncandidates = [2, 16]\n', "subset"),
    ('[data]\ncalibration = 0\n', "data.calibration"),
    ('[data]\nbatch_size = "big"\n', "data.batch_size"),
    ('[profile]\nprobes_per_batch = 0\n', "probes_per_batch"),
    ('[export]\nbudget_index = 7\n', "budget_index"),
    ("model = 3\n", "table"),
    ("name = 3\n", "name"),
]


@pytest.mark.parametrize("text,needle", BAD, ids=[n for _, n in BAD])
def test_bad_recipes_are_refused(tmp_path, text, needle):
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(ConfigError, match=needle) as e:
        load_recipe(tmp_path / "r.toml")
    assert "\n" not in str(e.value)


def test_int8_key(tmp_path):
    assert default_recipe().int8 == "u8u8"
    (tmp_path / "r.toml").write_text('[export]\nint8 = "reduce-range"\n')
    r = load_recipe(tmp_path / "r.toml")
    assert r.int8 == "reduce-range" and r.quant_target.reduce_range and not default_recipe().quant_target.reduce_range
    assert not replace(r, target="tensorrt").quant_target.reduce_range  # TensorRT's GPU kernels do not saturate


def test_omega_trace_key(tmp_path):
    assert default_recipe().omega_trace == "upper"
    (tmp_path / "r.toml").write_text('[profile]\nomega_trace = "mean"\n')
    assert load_recipe(tmp_path / "r.toml").omega_trace == "mean"


def test_image_folder_and_user_weights(tmp_path):
    """An ImageNet-style folder read with the evaluation transform, and a user's state_dict."""
    from PIL import Image

    g = np.random.default_rng(0)
    for c in ("n01", "n02"):
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(g.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "val" / c / f"{i}.png")
    r = replace(load_recipe(ROOT / "recipes" / "mobilenet_v2.toml"), data_dir=str(tmp_path / "val"),
                checkpoint="random", n_calibration=4, n_evaluation=0, batch_size=3)
    cal, ev = load_data(r)
    assert [tuple(x.shape) for x, _ in cal] == [(3, 3, 224, 224), (1, 3, 224, 224)] and len(ev) == 2
    assert sorted(torch.cat([y for _, y in cal] + [y for _, y in ev]).tolist()) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(HawqError, match="holds 6 images"):
        load_data(replace(r, n_calibration=6))
    model = load_model(r)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    mine = load_model(replace(r, checkpoint=str(tmp_path / "w.pt")))
    x = cal[0][0]
    with torch.no_grad():
        assert torch.equal(model(x), mine(x))


@pytest.mark.parametrize("target", ["recipe", "other"])
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_smoke_run(path, target, tmp_path, capsys):
    """`hawq run RECIPE --smoke [--target T]`: every stage on the recipe's own model, no
    checkpoint, no data set, quantized and exported for the recipe's target and for the other one,
    and verified.
    On an otherwise idle 2-core CPU the six take about 2 minutes together per target, vit_b_16 70 s
    of them (resnet50 23 s, mobilenet_v2 12, resnet18 9, fashion_mobilenetv2 7, fashion_resnet20 3)."""
    out = tmp_path / "out"
    r = load_recipe(path)
    if target == "other":
        r = replace(r, target=next(t for t in TARGETS if t != r.target))
    assert cli.main(["--quiet", "run", str(path), "--smoke", "--target", r.target, "--out", str(out)]) == 0
    assert "ONNX:" in capsys.readouterr().out
    for f in ("profile.json", "model.onnx", "verify.json", "report.md", "summary.json"):
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in s["rows"]] == ["fp32", "uniform", "mixed"]
    v = json.loads((out / "verify.json").read_text())
    assert v["target"] == r.target and v["verification"]["samples"] >= 4
    # quantize knew the target: its activations (and the accuracy reported) are already the
    # runtime's, so the legaliser re-derives none of them (TensorRT: symmetric)
    assert not [c for c in v["changes"] if "symmetric" in c["reason"]], v["changes"]
    # and the plans were solved among what the target runs: no layer is promoted or made weight-only
    # at export, and the file's weights are the plan's
    assert not [c for c in v["changes"] if c["what"] in ("weight_bits", "weight_only")], v["changes"]
    assert v["packed_weight_bytes"] == v["plan_packed_weight_bytes"]
    if s["onnx"]["top1_agreement"] is not None and s["onnx"]["top1_agreement"] < 0.99:  # None: token logits
        # random weights give logits that tie within one output step on every input (resnet50's four
        # smoke inputs: none with a margin of 2 steps); a flip there must be a sub-step difference, or
        # ONNX Runtime must be as faithful to the exact (float64) arithmetic as PyTorch's float32 is
        # (vit_b_16 on tensorrt: float32 alone moves 21% of the outputs by more than a step)
        ver = v["verification"]
        assert ver["decisive_samples"] == 0 or ver["top1_agreement_decisive"] >= 0.99
        assert ver["max_diff_steps"] <= 1.0 or \
            ver["exact_frac_off_by_more_than_1_step"] <= ver["float32_frac_off_by_more_than_1_step"]
    sess = ort_session(out / "model.onnx")
    if r.family == "hf":  # token ids and a mask, of a batch size and length the file was not traced with
        ids = np.random.default_rng(0).integers(1, 1000, (3, 9))
        y = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        assert y.shape == ((3, 2) if r.model == "bert_tiny" else (3, 9, 1000))
        return
    shape = (1, 28, 28) if r.family == "embedded" else (3, 224, 224)
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["output"]
    y = sess.run(None, {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal((3, *shape), np.float32)})[0]
    assert y.shape == (3, 10 if r.family == "embedded" else 1000)
