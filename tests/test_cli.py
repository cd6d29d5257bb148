"""The product end to end: the `hawq` command on a small recipe over the embedded data."""
import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

import hawq
from hawq import cli
from hawq.models import resnet20
from hawq.recipe import default_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A recipe on the embedded data with a random-weight ResNet-20, few probes, 500 eval images."""
    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    torch.save(resnet20().state_dict(), d / "w.pt")
    text = (ROOT / "recipes" / "fashion_resnet20.toml").read_text()
    text = text.replace('checkpoint = "embedded"', f'checkpoint = "{d / "w.pt"}"')
    text = text.replace("max_probes = 64", "max_probes = 3").replace("evaluation = 0", "evaluation = 500")
    text = text.replace("calibration = 1000", "calibration = 200").replace("batch_size = 200", "batch_size = 100")
    text = text.replace('name = "fashion_resnet20"', 'name = "tiny"')
    (d / "tiny.toml").write_text(text)
    return d


def test_bundled_recipe_is_the_demo():
    assert load_recipe(ROOT / "recipes" / "fashion_resnet20.toml") == default_recipe()


def test_run_writes_every_artifact(tiny, capsys):
    out = tiny / "run"
    assert cli.main(["--quiet", "run", str(tiny / "tiny.toml"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "uniform" in printed and "mixed" in printed
    for f in ("profile.json", "plan_uniform_4.json", "plan_mixed_3.json", "model.onnx", "report.md", "summary.json"):
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in s["rows"]] == ["fp32"] + ["uniform", "mixed"] * 3
    for r in s["rows"]:
        assert set(r) == {"method", "budget_bits", "accuracy", "weight_bytes", "avg_bits"}
    for u, m in zip(s["rows"][1::2], s["rows"][2::2]):
        assert u["budget_bits"] == m["budget_bits"] and m["weight_bytes"] <= u["weight_bytes"]
    assert s["onnx"]["top1_agreement"] >= 0.99 and s["onnx"]["file_bytes"] == (out / "model.onnx").stat().st_size
    onnx.checker.check_model(str(out / "model.onnx"))
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: torch.randn(3, 1, 28, 28).numpy()})[0]
    assert y.shape == (3, 10)


def test_stage_by_stage(tiny, capsys):
    r = str(tiny / "tiny.toml")
    prof, plan, qm, onx = (str(tiny / f) for f in ("p.json", "plan.json", "q.pt", "m.onnx"))
    assert cli.main(["--quiet", "profile", r, "--out", prof, "--max-probes", "2"]) == 0
    assert cli.main(["--quiet", "solve", prof, "--avg-bits", "4", "--bits", "2,4,8", "--out", plan]) == 0
    p = json.loads(Path(plan).read_text())
    assert p["format"] == "hawq.plan/1" and p["avg_bits"] <= 4.0
    assert p["layers"][0]["w_bits"] == 8 and p["layers"][-1]["w_bits"] == 8
    tied = str(tiny / "tied.json")
    assert cli.main(["--quiet", "solve", prof, "--avg-bits", "3", "--tie-residual-adds", "--out", tied]) == 0
    t = json.loads(Path(tied).read_text())
    w = {l["name"]: l["w_bits"] for l in t["layers"]}
    assert ["layer2.0.conv2", "layer2.0.shortcut.0"] in t["ties"] and len(t["ties"]) == 3
    assert all(len({w[n] for n in g}) == 1 for g in t["ties"]) and w["layer1.0.conv2"] == 8  # tied to the pinned stem
    act_prof, act_plan = str(tiny / "pa.json"), str(tiny / "plan_a.json")
    assert cli.main(["--quiet", "profile", r, "--out", act_prof, "--max-probes", "2", "--a-bits", "4,8"]) == 0
    assert cli.main(["--quiet", "solve", act_prof, "--avg-bits", "5", "--bops-ratio", "0.3", "--a-bits", "4,8",
                     "--out", act_plan]) == 0
    assert {l["a_bits"] for l in json.loads(Path(act_plan).read_text())["layers"]} == {4, 8}
    assert cli.main(["--quiet", "quantize", r, "--plan", plan, "--out", qm]) == 0
    assert cli.main(["--quiet", "export", qm, "--out", onx]) == 0
    assert '"top1_agreement"' in capsys.readouterr().out
    assert Path(onx).is_file() and (tiny / "verify.json").is_file()
    assert cli.main(["--quiet", "export", qm, "--out", onx, "--int8", "reduce-range"]) == 0
    saved = json.loads((tiny / "verify.json").read_text())
    assert saved["int8"] == "reduce-range" and "weight_range" in {c["what"] for c in saved["changes"]}
    assert cli.main(["--quiet", "quantize", r, "--plan", plan, "--out", qm, "--reduce-range"]) == 0
    assert cli.main(["--quiet", "export", qm, "--out", onx]) == 0  # default u8u8: the 7-bit codes stay INT8
    saved = json.loads((tiny / "verify.json").read_text())
    assert {c["what"] for c in saved["changes"]} == {"opset"} and "UINT8" not in {l["weight_type"] for l in saved["layers"]}
    assert any("7-bit codes" in l["note"] for l in saved["layers"])


def test_user_errors_are_one_line(tiny, capsys, one_line_error, tmp_path):
    prof = tmp_path / "p.json"
    assert cli.main(["--quiet", "profile", str(tiny / "tiny.toml"), "--out", str(prof), "--max-probes", "2"]) == 0
    capsys.readouterr()
    part = tmp_path / "part.json"
    one_line_error(["profile", str(tiny / "tiny.toml"), "--out", str(part), "--layers", "nope"], "nope", "accepted names")
    assert not part.exists()
    names = hawq.Profile.load(prof).names
    assert cli.main(["--quiet", "profile", str(tiny / "tiny.toml"), "--out", str(part), "--exclude", names[-1]]) == 0
    assert "kept in float: " + names[-1] in capsys.readouterr().out
    assert hawq.Profile.load(part).names == names[:-1]
    assert cli.main(["--quiet", "solve", str(part), "--avg-bits", "6", "--out", str(tmp_path / "pp.json")]) == 0
    assert hawq.Plan.load(tmp_path / "pp.json").float_layers == (names[-1],)
    capsys.readouterr()
    one_line_error(["solve", str(prof), "--avg-bits", "1", "--out", str(tmp_path / "x.json")], "smallest feasible")
    assert not (tmp_path / "x.json").exists()
    # tensorrt runs convs at 8 bits only: the ResNet's uniform-4-bit size is below anything it runs
    one_line_error(["solve", str(prof), "--avg-bits", "4", "--target", "tensorrt", "--out", str(tmp_path / "x.json")],
                   "smallest feasible", "that tensorrt runs")
    assert cli.main(["--quiet", "solve", str(prof), "--avg-bits", "8", "--target", "tensorrt",
                     "--out", str(tmp_path / "t.json")]) == 0
    assert hawq.Plan.load(tmp_path / "t.json").target == "tensorrt"
    one_line_error(["run", str(tmp_path / "missing.toml")], "not found")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    one_line_error(["solve", str(bad), "--avg-bits", "4"], "not valid JSON")
    bad.write_text('{"format": "hawq.plan/1"}')
    one_line_error(["solve", str(bad), "--avg-bits", "4"], "hawq.profile/1")
    rec = tmp_path / "r.toml"
    rec.write_text('[model]\nname = "resnet1000"\n')
    one_line_error(["run", str(rec)], "resnet1000", "accepted")
    one_line_error(["export", str(tmp_path / "nothing.pt")], "hawq quantize")


def test_profile_cache_reused_and_invalidated(tiny, tmp_path, caplog):
    import logging
    caplog.set_level(logging.INFO)
    prof = str(tmp_path / "p.json")
    r = str(tiny / "tiny.toml")
    assert cli.main(["--quiet", "profile", r, "--out", prof, "--max-probes", "2"]) == 0
    first = Path(prof).read_text()
    assert cli.main(["--quiet", "profile", r, "--out", prof, "--max-probes", "2"]) == 0
    assert Path(prof).read_text() == first and "using the cached profile" in caplog.text
    assert cli.main(["--quiet", "profile", r, "--out", prof, "--max-probes", "2", "--seed", "1"]) == 0
    assert "other settings" in caplog.text and Path(prof).read_text() != first


@pytest.mark.slow
def test_demo_on_the_embedded_default(tmp_path):
    assert cli.main(["--quiet", "demo", "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    fp32 = s["rows"][0]["accuracy"]
    assert fp32 > 0.85 and s["onnx"]["top1_agreement"] >= 0.99
    w8 = s["rows"][1]
    assert abs(w8["accuracy"] - fp32) < 0.01
