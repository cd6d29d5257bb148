"""Hugging Face transformers in recipes: the models (built from a config with random weights, or
from a folder saved by `save_pretrained`) and their data (seeded random token ids, or a JSON-lines
file of texts tokenized by the folder's tokenizer).

transformers is imported only here and only when one of these models is built: `pip install
hawq[hf]`. The Python API takes any Hugging Face model without this module (hawq.batches).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, DataError

# name → (transformers class, task, the config of the random-weight model): small enough to smoke-test
MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert_tiny": ("BertForSequenceClassification", "classification",
                  {"model_type": "bert", "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128,
                   "num_labels": 2}),
    "gpt2_tiny": ("GPT2LMHeadModel", "causal-lm",
                  {"model_type": "gpt2", "vocab_size": 1000, "n_positions": 128, "n_embd": 64, "n_layer": 2,
                   "n_head": 2, "bos_token_id": 999, "eos_token_id": 999}),
}
MAX_LENGTH = 128  # tokens kept of each text
SYNTHETIC_LENGTHS = (12, 20, 32)  # sequence lengths of the random batches, in turn: ragged on purpose


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("this recipe's model is a Hugging Face transformer: pip install 'hawq[hf]' "
                          "(or transformers) first") from None
    return transformers


def task(name: str) -> str:
    return MODELS[name][1]


def build(name: str, checkpoint: str = "random", seed: int = 0) -> nn.Module:
    """Model `name` (one of MODELS) in eval mode: "random" weights (seeded) from its config, or
    the weights and config of a folder saved by `save_pretrained`."""
    if name not in MODELS:
        raise ConfigError(f"Hugging Face model {name!r} is not known; accepted: {', '.join(MODELS)}")
    tf = _transformers()
    cls = getattr(tf, MODELS[name][0])
    if checkpoint != "random":
        return cls.from_pretrained(checkpoint).eval()
    cfg = dict(MODELS[name][2])
    config = tf.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(seed)
    return cls(config).eval()


def sizes(name: str, checkpoint: str = "random") -> tuple[int, int]:
    """(vocabulary size, classes) of the model `build(name, checkpoint)` gives, from its config."""
    if checkpoint == "random":
        cfg = MODELS[name][2]
        return int(cfg["vocab_size"]), int(cfg.get("num_labels", 2))
    cfg = _transformers().AutoConfig.from_pretrained(checkpoint)
    return int(cfg.vocab_size), int(getattr(cfg, "num_labels", 2))


def synthetic_data(name: str, checkpoint: str, n_calibration: int, n_evaluation: int, batch_size: int,
                   seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(calibration, evaluation) dict batches of seeded random token ids: each batch of one of
    SYNTHETIC_LENGTHS in turn, sequences of random lengths padded within it (attention mask),
    labels random classes or the ids themselves (padding -100) for a language model; evaluation
    0: as many as calibration. For smoke runs: it exercises every stage, it measures nothing."""
    n_evaluation = n_evaluation or n_calibration
    g = torch.Generator().manual_seed(seed)
    vocab, classes = sizes(name, checkpoint)

    def batches(n: int, offset: int) -> list[dict]:
        out = []
        for i, start in enumerate(range(0, n, batch_size)):
            size, t = min(batch_size, n - start), SYNTHETIC_LENGTHS[(i + offset) % len(SYNTHETIC_LENGTHS)]
            lengths = torch.randint(t // 2, t + 1, (size,), generator=g)
            mask = (torch.arange(t)[None] < lengths[:, None]).long()
            ids = torch.randint(1, vocab, (size, t), generator=g) * mask
            out.append(_with_labels(name, ids, mask, torch.randint(0, classes, (size,), generator=g)))
        return out

    cal = batches(n_calibration, 0)
    return cal, batches(n_evaluation, len(cal))


def jsonl_data(name: str, path: str | Path, tokenizer_dir: str, n_calibration: int, n_evaluation: int,
               batch_size: int) -> tuple[list[dict], list[dict]]:
    """(calibration, evaluation) dict batches from a JSON-lines file, one {"text": ..., "label": int}
    a line ("label" only for a classifier), tokenized by the tokenizer saved in `tokenizer_dir`
    (the checkpoint folder), each batch padded to its longest text (at most MAX_LENGTH tokens)."""
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = row["text"]
            label = int(row["label"]) if task(name) == "classification" else 0
        except (ValueError, KeyError, TypeError) as e:
            need = '{"text": ..., "label": 0}' if task(name) == "classification" else '{"text": ...}'
            raise DataError(f"{path}: line {i} is not {need} ({e.__class__.__name__}: {e})") from None
        rows.append((str(text), label))
    need = n_calibration + (n_evaluation or 1)
    if len(rows) < need:
        raise DataError(f"{path} holds {len(rows)} texts; the recipe needs {need} (calibration + evaluation)")
    tok = _transformers().AutoTokenizer.from_pretrained(tokenizer_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def batches(part: list[tuple[str, int]]) -> list[dict]:
        out = []
        for s in range(0, len(part), batch_size):
            chunk = part[s:s + batch_size]
            enc = tok([t for t, _ in chunk], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            out.append(_with_labels(name, enc["input_ids"], enc["attention_mask"],
                                    torch.tensor([l for _, l in chunk])))
        return out

    ev = rows[n_calibration:n_calibration + n_evaluation] if n_evaluation else rows[n_calibration:]
    return batches(rows[:n_calibration]), batches(ev)


def _with_labels(name: str, ids: torch.Tensor, mask: torch.Tensor, classes: torch.Tensor) -> dict[str, torch.Tensor]:
    labels = classes if task(name) == "classification" else ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
