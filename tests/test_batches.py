"""Batches and losses as users have them: tensors, tuples, dicts (Hugging Face style), ragged
sequence lengths; losses on the output, on the model, or the model's own."""
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import hawq
from hawq.batches import Objective, concat, evaluate, num_samples, take
from hawq.errors import ConfigError, DataError
from hawq.guard import GuardCache, split_calibration
from hawq.hessian import HVP_ENGINES, rademacher
from hawq.data import load_split
from hawq.models import load_embedded, vit_fashion
from hawq.perturbation import perturbation_terms


class TokenClassifier(nn.Module):
    """A model called as a Hugging Face one is: keyword inputs (ids, mask, labels), an output with
    .logits and, given labels, .loss; one attention layer over a padded, masked sequence."""

    def __init__(self, vocab: int = 40, dim: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.emb(input_ids)
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        heads = [p(h)[:, None] for p in (self.q, self.k, self.v)]  # one head: [N, 1, T, dim]
        att = F.scaled_dot_product_attention(*heads, attn_mask=mask[:, None, None, :])[:, 0]
        h = h + self.out(att)
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        logits = self.head(pooled)
        return {"logits": logits, **({} if labels is None else {"loss": F.cross_entropy(logits, labels)})}


class _Namespace(nn.Module):
    def forward(self, z):
        return SimpleNamespace(logits=z, loss=None)


def ragged(n_batches: int = 3, size: int = 6, seed: int = 0) -> list[dict]:
    """Dict batches whose sequence length differs from batch to batch, each padded within itself."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_batches):
        t = 5 + 2 * i
        lengths = torch.randint(2, t + 1, (size,), generator=g)
        mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
        ids = torch.randint(1, 40, (size, t), generator=g) * mask
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (size,), generator=g)})
    return out


class DictViT(nn.Module):
    """The embedded ViT behind a dict API: pixel_values in, a dict with logits (and loss) out."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.model = vit

    def forward(self, pixel_values, labels=None):
        logits = self.model(pixel_values)
        return {"logits": logits, **({} if labels is None else {"loss": F.cross_entropy(logits, labels)})}


def test_every_loss_form_gives_the_same_loss():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x, y = torch.randn(5, 3, 4), torch.randint(0, 4, (5,))
    want = F.cross_entropy(model(x), y)

    def on_model(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    for loss in (None, nn.CrossEntropyLoss(), F.cross_entropy, on_model, Objective(on_model)):
        assert torch.allclose(Objective(loss).loss(model, (x, y)), want), loss
    as_attrs = nn.Sequential(model, _Namespace())  # an output object with .logits, as transformers' are
    assert torch.allclose(Objective(None).loss(as_attrs, (x, y)), want)
    assert Objective(on_model).on == "model" and Objective(F.cross_entropy).on == "output"
    assert torch.allclose(Objective(lambda a, b: F.cross_entropy(a(b[0]), b[1]), on="model").loss(model, (x, y)), want)
    hf = TokenClassifier()
    batch = ragged(1)[0]
    own = hf(**batch)["loss"]
    assert torch.allclose(Objective(None).loss(hf, batch), own)  # the model's own output.loss
    assert torch.allclose(Objective(F.cross_entropy).loss(hf, batch), own)  # logits of a call without labels


def test_bad_losses_and_batches_get_one_clear_error():
    model = nn.Linear(3, 2)
    with pytest.raises(DataError, match="needs labels"):
        Objective(None).loss(model, torch.randn(4, 3))
    with pytest.raises(ConfigError, match="one scalar tensor"):
        Objective(nn.CrossEntropyLoss(reduction="none")).loss(model, (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ConfigError, match="callable"):
        Objective("cross_entropy")
    with pytest.raises(DataError, match="a tensor, a tuple"):
        Objective(None).loss(model, 3.0)
    with pytest.raises(ConfigError, match="on must be"):
        Objective(F.cross_entropy, on="inputs")


def test_concat_take_and_sizes_follow_the_structure():
    b = ragged(3)
    assert concat(b) is None  # ragged sequence lengths do not stack
    same = [take(b[0], 0, 3), take(b[0], 3, 6)]
    whole = concat(same)
    assert torch.equal(whole["input_ids"], b[0]["input_ids"]) and num_samples(whole) == 6
    assert concat([(torch.zeros(2, 3), torch.zeros(2)), (torch.ones(1, 3), torch.ones(1))])[0].shape == (3, 3)


def test_split_calibration_keeps_ragged_batches_and_every_sample():
    b = ragged(3, size=6)  # 18 samples: 9 calibrate, 9 held back; the cut falls inside batch 1
    calib, held, apart = split_calibration(b, 0.5)
    assert apart and [num_samples(c) for c in calib] == [6, 3] and [num_samples(h) for h in held] == [3, 6]
    assert torch.equal(calib[1]["input_ids"], b[1]["input_ids"][:3]) and torch.equal(held[0]["labels"], b[1]["labels"][3:])
    stack = [(torch.randn(4, 2), torch.arange(4)) for _ in range(3)]
    calib, held, _ = split_calibration(stack, 0.25)  # stackable: cut at sample 9, re-batched by 4
    assert [len(c[1]) for c in calib] == [4, 4, 1] and [len(h[1]) for h in held] == [3]
    with pytest.raises(DataError, match="labelled"):
        split_calibration([torch.randn(4, 2)])


def test_evaluate_counts_tokens_and_skips_ignored_labels():
    class Tokens(nn.Module):
        def forward(self, x):
            return x

    z = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [3.0, 0.0]]])  # [1, 3 tokens, 2 classes]
    y = torch.tensor([[0, 0, -100]])
    acc, loss = evaluate(Tokens(), [(z, y)])
    assert acc == 0.5  # token 0 right, token 1 wrong, token 2 ignored
    assert loss == pytest.approx(float(F.cross_entropy(z[0, :2], y[0, :2])))
    assert math.isnan(evaluate(nn.Identity(), [(torch.randn(3, 2), torch.randn(3, 2))], loss=F.mse_loss)[0])


