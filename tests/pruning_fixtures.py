"""Small random BERT models and helpers shared by the pruning tests."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification


def tiny_bert(seed: int = 0, hidden: int = 64, heads: int = 4, layers: int = 2, intermediate: int = 128,
              vocab: int = 120, num_labels: int = 2) -> BertForSequenceClassification:
    """A randomly initialised eager-attention BERT classifier, small enough for millisecond passes."""
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=intermediate, max_position_embeddings=64, num_labels=num_labels)
    cfg._attn_implementation = "eager"
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():  # non-trivial biases so that bias masking is observable
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.05)
    return model


def random_batches(n_batches: int = 2, batch: int = 4, seq: int = 12, vocab: int = 120, seed: int = 1,
                   num_labels: int = 2) -> list[dict[str, torch.Tensor]]:
    """Batches in the ``modeling.make_loader`` format with ragged attention masks."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(1, vocab, (batch, seq), generator=gen)
        lengths = torch.randint(3, seq + 1, (batch,), generator=gen)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, num_labels, (batch,), generator=gen)})
    return out
