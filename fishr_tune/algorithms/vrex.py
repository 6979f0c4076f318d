"""V-REx (Krueger et al. 2021) as DomainBed runs it: penalize the variance of the per-domain risks."""

from __future__ import annotations

import torch

from fishr_tune.algorithms.base import register_algorithm
from fishr_tune.algorithms.penalized import AnnealedPenaltyERM
from fishr_tune.space import NON_NEGATIVE, STEPS, HParam, loguniform


def risk_variance(domain_losses: torch.Tensor) -> torch.Tensor:
    """Mean squared deviation of the per-domain mean losses from their mean (the biased variance, as DomainBed)."""
    return (domain_losses - domain_losses.mean()).pow(2).mean()


@register_algorithm("VREx")
class VREx(AnnealedPenaltyERM):
    HPARAMS = {
        "vrex_lambda": HParam(1e1, loguniform(-1, 5), "penalty weight from vrex_penalty_anneal_iters on (1.0 before)",
                              domain=NON_NEGATIVE),
        "vrex_penalty_anneal_iters": HParam(500, loguniform(0, 4, integer=True), "steps with penalty weight 1.0; Adam restarts then",
                                          domain=STEPS),
    }
    LAMBDA = "vrex_lambda"
    ANNEAL_ITERS = "vrex_penalty_anneal_iters"

    def penalty(self, domain_logits, domain_labels, domain_losses):
        return risk_variance(domain_losses)