@pytest.mark.parametrize("engine", sorted(HVP_ENGINES))
def test_hvp_engines_agree_on_dict_and_tuple_batches(engine):
    torch.manual_seed(0)
    vit = vit_fashion().eval()
    wrapped = DictViT(vit).eval()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    names = [n for n, m in vit.named_modules() if isinstance(m, nn.Linear)][:3]
    mods = dict(vit.named_modules())
    params = [mods[n].weight for n in names]
    vs = rademacher(params, 2, 0, 0)
    from hawq.hessian import hvp_context
    with hvp_context():
        want = HVP_ENGINES[engine](vit, nn.CrossEntropyLoss(), (x, y), params)(vs)
        got = HVP_ENGINES[engine](wrapped, None, {"pixel_values": x, "labels": y}, params)(vs)
    for a, b in zip(want, got):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sensitivity", ["perturbed", "trace"])
def test_the_dict_api_gives_the_tensor_apis_profile_and_plan(sensitivity):
    """The embedded ViT (its checkpoint, 16 embedded test images) through both APIs."""
    vit = load_embedded("vit_fashion")
    x, y = load_split("test")
    tuples = [(x[:8], y[:8]), (x[8:16], y[8:16])]
    dicts = [{"pixel_values": x, "labels": y} for x, y in tuples]
    kw = dict(bits=(2, 4, 8), sensitivity=sensitivity, max_probes=8, min_probes=8, engine="jvp_vmap")
    a = hawq.profile(vit, nn.CrossEntropyLoss(), tuples, **kw)
    b = hawq.profile(DictViT(vit), None, dicts, **kw)
    assert [f"model.{n}" for n in a.names] == b.names
    for la, lb in zip(a.layers, b.layers):
        for bits in (2, 4, 8):
            assert la.omega[bits] == pytest.approx(lb.omega[bits], rel=1e-4, abs=1e-9), (la.name, bits)
    budget = hawq.Budget(avg_bits=4)
    pa, pb = hawq.solve(a, budget), hawq.solve(b, budget)
    assert {f"model.{c.name}": c.w_bits for c in pa.layers} == {c.name: c.w_bits for c in pb.layers}


def test_ragged_dict_batches_profile_guard_quantize_and_evaluate():
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    batches = ragged(4, size=6)
    prof = hawq.profile(model, None, batches, bits=(2, 4, 8))
    assert prof.names == ["q", "k", "v", "out", "head"]
    plan = hawq.guarded_solve(prof, hawq.Budget(avg_bits=5), hawq.SolveSpec(pins={}), model=model, data=batches, count=1)
    assert plan.guard["held_out_samples"] == 12 and "model's loss" in plan.guard["metric"]
    q = hawq.quantize(model, plan, batches)
    acc, loss = evaluate(q, batches)
    assert 0 <= acc <= 1 and math.isfinite(loss)
    fp_acc, fp_loss = evaluate(model, batches)
    assert loss == pytest.approx(fp_loss, abs=0.5)


