"""Quantization-aware fine-tuning: the straight-through estimator, the QuantLayer training path,
exact resume from a checkpoint, and `hawq finetune` end to end."""
import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import hawq
from hawq import cli, quant
from hawq.errors import ConfigError
from hawq.finetune import ShuffledBatches, finetune, trainable_parameters
from hawq.models import resnet20
from hawq.rewrite import QuantLayer, quant_layers, quantize
from hawq.solver import LayerChoice, Plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small models train many times faster on one thread when the cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- the straight-through estimator ------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_ste_forward_is_the_fake_quantizer_bit_for_bit(bits):
    w = torch.randn(6, 3, 3, 3) ** 3
    ref, q, scale = quant.fake_quant_weight(w, bits)
    out = quant.fake_quant_weight_ste(w.requires_grad_(), scale, bits)
    assert torch.equal(out, ref) and torch.equal(out, quant.quantize_weight(w, scale, bits) * scale[:, None, None, None])
    assert out.requires_grad


def test_act_and_bias_ste_forward_are_the_fake_quantizers_bit_for_bit():
    x = torch.randn(4, 3, 5, 5) * 3
    for qp in (quant.act_qparams(-1.0, 4.0, 4), quant.symmetric_act_qparams(-2.0, 3.0, 8)):
        assert torch.equal(quant.fake_quant_act_ste(x, *qp), quant.fake_quant_act(x, *qp))
    b, ws = torch.randn(6), torch.rand(6) * 0.1 + 0.01
    assert torch.equal(quant.fake_quant_bias_ste(b, ws, 0.05), quant.quantize_bias(b, ws, 0.05)[1])


