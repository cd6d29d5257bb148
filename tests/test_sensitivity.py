"""Profile: Ω(b) = Tr(H)/n · ‖Q_b(W) − W‖², JSON round trip, caching, errors."""
import copy
import json
import logging
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hawq import quant
from hawq.errors import ArtifactError, DataError, NumericalError
from hawq.graph import fold_bn
from hawq.sensitivity import DEFAULT_SENSITIVITY, Profile, profile


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 2 * 2, 3)).eval()


def batches(n=2):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def test_omega_formula_and_monotone_in_bits():
    m = small_cnn()
    p = profile(m, F.cross_entropy, batches(), bits=(2, 3, 4, 8), max_probes=30, rel_tol=0.0, weight_method="minmax",
                sensitivity="trace")
    assert [l.name for l in p.layers] == ["0", "3", "6"]
    folded_first = m[0].weight * (m[1].weight / torch.sqrt(m[1].running_var + m[1].eps)).reshape(-1, 1, 1, 1)
    l0 = p.layers[0]
    assert l0.sq_error[4] == pytest.approx(quant.weight_sq_error(folded_first, 4, "minmax"), rel=1e-5)
    assert p.settings["omega_trace"] == "upper"
    for l in p.layers:
        assert l.probes == 30 and l.trace_se > 0
        for b, om in l.omega.items():  # the default: the upper end of the trace's 95% interval
            assert om == pytest.approx(max(l.trace + 1.96 * l.trace_se, 0) / l.params * l.sq_error[b])
        if l.trace > 0:
            assert l.omega[2] > l.omega[3] > l.omega[4] > l.omega[8] > 0
    mean = profile(m, F.cross_entropy, batches(), bits=(2, 3, 4, 8), max_probes=30, rel_tol=0.0, sensitivity="trace",
                   weight_method="minmax", omega_trace="mean")
    assert "omega_trace" not in mean.settings  # as profiles made before the choice: their caches match
    for l, lm in zip(p.layers, mean.layers):  # the same probes (to float rounding), another Ω
        assert lm.trace == pytest.approx(l.trace, rel=1e-6) and lm.trace_se == pytest.approx(l.trace_se, rel=1e-6)
        for b, om in lm.omega.items():
            assert om == pytest.approx(max(lm.trace, 0) / lm.params * lm.sq_error[b])
    with pytest.raises(ValueError, match="omega_trace"):
        profile(m, F.cross_entropy, batches(), bits=(2, 4), max_probes=2, omega_trace="median")


def test_a_trace_zero_within_its_noise_is_not_free():
    # a mean at or below 0 whose interval reaches above it: "mean" clamps Ω to 0 at every width
    # (the ILP would spend the layer first), "upper" charges what the noise allows
    from hawq.sensitivity import _checked_trace, omega_table

    class Est:  # features.6.conv.3 of the embedded MobileNetV2: -0.24 ± 0.41
        mean, se = -0.24, 0.41

    err = {2: 3.0, 4: 0.5, 8: 0.01}
    assert omega_table(_checked_trace("dw", "", Est()), err, 100) == {2: 0.0, 4: 0.0, 8: 0.0}
    upper = omega_table(_checked_trace("dw", "", Est(), 1.96), err, 100)
    assert upper[2] == pytest.approx((-0.24 + 1.96 * 0.41) / 100 * 3.0) and upper[2] > upper[4] > upper[8] > 0


