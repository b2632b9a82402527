"""Knowledge distillation from a dense teacher, as a ``modeling.train`` extra loss."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F


def distillation_loss(teacher: torch.nn.Module, alpha: float, temperature: float, regression: bool,
                      hidden_weight: float = 0.0) -> Callable[[torch.nn.Module, dict, object], tuple[torch.Tensor, dict]]:
    """An ``extra_loss`` turning the task loss ``L`` into ``(1 - alpha) * L + alpha * KD + hidden_weight * H``.

    KD is ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` for classification and the mean
    squared difference of the outputs for regression; H is the mean over encoder layers of the mean
    squared difference of the hidden states (the student must return them: :func:`hidden_states_on`).
    The teacher runs in eval mode without gradients.
    """
    if not 0.0 <= alpha <= 1.0 or temperature <= 0 or hidden_weight < 0:
        raise ValueError(f"distillation: alpha {alpha} must be in [0, 1], temperature {temperature} > 0, "
                         f"hidden_weight {hidden_weight} >= 0")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def extra(model, batch: dict, outputs) -> tuple[torch.Tensor, dict]:  # noqa: ARG001
        with torch.no_grad():
            t_out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            token_type_ids=batch["token_type_ids"], output_hidden_states=hidden_weight > 0)
        s_logits, t_logits = outputs.logits.float(), t_out.logits.float()
        if regression:
            kd = F.mse_loss(s_logits, t_logits)
        else:
            kd = F.kl_div(F.log_softmax(s_logits / temperature, dim=-1), F.log_softmax(t_logits / temperature, dim=-1),
                          reduction="batchmean", log_target=True) * temperature ** 2
        term = alpha * (kd - outputs.loss)
        logs = {"train.distill_loss": float(kd.detach())}
        if hidden_weight > 0:
            if outputs.hidden_states is None:
                raise RuntimeError("hidden-state distillation needs the student's hidden states (hidden_states_on)")
            mask = batch["attention_mask"].unsqueeze(-1).float()
            per_layer = [((s.float() - t.float()).pow(2) * mask).sum() / (mask.sum() * s.shape[-1])
                         for s, t in zip(outputs.hidden_states[1:], t_out.hidden_states[1:])]
            hidden = torch.stack(per_layer).mean()
            term = term + hidden_weight * hidden
            logs["train.hidden_distill_loss"] = float(hidden.detach())
        return term, logs

    return extra


@contextmanager
def hidden_states_on(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Make ``model`` return its hidden states inside the block (for hidden-state distillation)."""
    old = model.config.output_hidden_states
    model.config.output_hidden_states = bool(enabled) or old
    try:
        yield
    finally:
        model.config.output_hidden_states = old
