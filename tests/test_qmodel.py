"""The quantized-model file: a round trip gives the same model, and a file is data, never code."""
import json
import os
import pickle

import pytest
import torch

import hawq
from hawq.errors import ArtifactError
from hawq.models import resnet20
from hawq.qmodel import load_qmodel, save_qmodel
from hawq.rewrite import quant_layers, quantize
from hawq.target import Target

ARCH = {"name": "resnet20", "family": "embedded"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = resnet20().eval()
    x = torch.randn(8, 1, 28, 28)
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    widths = {n: (8 if i in (0, len(names) - 1) else (2, 4)[i % 2], 8) for i, n in enumerate(names)}
    q = quantize(model, widths, [x], quantize_outputs=True, target=Target("ort", "reduce-range"))
    plan = {"label": "test", "layers": [{"name": n, "w_bits": w, "a_bits": a} for n, (w, a) in widths.items()]}
    path = tmp_path_factory.mktemp("qm") / "q.pt"
    save_qmodel(path, q, x, ARCH, plan, {"note": 1})
    return path, q, x, model


def test_round_trip_is_the_same_model(saved):
    path, q, x, model = saved
    f = load_qmodel(path, model=resnet20())
    assert torch.equal(f.model(x), q(x)) and torch.equal(f.inputs, x) and f.extra == {"note": 1}
    assert f.model.hawq_target == Target("ort", "reduce-range")  # the exporter legalises for what it was made for
    for (n, a), b in zip(quant_layers(q).items(), quant_layers(f.model).values()):
        assert (a.w_bits, a.a_bits, a.w_code_bits, a.out_bits, a.a_scale, a.a_zero_point) == \
            (b.w_bits, b.a_bits, b.w_code_bits, b.out_bits, b.a_scale, b.a_zero_point), n
    assert torch.equal(hawq.load_qmodel(path, build=hawq.build_arch).model(x), q(x))


class _Evil:
    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_a_crafted_file_cannot_run_code(tmp_path):
    evil = _Evil()
    evil.target = str(tmp_path / "ran")
    torch.save({"header": "{}", "inputs": torch.zeros(1), "state": {}, "x": evil}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match="never loaded"):
        load_qmodel(tmp_path / "evil.pt", build=hawq.build_arch)
    assert not (tmp_path / "ran").exists()


def _edit(saved, tmp_path, change):
    path = saved[0]
    blob = torch.load(path, weights_only=True)
    header = json.loads(blob["header"])
    change(header, blob)
    blob["header"] = json.dumps(header)
    torch.save(blob, tmp_path / "e.pt")
    return tmp_path / "e.pt"


@pytest.mark.parametrize("change, needle", [
    (lambda h, b: h.update(format="hawq.qmodel/0"), "format"),
    (lambda h, b: h["layers"]["conv1"].update(a_scale="big"), "a_scale"),
    (lambda h, b: h["layers"]["conv1"].update(w_bits=1, a_bits=0), "differ from its plan"),
    (lambda h, b: [h["layers"][n].update(w_bits=1) or l.update(w_bits=1)
                   for l in h["plan"]["layers"] for n in [l["name"]] if n == "conv1"], "weight bits"),
    (lambda h, b: h["layers"].pop("fc") and h["plan"].update(layers=h["plan"]["layers"][:-1]), "exactly"),
    (lambda h, b: b["state"].pop("conv1.w_int"), "do not fit"),
    (lambda h, b: h.update(arch={"name": "lenet", "family": "embedded"}), "unknown architecture"),
    (lambda h, b: h.update(layers=[]), "malformed"),
])
def test_a_malformed_file_is_one_artifact_error(saved, tmp_path, change, needle):
    with pytest.raises(ArtifactError, match=needle):
        load_qmodel(_edit(saved, tmp_path, change), build=hawq.build_arch)


def test_not_a_torch_file(tmp_path):
    (tmp_path / "t.pt").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ArtifactError, match="not a hawq quantized model"):
        load_qmodel(tmp_path / "t.pt", build=hawq.build_arch)
    with pytest.raises(ArtifactError, match="not found"):
        load_qmodel(tmp_path / "missing.pt", build=hawq.build_arch)