def test_activation_omega_formula_and_round_trip(tmp_path):
    m = small_cnn()
    data = batches()
    p = profile(m, F.cross_entropy, data, bits=(2, 4, 8), max_probes=20, rel_tol=0.0, sensitivity="trace", a_bits=(4, 8),
                cache=tmp_path / "p.json", engine="jvp_vmap")
    assert p.act_bits == (4, 8) and p.settings["act_probes"] == 20
    assert [l.act_elems for l in p.layers] == [64, 4 * 6 * 6, 8 * 2 * 2]
    # the first layer's input is the data: its error by hand, range the min/max of both batches
    x = torch.cat([b[0] for b in data])
    scale, zp, lo, hi = quant.act_qparams(float(x.min()), float(x.max()), 4)
    by_hand = float(((torch.fake_quantize_per_tensor_affine(x, scale, zp, lo, hi) - x) ** 2).sum()) / len(x)
    assert p.layers[0].act_sq_error[4] == pytest.approx(by_hand, rel=1e-6)
    for l in p.layers:
        assert l.act_trace_se > 0
        for a, om in l.act_omega.items():
            assert om == pytest.approx(max(l.act_trace + 1.96 * l.act_trace_se, 0) / l.act_elems * l.act_sq_error[a])
        assert l.act_sq_error[4] > l.act_sq_error[8] > 0
    assert Profile.load(tmp_path / "p.json") == p
    assert not (tmp_path / "p.json.act.partial").exists()
    bare = profile(m, F.cross_entropy, data, bits=(2, 4, 8), max_probes=20, rel_tol=0.0, engine="jvp_vmap", sensitivity="trace")
    assert bare.act_bits == () and all(l.act_trace is None for l in bare.layers)
    assert [l.trace for l in bare.layers] == [l.trace for l in p.layers]  # weight traces are unaffected
    assert [l.act_elems for l in bare.layers] == [64, 4 * 6 * 6, 8 * 2 * 2]


@pytest.mark.parametrize("sensitivity, engine", [("trace", "double_backward"), ("trace", "jvp_vmap"),
                                                 ("perturbed_cross", "auto")])
def test_frozen_weights_are_profiled_and_stay_frozen(sensitivity, engine):
    """A pretrained model with requires_grad=False (a frozen encoder) profiles; the caller's
    parameters keep their flags."""
    m = small_cnn()
    for w in m.parameters():
        w.requires_grad_(False)
    p = profile(m, F.cross_entropy, batches(), bits=(2, 4, 8), max_probes=8, rel_tol=0.0, sensitivity=sensitivity,
                engine=engine)
    assert len(p.layers) == 3 and all(math.isfinite(l.omega[2]) for l in p.layers)
    assert not any(w.requires_grad for w in m.parameters())


def test_fold_bn_is_silent_on_a_model_without_batchnorm(caplog):
    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with caplog.at_level(logging.WARNING):
        fold_bn(Branchy())
    assert "BatchNorm not folded" not in caplog.text


def test_activation_widths_profile_with_the_default_sensitivity():
    """Activation Ω comes from input traces whatever made the weights' Ω (here the default)."""
    m, data = small_cnn(), batches()
    p = profile(m, F.cross_entropy, data, bits=(2, 4, 8), max_probes=12, rel_tol=0.0, a_bits=(4, 8), engine="jvp_vmap")
    assert p.sensitivity == DEFAULT_SENSITIVITY and p.act_bits == (4, 8)
    for l in p.layers:
        for a, om in l.act_omega.items():
            assert om == pytest.approx(max(l.act_trace + 1.96 * l.act_trace_se, 0) / l.act_elems * l.act_sq_error[a])


