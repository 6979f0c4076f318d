"""V-REx (Krueger et al. 2021) as DomainBed runs it: penalize the variance of the per-domain risks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fishr_tune.algorithms.base import Minibatches, register_algorithm, split_logits
from fishr_tune.algorithms.erm import ERM
from fishr_tune.hparams import HParam, loguniform


def risk_variance(domain_losses: torch.Tensor) -> torch.Tensor:
    """Mean squared deviation of the per-domain mean losses from their mean (the biased variance, as DomainBed)."""
    return (domain_losses - domain_losses.mean()).pow(2).mean()


@register_algorithm("VREx")
class VREx(ERM):
    HPARAMS = {
        "vrex_lambda": HParam(1e1, loguniform(-1, 5), "penalty weight from vrex_penalty_anneal_iters on (1.0 before)"),
        "vrex_penalty_anneal_iters": HParam(500, loguniform(0, 4, integer=True), "steps with penalty weight 1.0; Adam restarts then"),
    }
    UPDATE_KEYS = ("loss", "nll", "penalty")

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        anneal_iters = self.hparams["vrex_penalty_anneal_iters"]
        penalty_weight = self.hparams["vrex_lambda"] if self.update_count >= anneal_iters else 1.0
        all_logits = self.network(torch.cat([x for x, _ in minibatches]))
        losses = torch.stack(
            [F.cross_entropy(logits, y) for logits, (_, y) in zip(split_logits(all_logits, minibatches), minibatches)]
        )
        mean_loss = losses.mean()
        penalty = risk_variance(losses)
        loss = mean_loss + penalty_weight * penalty
        if self.update_count == anneal_iters != 0:
            # Adam restarts at the jump in the penalty weight, as in DomainBed (after IRM).
            self.optimizer = self.make_adam(self.network.parameters())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_count += 1
        # DomainBed reports the last domain's loss as "nll" (a loop variable); the mean over domains is reported
        # here, the quantity the objective actually contains.
        return {"loss": loss.item(), "nll": mean_loss.item(), "penalty": penalty.item()}
