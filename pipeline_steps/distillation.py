"""Knowledge distillation from a dense teacher, as a ``modeling.train`` extra loss."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def distillation_loss(teacher: torch.nn.Module, alpha: float, temperature: float,
                      regression: bool) -> Callable[[torch.nn.Module, dict, object], tuple[torch.Tensor, dict]]:
    """An ``extra_loss`` turning the task loss ``L`` into ``(1 - alpha) * L + alpha * KD``.

    KD is ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` for classification and the mean
    squared difference of the outputs for regression. The teacher runs in eval mode without gradients.
    """
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ValueError(f"distillation: alpha {alpha} must be in [0, 1] and temperature {temperature} > 0")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def extra(model, batch: dict, outputs) -> tuple[torch.Tensor, dict]:  # noqa: ARG001
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               token_type_ids=batch["token_type_ids"]).logits.float()
        s_logits = outputs.logits.float()
        if regression:
            kd = F.mse_loss(s_logits, t_logits)
        else:
            kd = F.kl_div(F.log_softmax(s_logits / temperature, dim=-1), F.log_softmax(t_logits / temperature, dim=-1),
                          reduction="batchmean", log_target=True) * temperature ** 2
        return alpha * (kd - outputs.loss), {"train.distill_loss": float(kd.detach())}

    return extra