def test_perturbed_sensitivity_is_the_loss_change_of_each_layer_rounded(tmp_path):
    m = small_cnn()
    before = copy.deepcopy(m.state_dict())
    p = profile(m, F.cross_entropy, batches(), bits=(2, 4, 8), sensitivity="perturbed", cache=tmp_path / "p.json")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert p.settings["sensitivity"] == "perturbed" and "probes" not in p.settings and not p.unconverged
    data = batches()

    def loss(model):
        with torch.no_grad():
            return sum(float(F.cross_entropy(model(x), y)) * len(y) for x, y in data) / sum(len(y) for _, y in data)

    folded = fold_bn(m).eval()
    base = loss(folded)
    for l in p.layers:
        assert l.probes == 0 and l.trace_se == 0
        for b in (2, 4, 8):
            q = copy.deepcopy(folded)
            w = dict(q.named_modules())[l.name].weight
            with torch.no_grad():
                w.copy_(quant.fake_quant_weight(w, b, "mse")[0])
            assert l.omega[b] == pytest.approx(max(loss(q) - base, 0.0), rel=1e-4, abs=1e-8)
        assert l.trace == pytest.approx(l.params * l.omega[2] / l.sq_error[2])
    assert Profile.load(tmp_path / "p.json") == p
    trace = profile(m, F.cross_entropy, batches(), bits=(2, 4, 8), max_probes=4, sensitivity="trace")
    assert "sensitivity" not in trace.settings  # trace profiles keep the fingerprints they had
    with pytest.raises(ValueError, match="sensitivity"):
        profile(m, F.cross_entropy, batches(), bits=(2, 4), sensitivity="fisher")
    x, y = data[0]
    with pytest.raises(NumericalError):
        profile(m, F.cross_entropy, [(x * float("nan"), y)], bits=(2, 8), sensitivity="perturbed")


def counted_losses(stop_after: int):
    """(calls, loss, stopping): cross-entropy that counts its calls in `calls`, and the same loss
    raising KeyboardInterrupt on the call after `stop_after` of them (an interrupted run)."""
    calls = []

    def loss(out, y):
        calls.append(1)
        return F.cross_entropy(out, y)

    def stopping(out, y):
        if len(calls) == stop_after:
            raise KeyboardInterrupt
        return loss(out, y)

    return calls, loss, stopping


def test_an_interrupted_perturbed_profile_resumes_where_it_stopped(tmp_path):
    m, data = small_cnn(), batches()
    # dies on the first pass of the second layer: base 2 + first layer 3 widths × 2 batches
    calls, loss, stopping = counted_losses(2 + 6)

    fresh = profile(m, loss, data, bits=(2, 4, 8), cache=tmp_path / "fresh.json", sensitivity="perturbed")
    assert len(calls) == 2 + 3 * 3 * 2  # the base loss, then 3 layers × 3 widths, over 2 batches
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        profile(m, stopping, data, bits=(2, 4, 8), cache=tmp_path / "p.json", sensitivity="perturbed")
    assert (tmp_path / "p.json.partial").is_file() and not (tmp_path / "p.json").exists()
    calls.clear()
    again = profile(m, loss, data, bits=(2, 4, 8), cache=tmp_path / "p.json", sensitivity="perturbed")
    assert len(calls) == 2 + 2 * 3 * 2  # the first layer came from the checkpoint
    assert [l.omega for l in again.layers] == [l.omega for l in fresh.layers]
    assert not (tmp_path / "p.json.partial").exists()


def test_an_interrupted_cross_term_pass_resumes_at_its_batch(tmp_path):
    m, data = small_cnn(), batches()
    # dies in the cross pass, on the loss of its second batch: after the perturbed losses, then
    # batch 0's loss and Gauss-Newton tail
    calls, loss, stopping = counted_losses((2 + 3 * 3 * 2) + 2)

    fresh = profile(m, loss, data, bits=(2, 4, 8), cache=tmp_path / "fresh.json", sensitivity="perturbed_cross")
    assert len(calls) == 2 + 3 * 3 * 2 + 2 * 2
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        profile(m, stopping, data, bits=(2, 4, 8), cache=tmp_path / "p.json", sensitivity="perturbed_cross")
    assert (tmp_path / "p.json.cross.partial").is_file() and not (tmp_path / "p.json").exists()
    calls.clear()
    again = profile(m, loss, data, bits=(2, 4, 8), cache=tmp_path / "p.json", sensitivity="perturbed_cross")
    assert len(calls) == 2 + 2  # the base loss (the perturbed ones are checkpointed), then the second batch alone
    assert again.interactions == fresh.interactions and [l.omega for l in again.layers] == [l.omega for l in fresh.layers]
    assert not (tmp_path / "p.json.cross.partial").exists() and not (tmp_path / "p.json.partial").exists()


