"""Hugging Face transformers through the Python API, as a user has them: a model built from a
config (random weights, offline), a DataLoader of dict batches, loss=None (the model's own)."""
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import hawq
from hawq.graph import fold_bn

transformers = pytest.importorskip("transformers")


def token_batches(n_batches: int, size: int, vocab: int, labels: str, seed: int = 0) -> list[dict]:
    """Dict batches of different sequence lengths, padded within each batch (attention mask)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_batches):
        t = 6 + 2 * i
        lengths = torch.randint(3, t + 1, (size,), generator=g)
        mask = (torch.arange(t)[None] < lengths[:, None]).long()
        ids = torch.randint(1, vocab, (size, t), generator=g) * mask
        lab = torch.randint(0, 3, (size,), generator=g) if labels == "class" else ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": lab})
    return out


def bert(attn: str = "sdpa"):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, num_labels=3, max_position_embeddings=64,
                                  attn_implementation=attn)
    return transformers.BertForSequenceClassification(cfg).eval()


def gpt2(attn: str = "sdpa"):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=120, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                  attn_implementation=attn)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_the_readme_path_on_a_bert_classifier(tmp_path):
    import onnxruntime as ort
    model = bert()
    data = [{k: v[i] for k, v in b.items()} for b in token_batches(1, 24, 120, "class") for i in range(24)]
    loader = torch.utils.data.DataLoader(data, batch_size=8)  # the default collate: dicts of stacked tensors
    prof = hawq.profile(model, None, loader)
    assert len(prof.names) == 14 and prof.names[-1] == "classifier"
    plan = hawq.solve(prof, hawq.Budget(avg_bits=4))
    tied = hawq.solve(prof, hawq.Budget(avg_bits=4), hawq.SolveSpec(ties="inputs"))  # Q, K, V read one input
    assert len(tied.ties) == 2 and all(len({tied.assignment()[n] for n in t}) == 1 for t in tied.ties)
    assert all(n.endswith(("query", "key", "value")) for t in tied.ties for n in t)
    q = hawq.quantize(model, plan, loader)
    rep = hawq.export_onnx(q, next(iter(loader)), tmp_path / "model.onnx",
                           verify_inputs=token_batches(3, 4, 120, "class", seed=1))  # other lengths than the example
    assert rep.verification.cosine > 0.999 and rep.verification.samples == 12
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in sess.get_inputs()] == [("input_ids", "tensor(int64)"),
                                                             ("attention_mask", "tensor(int64)")]
    acc, loss = hawq.evaluate(q, loader)
    assert 0 <= acc <= 1 and math.isfinite(loss)


def test_gpt2_conv1d_layers_are_profiled_as_the_linear_layers_they_are(tmp_path):
    model = gpt2()
    folded = fold_bn(model)
    assert isinstance(folded.transformer.h[0].attn.c_attn, nn.Linear)
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"  # the caller's model unchanged
    batches = token_batches(3, 4, 120, "lm")
    with torch.no_grad():
        for b in batches:
            assert torch.allclose(model(**b).logits, folded(**b).logits, atol=1e-5)
    prof = hawq.profile(model, None, batches, bits=(2, 4, 8))
    assert prof.names[:4] == [f"transformer.h.0.{n}" for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert prof.layers[0].weight_shape == (96, 32)  # [out, in], as nn.Linear stores it
    plan = hawq.guarded_solve(prof, hawq.Budget(avg_bits=5), model=model, data=batches, count=1)
    q = hawq.quantize(model, plan, batches)
    acc, loss = hawq.evaluate(q, batches)  # token accuracy, padding (-100) skipped
    assert 0 <= acc <= 1 and math.isfinite(loss)
    rep = hawq.export_onnx(q, batches[0], tmp_path / "gpt2.onnx", verify_inputs=batches)  # logits only, no KV cache
    assert rep.verification.cosine > 0.999 and rep.verification.samples == 4 * (6 + 8 + 10)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hessian_traces_go_through_every_attention_implementation(attn):
    batches = token_batches(2, 4, 120, "class")
    prof = hawq.profile(bert(attn), None, batches, bits=(4, 8), sensitivity="trace", max_probes=4, min_probes=4)
    assert all(math.isfinite(l.trace) for l in prof.layers) and prof.settings["probes"] == 4
    ref = hawq.profile(bert("eager"), None, batches, bits=(4, 8), sensitivity="trace", max_probes=4, min_probes=4,
                       engine=prof.settings["engine"])
    for a, b in zip(prof.layers, ref.layers):  # the same probes on the same model: the same traces
        assert a.trace == pytest.approx(b.trace, rel=1e-3, abs=1e-6)


def test_a_frozen_encoder_with_its_head_left_out():
    model = bert()
    model.requires_grad_(False)
    batches = token_batches(2, 6, 120, "class")
    prof = hawq.profile(model, None, batches, bits=(4, 8), exclude=["classifier", r"bert\.pooler\..*"],
                        sensitivity="trace", max_probes=4, min_probes=4)
    assert prof.skipped == ("bert.pooler.dense", "classifier") and len(prof.names) == 12
    plan = hawq.solve(prof, hawq.Budget(avg_bits=6), hawq.SolveSpec(pins={}))
    q = hawq.quantize(model, plan, batches)
    assert isinstance(q.classifier, nn.Linear)


def test_a_language_models_accuracy_and_default_loss_are_next_token():
    model = gpt2()
    batches = token_batches(2, 4, 120, "lm")
    own = sum(float(model(**b).loss) * 4 for b in batches) / 8
    acc, loss = hawq.evaluate(model, batches)
    assert loss == pytest.approx(own, rel=1e-5)
    with torch.no_grad():
        hits = sum(int(((model(**b).logits[:, :-1].argmax(-1) == b["labels"][:, 1:]) & (b["labels"][:, 1:] != -100)).sum())
                   for b in batches)
    assert acc == hits / sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    logits_only = hawq.Objective(None)  # a model without its own loss: the default loss shifts likewise
    b = batches[0]
    with torch.no_grad():
        want = model(**b).loss
        z = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    assert float(logits_only.tail(z, b)) == pytest.approx(float(want), rel=1e-5)


def test_weight_only_linear_layers_run_as_matmulnbits_in_onnx_runtime(tmp_path):
    model = bert()
    batches = token_batches(2, 6, 120, "class")
    prof = hawq.profile(model, None, batches, bits=(2, 4, 8))
    plan = hawq.solve(prof, hawq.Budget(avg_bits=4), hawq.SolveSpec(a_bits=(32,), pins={}))  # activations in float
    rep = hawq.export_onnx(hawq.quantize(model, plan, batches), batches[0], tmp_path / "wo.onnx", verify_inputs=batches)
    assert {l.plan_w_bits for l in rep.layers} >= {2, 4}
    kept = [l for l in rep.layers if "kept from MatMulNBits" in l.note]  # INT2 with N % 4 != 0 (hawq.legalize)
    assert all(l.weight_type == "INT2" and l.ort_kernel == "DequantizeLinear + Gemm" for l in kept)
    assert {l.ort_kernel for l in rep.layers if l not in kept} == {"MatMulNBits"}, [(l.name, l.ort_kernel) for l in rep.layers]
    assert rep.verification.cosine > 0.999


def test_every_cli_stage_takes_a_hugging_face_recipe(tmp_path, capsys, one_line_error):
    from hawq import cli
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "hf_gpt2_tiny.toml")
    prof, plan, qm, onx = (str(tmp_path / n) for n in ("p.json", "plan.json", "q.pt", "m.onnx"))
    assert cli.main(["--quiet", "profile", recipe, "--out", prof, "--exclude", "lm_head"]) == 0
    assert cli.main(["--quiet", "solve", prof, "--avg-bits", "5", "--out", plan]) == 0
    assert cli.main(["--quiet", "quantize", recipe, "--plan", plan, "--out", qm]) == 0
    assert "on 64 samples" in capsys.readouterr().out  # the recipe's 64 evaluation sequences
    assert cli.main(["--quiet", "export", qm, "--out", onx]) == 0
    v = json.loads((tmp_path / "verify.json").read_text())
    assert v["verification"]["cosine"] > 0.999 and v["verification"]["top1_agreement"] is None  # token logits
    assert cli.main(["--quiet", "latency", recipe, "--out", str(tmp_path / "lat.json"), "--repeats", "2", "--bits", "8"]) == 0
    one_line_error(["finetune", recipe, "--plan", plan, "--out", str(tmp_path / "f.pt")], "Hugging Face", "hawq.quantize")


def test_a_recipe_from_a_saved_folder_and_a_file_of_texts(tmp_path):
    """Real use: weights, config and tokenizer saved by save_pretrained, texts in JSON lines."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from hawq import hf
    from hawq.pipeline import load_data, load_model, run_recipe
    from hawq.recipe import load_recipe
    words = ["[PAD]", "[UNK]"] + [f"w{i}" for i in range(60)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "model"
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)
    saved = hf.build("bert_tiny", seed=3)
    saved.save_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    lengths = [3 + 4 * (i // 8) + i % 3 for i in range(40)]  # batches of 8 texts, longer batch by batch
    lines = [json.dumps({"text": " ".join(f"w{int(i)}" for i in torch.randint(0, 60, (n,), generator=g)),
                         "label": n % 2}) for n in lengths]
    (tmp_path / "texts.jsonl").write_text("\n".join(lines) + "\n")
    r = replace(load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "hf_bert_tiny.toml"),
                checkpoint=str(folder), data_dir=str(tmp_path / "texts.jsonl"), n_calibration=24, n_evaluation=16,
                batch_size=8, budgets=({"uniform_bits": 4},), export_budget=0)
    model = load_model(r)
    with torch.no_grad():
        b = {"input_ids": torch.tensor([[2, 3, 4]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
        assert torch.equal(model(**b).logits, saved(**b).logits)  # the folder's weights
    cal, ev = load_data(r)
    assert [x["input_ids"].shape[0] for x in cal] == [8, 8, 8] and sum(x["labels"].numel() for x in ev) == 16
    assert len({x["input_ids"].shape[1] for x in cal}) > 1  # each batch padded to its own longest text
    res = run_recipe(r, tmp_path / "out", log_fn=lambda *_: None)
    assert res.export.verification.cosine > 0.999 and [row.method for row in res.rows] == ["fp32", "uniform", "mixed"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "w1 w2"}\n' * 50)  # no labels for a classifier
    with pytest.raises(hawq.HawqError, match="line 1"):
        load_data(replace(r, data_dir=str(bad)))
    with pytest.raises(hawq.HawqError, match="tokenizer"):
        load_data(replace(r, checkpoint="random"))
