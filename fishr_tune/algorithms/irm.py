"""Invariant Risk Minimization (Arjovsky et al. 2019), IRMv1 as DomainBed runs it: the squared gradient of each
domain's risk with respect to a dummy scale on the logits, estimated without bias from two halves of the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fishr_tune.algorithms.base import register_algorithm
from fishr_tune.algorithms.penalized import AnnealedPenaltyERM
from fishr_tune.space import NON_NEGATIVE, STEPS, HParam, loguniform


def dummy_scale_gradient(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d/ds of mean cross-entropy(s * logits, labels) at s = 1, written out: mean_i <softmax_i - onehot_i, logits_i>.

    The same value (and graph) as DomainBed's autograd.grad through a dummy scale, without the extra
    autograd pass.
    """
    dlogits = torch.softmax(logits, dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return (dlogits * logits).sum(dim=1).mean()


def irm_penalty(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """DomainBed's IRMv1 penalty of one domain: the product of the dummy-scale gradients on [::2] and [1::2]."""
    return dummy_scale_gradient(logits[::2], labels[::2]) * dummy_scale_gradient(logits[1::2], labels[1::2])


@register_algorithm("IRM")
class IRM(AnnealedPenaltyERM):
    HPARAMS = {
        "irm_lambda": HParam(1e2, loguniform(-1, 5), "penalty weight from irm_penalty_anneal_iters on (1.0 before)",
                             domain=NON_NEGATIVE),
        "irm_penalty_anneal_iters": HParam(500, loguniform(0, 4, integer=True), "steps with penalty weight 1.0; Adam restarts then",
                                         domain=STEPS),
    }
    LAMBDA = "irm_lambda"
    ANNEAL_ITERS = "irm_penalty_anneal_iters"

    def penalty(self, domain_logits, domain_labels, domain_losses):
        return torch.stack([irm_penalty(logits, y) for logits, y in zip(domain_logits, domain_labels)]).mean()