def test_the_perturbed_profile_does_not_depend_on_the_seed():
    m, data = small_cnn(), batches()
    a, b = (profile(m, F.cross_entropy, data, bits=(2, 4, 8), seed=s, sensitivity="perturbed") for s in (0, 7))
    assert [l.omega for l in a.layers] == [l.omega for l in b.layers]  # bit for bit: no random numbers are drawn
    t0, t1 = (profile(m, F.cross_entropy, data, bits=(2, 4, 8), seed=s, max_probes=4, sensitivity="trace") for s in (0, 7))
    assert [l.omega for l in t0.layers] != [l.omega for l in t1.layers]  # while the trace's probes do


def test_round_trip_and_model_unchanged(tmp_path):
    m = small_cnn()
    before = copy.deepcopy(m.state_dict())
    p = profile(m, F.cross_entropy, batches(1), bits=(2, 8), max_probes=4)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    p.save(tmp_path / "p.json")
    q = Profile.load(tmp_path / "p.json")
    assert q == p
    d = json.loads((tmp_path / "p.json").read_text())
    assert d["format"] == "hawq.profile/1" and set(d["fingerprints"]) == {"weights", "data", "settings"}


def test_cache_hit_and_miss(tmp_path):
    m = small_cnn()
    path = tmp_path / "c.json"
    a = profile(m, F.cross_entropy, batches(1), bits=(2, 8), max_probes=4, cache=path)
    b = profile(m, F.cross_entropy, batches(1), bits=(2, 8), max_probes=4, cache=path)
    assert a == b
    c = profile(m, F.cross_entropy, batches(1), bits=(2, 8), max_probes=4, seed=1, cache=path)
    assert c.fingerprints["settings"] != a.fingerprints["settings"]
    assert Profile.load(path) == c


def test_errors(tmp_path):
    m = small_cnn()
    with pytest.raises(DataError, match="empty"):
        profile(m, F.cross_entropy, [], bits=(2, 8))
    x, y = batches(1)[0]
    with pytest.raises(NumericalError):
        profile(m, F.cross_entropy, [(x * float("nan"), y)], bits=(2, 8))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "hawq.profile/1", "layers": [{"name": "x"}]}))
    with pytest.raises(ArtifactError, match="malformed profile"):
        Profile.load(bad)


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.embed, self.encoder, self.head = nn.Linear(4, 16), nn.TransformerEncoder(layer, 2), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


@pytest.mark.parametrize("engine", ["auto", "double_backward"])
def test_transformer_encoder_profiles(engine):
    """Attention goes through the math kernel during HVPs; dropout is off; traces are finite."""
    torch.manual_seed(0)
    m = TinyTransformer().train()
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(8, 5, 4, generator=g), torch.randint(0, 3, (8,), generator=g))]
    p = profile(m, F.cross_entropy, data, bits=(4, 8), max_probes=4, engine=engine, sensitivity="trace")
    assert m.training  # the caller's model keeps its mode
    names = [l.name for l in p.layers]
    assert names[0] == "embed" and names[-1] == "head" and any("linear1" in n for n in names)
    assert all(torch.isfinite(torch.tensor(l.trace)) for l in p.layers)
    q = profile(m, F.cross_entropy, data, bits=(4, 8), max_probes=4, engine=engine, sensitivity="trace")
    # dropout off: the same traces (auto may time a different engine the second time: same samples, other rounding)
    assert [l.trace for l in p.layers] == pytest.approx([l.trace for l in q.layers], rel=1e-5)


def test_probes_per_batch_auto_records_the_chosen_k():
    p = profile(small_cnn(), F.cross_entropy, batches(), max_probes=8, rel_tol=0.0, probes_per_batch="auto",
                sensitivity="trace")
    assert p.settings["probes_per_batch"] == "auto" and 1 <= p.settings["k"] <= 8
    assert p.settings["probes"] % (2 * p.settings["k"]) == 0  # whole rounds of k probes on each of 2 batches
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        profile(small_cnn(), F.cross_entropy, batches(), probes_per_batch=0)