def test_ste_gradient_is_identity_inside_the_range_and_zero_outside():
    # 3 bits: codes in ±3 at scale 1 (first row) and 0.5 (second row)
    w = torch.tensor([[-5.0, -3.4, -0.2, 0.7, 3.4, 3.6, 10.0],
                      [-2.0, -1.6, 0.1, 1.2, 1.7, 1.8, -1.8]], requires_grad=True)
    g = torch.arange(1.0, 15.0).reshape(2, 7)
    (quant.fake_quant_weight_ste(w, torch.tensor([1.0, 0.5]), 3) * g).sum().backward()
    inside = torch.tensor([[0, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0, 0]], dtype=torch.float)
    assert torch.equal(w.grad, g * inside)

    x = torch.tensor([-1.0, -0.2, 0.4, 1.4, 1.8, 5.0], requires_grad=True)  # scale 0.5, codes 0..3
    (quant.fake_quant_act_ste(x, 0.5, 0, 0, 3) * torch.arange(1.0, 7.0)).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 0.0, 0.0]))

    b = torch.tensor([0.3, -7.0, 1e3], requires_grad=True)
    (quant.fake_quant_bias_ste(b, torch.tensor([0.1, 0.2, 0.3]), 0.01) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(b.grad, torch.tensor([1.0, 2.0, 3.0]))


# --- the QuantLayer training path --------------------------------------------------------------

def _calibrated(fp: nn.Module, w_bits: int, a_bits: int, x: torch.Tensor, out_bits: int | None = None) -> QuantLayer:
    layer = QuantLayer(fp, w_bits, a_bits)
    layer.out_bits = out_bits
    layer.start_calibration()
    layer(x)
    layer.finish_calibration()
    return layer


CASES = [(nn.Conv2d(3, 8, 3, padding=1), 3, 8, None, (2, 3, 6, 6)), (nn.Conv2d(3, 8, 3), 4, 8, 8, (2, 3, 6, 6)),
         (nn.Linear(12, 5), 2, 4, None, (7, 12)), (nn.Linear(12, 5, bias=False), 4, 32, None, (7, 12))]


@pytest.mark.parametrize("fp,w_bits,a_bits,out_bits,shape", CASES)
def test_qat_forward_equals_the_plain_forward_before_training(fp, w_bits, a_bits, out_bits, shape):
    x = torch.randn(*shape)
    layer = _calibrated(fp, w_bits, a_bits, x, out_bits)
    plain = layer(x)
    assert not layer.qat
    y = layer.enable_qat()(x)
    assert torch.equal(y, plain)
    y.sum().backward()
    assert layer.fp.weight.grad is not None and layer.fp.weight.grad.abs().sum() > 0
    if layer.fp.bias is not None:
        assert layer.fp.bias.grad is not None and layer.fp.bias.grad.abs().sum() > 0
    assert torch.equal(layer.freeze()(x), plain)  # weights unchanged: same buffers, same output


@pytest.mark.parametrize("fp,w_bits,a_bits,out_bits,shape", CASES)
def test_freeze_refreshes_the_export_buffers(fp, w_bits, a_bits, out_bits, shape):
    x = torch.randn(*shape)
    layer = _calibrated(fp, w_bits, a_bits, x, out_bits).enable_qat()
    scale, dtype = layer.w_scale.clone(), layer.w_int.dtype
    with torch.no_grad():
        layer.fp.weight.add_(torch.randn_like(layer.fp.weight) * layer.fp.weight.abs().mean())
    qat_out = layer(x)
    old = layer.w_int.clone()
    layer.freeze()
    qmax = 2 ** (w_bits - 1) - 1
    view = scale.reshape(-1, *([1] * (layer.w_int.dim() - 1)))
    assert not layer.qat and torch.equal(layer.w_scale, scale) and layer.w_int.dtype == dtype
    assert not torch.equal(layer.w_int, old)
    assert torch.equal(layer.w_int.float(), quant.quantize_weight(layer.fp.weight, scale, w_bits))
    assert int(layer.w_int.abs().max()) <= qmax
    assert torch.equal(layer.w_fq, layer.w_int.float() * view)  # w_fq == dequantized w_int
    assert torch.equal(layer(x), qat_out)  # the frozen layer computes what the training path did
    if layer.fp.bias is not None and not layer.weight_only:
        assert torch.equal(layer.bias_int, quant.quantize_bias(layer.fp.bias, scale, layer.a_scale)[0])


def test_enable_qat_needs_calibration():
    with pytest.raises(RuntimeError, match="calibration"):
        QuantLayer(nn.Linear(3, 2), 4, 8).enable_qat()


# --- finetune on a tiny model ------------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.bn(self.conv(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    """(FP32 model, its 2-bit quantized copy, training batches) on a learnable synthetic task."""
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(256, 1, 8, 8)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.fc.weight.mul_(4)
        y = model.eval()(x).argmax(1)  # labels the float model gets right
    data = ShuffledBatches(x, y, 32, seed=1)
    q = quantize(model, {"conv": (2, 8), "conv2": (2, 4), "fc": (3, 8)}, [x[:128], x[128:]])
    return model, q, data


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_shuffled_batches_depend_only_on_seed_and_step():
    x, y = torch.randn(50, 1, 4, 4), torch.arange(50)
    a, b = ShuffledBatches(x, y, 16, seed=3, augment=True), ShuffledBatches(x, y, 16, seed=3, augment=True)
    for step in (7, 0, 3, 7):
        assert torch.equal(a.batch(step)[0], b.batch(step)[0]) and torch.equal(a.batch(step)[1], b.batch(step)[1])
    epoch = torch.cat([a.batch(s)[1] for s in range(3)])  # 3 full batches per epoch, no repeats
    assert len(set(epoch.tolist())) == 48
    assert not torch.equal(ShuffledBatches(x, y, 16, seed=4).batch(0)[1], a.batch(0)[1])


def test_qat_lowers_the_loss_and_leaves_the_input_alone(tiny):
    model, q, data = tiny
    before_state = _state(q)
    x, y = data.x, data.y
    loss0, acc0 = float(F.cross_entropy(q(x), y)), float((q(x).argmax(1) == y).float().mean())
    res = finetune(q, data, steps=40, lr=0.05)
    loss1, acc1 = float(F.cross_entropy(res.model(x), y)), float((res.model(x).argmax(1) == y).float().mean())
    assert loss1 < 0.5 * loss0 and acc1 > acc0 + 0.5, (loss0, loss1, acc0, acc1)
    assert res.steps == 40 and len(res.losses) == 40 and res.resumed_from is None
    assert res.loss_end() < res.loss_start()
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in before_state.items())  # caller's model unchanged
    for layer in quant_layers(res.model).values():
        assert not layer.qat
        assert torch.equal(layer.w_fq, layer.w_int.float() * layer.w_scale.reshape(-1, *([1] * (layer.w_int.dim() - 1))))
    assert all(p.requires_grad for p in res.model.parameters())
    assert isinstance(res.model.bn, nn.Identity)  # BN stays folded