def test_gauss_newton_terms_need_a_loss_on_the_logits():
    model = TokenClassifier().eval()
    batches = ragged(2)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    with pytest.raises(ConfigError, match="function of the model's logits"):
        perturbation_terms(model, None, batches, layers, (4, 8))  # the model's own loss: no logits → loss map
    with pytest.raises(ConfigError, match="function of the model's logits"):
        perturbation_terms(model, lambda model, batch: model(**batch)["loss"], batches, layers, (4, 8))
    ggn = perturbation_terms(model, F.cross_entropy, batches, layers, (4, 8))
    hess = perturbation_terms(model, None, batches, layers, (4, 8), curvature="hessian")
    assert torch.allclose(ggn.linear, hess.linear, rtol=1e-4, atol=1e-8)  # the same gradient either way
    vit = vit_fashion().eval()
    data = [(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))]
    vl = {n: m for n, m in vit.named_modules() if isinstance(m, nn.Linear)}
    default = perturbation_terms(vit, None, data, vl, (4,))  # a plain classifier: the default is cross-entropy
    explicit = perturbation_terms(vit, nn.CrossEntropyLoss(), data, vl, (4,))
    assert torch.allclose(default.curvature, explicit.curvature)


def test_guarded_solve_refuses_a_loss_beside_a_cache_with_another():
    prof_model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    prof = hawq.profile(prof_model, None, data, bits=(4, 8))
    with pytest.raises(ConfigError, match="GuardCache"):
        hawq.guarded_solve(prof, hawq.Budget(avg_bits=6), hawq.SolveSpec(pins={}), model=prof_model, data=data,
                           cache=GuardCache(), loss=F.cross_entropy)


def test_dict_batches_with_integer_ids_export_with_dynamic_batch_and_sequence(tmp_path):
    import onnxruntime as ort
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    batches = ragged(3, size=6)
    plan = {n: (8, 8) for n in ("q", "k", "v", "out", "head")}
    q = hawq.quantize(model, plan, batches)
    rep = hawq.export_onnx(q, batches[0], tmp_path / "m.onnx", verify_inputs=batches)
    v = rep.verification
    assert v.samples == 18 and v.cosine > 0.999, v  # every sequence length verified
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    assert sess.get_inputs()[0].type == "tensor(int64)"
    other = ragged(1, size=1, seed=5)[0]  # batch 1, length 5: neither the example's batch nor its length
    other = {k: torch.cat([v, v[:, :3]], 1) if v.dim() == 2 else v for k, v in other.items()}  # length 8
    got = sess.run(None, {k: other[k].numpy() for k in ("input_ids", "attention_mask")})[0]
    with torch.no_grad():
        want = q(other["input_ids"], other["attention_mask"])["logits"].numpy()
    assert got.shape == want.shape == (1, 3)
    assert float(abs(got - want).max()) < 0.05 * float(abs(want).max()) + 1e-3


class AttentionClassifier(nn.Module):
    """nn.MultiheadAttention reads its out_proj weight itself: a Linear the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))


def test_a_linear_the_forward_never_calls_stays_float_and_the_plan_quantizes():
    torch.manual_seed(0)
    model = AttentionClassifier().eval()
    batches = [(torch.randn(4, 5, 4), torch.randint(0, 3, (4,))) for _ in range(2)]
    prof = hawq.profile(model, F.cross_entropy, batches, bits=(4, 8), sensitivity="trace", max_probes=4, min_probes=4)
    assert prof.names == ["embed", "head"] and prof.skipped == ("attn.out_proj",)
    plan = hawq.uniform_plan(prof, 4, hawq.SolveSpec(pins={}))
    assert plan.float_layers == ("attn.out_proj",)
    q = hawq.quantize(model, plan, batches)  # raised "the plan leaves 1 quantizable layer(s) ... out" before
    assert type(q.head).__name__ == "QuantLayer" and type(q.attn.out_proj) is type(model.attn.out_proj)
    sub = hawq.profile(model, F.cross_entropy, batches, bits=(4, 8), sensitivity="trace", max_probes=4, min_probes=4,
                       exclude="head")
    assert set(sub.skipped) == {"attn.out_proj", "head"}  # a selection keeps the uncalled layer skipped


def test_layer_selection_profiles_only_what_is_asked_and_leaves_the_rest_in_float(tmp_path):
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    model.requires_grad_(False)  # a frozen pretrained encoder
    batches = ragged(2)
    prof = hawq.profile(model, None, batches, bits=(4, 8), layers=r"q|k|v|out|head", exclude="head")
    assert prof.names == ["q", "k", "v", "out"] and prof.skipped == ("head",)
    assert prof.settings["layers"] == [r"q|k|v|out|head"] and prof.settings["exclude"] == ["head"]
    prof.save(tmp_path / "p.json")
    assert hawq.Profile.load(tmp_path / "p.json").skipped == ("head",)
    assert not any(p.requires_grad for p in model.parameters())  # the caller's model is untouched
    plan = hawq.solve(prof, hawq.Budget(avg_bits=6), hawq.SolveSpec(pins={}))
    assert plan.float_layers == ("head",) and hawq.Plan.from_dict(plan.to_dict()).float_layers == ("head",)
    q = hawq.quantize(model, plan, batches)
    assert isinstance(q.head, nn.Linear) and type(q.q).__name__ == "QuantLayer"
    every = hawq.profile(model, None, batches, bits=(4, 8))
    assert "layers" not in every.settings and every.skipped == ()  # no selection: fingerprints as before
    with pytest.raises(hawq.HawqError, match="plan leaves 1 quantizable layer"):
        hawq.quantize(model, replace(plan, float_layers=()), batches)
    with pytest.raises(ConfigError, match=r"layers \['nope'\] are not in the model"):
        hawq.profile(model, None, batches, bits=(4, 8), layers=["nope"])
    with pytest.raises(ConfigError, match="leave no layer"):
        hawq.profile(model, None, batches, bits=(4, 8), exclude=".*")
    with pytest.raises(ConfigError, match="strings"):
        hawq.profile(model, None, batches, bits=(4, 8), layers=[3])


def test_an_embedding_is_quantized_weight_only_when_named(tmp_path):
    from hawq.qmodel import load_qmodel, save_qmodel
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    batches = ragged(3, size=6)
    assert "emb" not in hawq.profile(model, None, batches, bits=(4, 8)).names  # not by default
    prof = hawq.profile(model, None, batches, bits=(2, 4, 8), layers=["emb", "q", "k", "v", "out", "head"],
                        a_bits=(8,), sensitivity="trace", max_probes=4, min_probes=4)
    emb = prof.layers[0]
    assert (emb.name, emb.kind, emb.macs, emb.act_omega) == ("emb", "Embedding", 0, {8: 0.0}) and emb.trace > 0
    assert hawq.solve(prof, hawq.Budget(avg_bits=6)).assignment()["emb"][0] == 8  # the first layer: pinned by default
    plan = hawq.solve(prof, hawq.Budget(avg_bits=3.5), hawq.SolveSpec(pins={"head": 8}))
    assert plan.assignment()["emb"][0] < 8
    q = hawq.quantize(model, plan, batches)
    assert q.emb.weight_only and q.emb.bias_int is None
    with torch.no_grad():  # the table is looked up as quantized: rows of the fake-quant weights
        assert torch.equal(q.emb(batches[0]["input_ids"]), q.emb.w_fq[batches[0]["input_ids"]])
    rep = hawq.export_onnx(q, batches[0], tmp_path / "ort.onnx", verify_inputs=batches)
    row = next(l for l in rep.layers if l.name == "emb")
    assert row.op == "Gather" and row.weight_type == ("INT2" if plan.assignment()["emb"][0] == 2 else "INT4")
    assert rep.verification.cosine > 0.999
    trt = hawq.export_onnx(q, batches[0], tmp_path / "trt.onnx", target="tensorrt", verify_inputs=batches)
    assert next(l for l in trt.layers if l.name == "emb").weight_type == "INT8"
    assert any(c.layer == "emb" and c.what == "weight_bits" for c in trt.changes)
    save_qmodel(tmp_path / "q.pt", q, {k: v for k, v in batches[0].items() if k != "labels"}, {"name": "t"},
                plan.to_dict())
    back = load_qmodel(tmp_path / "q.pt", model=model)
    assert back.inputs.keys() == {"input_ids", "attention_mask"}
    with torch.no_grad():
        assert torch.equal(back.model(**back.inputs)["logits"], q(**back.inputs)["logits"])