def test_only_quantized_layer_weights_train(tiny):
    model, q, data = tiny
    q2 = copy.deepcopy(q)
    q2.extra = nn.Linear(2, 2)  # a float parameter outside the QuantLayers
    res = finetune(q2, data, steps=3, lr=0.1)
    assert torch.equal(res.model.extra.weight, q2.extra.weight)
    assert len(trainable_parameters(q2)) == 6  # conv (folded bias), conv2 and fc: weights and biases
    assert not torch.equal(res.model.conv2.fp.weight, q2.conv2.fp.weight)


class _Offset:
    def __init__(self, data, offset: int) -> None:
        self.data, self.offset = data, offset

    def batch(self, step: int):
        return self.data.batch(step + self.offset)


class _Killed(Exception):
    pass


class _DiesAt:
    """Training data that kills the run when it reaches `step`."""

    def __init__(self, data, step: int) -> None:
        self.data, self.step = data, step

    def batch(self, step: int):
        if step == self.step:
            raise _Killed
        return self.data.batch(step)


@pytest.mark.parametrize("optimizer,distill", [("sgd", False), ("adam", True)])
def test_resume_after_a_kill_gives_the_uninterrupted_result(tiny, tmp_path, optimizer, distill):
    model, q, data = tiny
    kw = dict(steps=11, lr=0.02, optimizer=optimizer, teacher=model if distill else None, temperature=2.0, seed=5)
    full = finetune(q, data, **kw)
    ck = tmp_path / "run.ckpt"
    with pytest.raises(_Killed):
        finetune(q, _DiesAt(data, 9), checkpoint=ck, checkpoint_every=4, **kw)
    assert torch.load(ck, weights_only=True)["step"] == 8
    assert not [p for p in tmp_path.iterdir() if p.name != "run.ckpt"]  # no temp file left behind
    resumed = finetune(q, data, checkpoint=ck, checkpoint_every=4, **kw)
    assert resumed.resumed_from == 8 and resumed.steps == 11
    assert resumed.losses == full.losses
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = finetune(q, data, checkpoint=ck, checkpoint_every=4, **kw)  # already finished: nothing left to do
    assert again.resumed_from == 11 and all(torch.equal(a[k], again.model.state_dict()[k]) for k in a)
    with pytest.raises(ConfigError, match="lr"):
        finetune(q, data, checkpoint=ck, checkpoint_every=4, **{**kw, "lr": 0.03})


def test_a_resume_without_the_restored_state_would_differ(tiny, tmp_path):
    """The resume test can fail: restarting from the checkpoint's weights alone (fresh optimizer
    and schedule) does not reproduce the uninterrupted run."""
    model, q, data = tiny
    full = finetune(q, data, steps=10, lr=0.02)
    part = finetune(q, data, steps=10, lr=0.02, checkpoint=tmp_path / "c", checkpoint_every=5)
    ck = torch.load(tmp_path / "c", weights_only=True)
    naive = copy.deepcopy(q)
    naive.load_state_dict(ck["model"])
    rest = finetune(naive, _Offset(data, 5), steps=5, lr=0.02)  # the right batches, a fresh optimizer and schedule
    assert all(torch.equal(v, part.model.state_dict()[k]) for k, v in full.model.state_dict().items())
    assert not all(torch.equal(v, rest.model.state_dict()[k]) for k, v in full.model.state_dict().items())


def test_bad_arguments(tiny):
    model, q, data = tiny
    for kw, word in ((dict(steps=-1), "steps"), (dict(lr=0.0), "lr"), (dict(optimizer="rmsprop"), "optimizer"),
                     (dict(distill_weight=1.5), "distill_weight")):
        with pytest.raises(ConfigError, match=word):
            finetune(q, data, **{"steps": 1, "lr": 0.1, **kw})
    with pytest.raises(ConfigError, match="quantized layers"):
        finetune(model, data, steps=1, lr=0.1)
    with pytest.raises(hawq.HawqError, match="empty"):
        finetune(q, [], steps=1, lr=0.1)
    with pytest.raises(ConfigError, match="iterator"):
        finetune(q, iter([(data.x, data.y)]), steps=1, lr=0.1)


def test_a_list_of_batches_is_cycled(tiny):
    model, q, data = tiny
    batches = [data.batch(0), data.batch(1)]
    a = finetune(q, batches, steps=4, lr=0.05)
    b = finetune(q, batches + batches, steps=4, lr=0.05)
    assert a.losses == b.losses


# --- the command -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The embedded default recipe with fewer images, and a 4-bit plan (first and last layers at 8)."""
    d = tmp_path_factory.mktemp("ft")
    text = (ROOT / "recipes" / "fashion_resnet20.toml").read_text()
    text = text.replace("evaluation = 0", "evaluation = 300").replace("calibration = 1000", "calibration = 200")
    assert "evaluation = 300" in text and "calibration = 200" in text
    (d / "r.toml").write_text(text)
    convs = [(n, m) for n, m in resnet20().named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    layers = tuple(LayerChoice(n, 8 if i in (0, len(convs) - 1) else 4, 8, m.weight.numel(), 0.0, False)
                   for i, (n, m) in enumerate(convs))
    total = sum(l.params * l.w_bits for l in layers)
    Plan(layers, {}, -(-total // 8), total / sum(l.params for l in layers), 0.0, "Uniform", 0.0,
         label="w4").save(d / "plan.json")
    return d


def test_cli_finetune_end_to_end_then_export(small, capsys):
    out, ck = small / "q.pt", small / "q.ckpt"
    args = ["finetune", str(small / "r.toml"), "--plan", str(small / "plan.json"), "--steps", "3", "--batch-size", "16",
            "--lr", "1e-3", "--train-data", "embedded", "--distill", "--out", str(out), "--checkpoint", str(ck), "--quiet"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "fp32: accuracy" in printed and "before fine-tuning" in printed and "after 3 steps" in printed
    f = hawq.load_qmodel(out, build=hawq.build_arch)
    assert f.plan["label"] == "w4" and f.extra["finetune"]["steps"] == 3
    layers = quant_layers(f.model)
    assert len(layers) == 22 and not any(m.qat for m in layers.values())
    assert torch.load(ck, weights_only=True)["step"] == 3
    assert cli.main(args) == 0  # the same command again: the finished checkpoint is reused, same weights
    assert "resumed from step 3" in capsys.readouterr().out
    again = hawq.load_qmodel(out, build=hawq.build_arch).model.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in f.model.state_dict().items())
    assert cli.main(["--quiet", "export", str(out), "--out", str(small / "m.onnx")]) == 0
    assert (small / "m.onnx").stat().st_size > 0


def test_cli_bad_input_is_one_line_and_exit_2(small, tmp_path, capsys):
    base = ["--quiet", "finetune", str(small / "r.toml"), "--steps", "1", "--out", str(tmp_path / "q.pt")]
    assert cli.main(base + ["--plan", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.json" in err and "Traceback" not in err
    assert cli.main(base + ["--plan", str(small / "plan.json"), "--train-data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--train-data embedded" in err
    assert not (tmp_path / "q.pt").exists()
