"""ERM plus a per-domain penalty whose weight jumps after a warm-up: the schedule IRM and V-REx share in DomainBed."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from fishr_tune.algorithms.base import Minibatches, split_logits
from fishr_tune.algorithms.erm import ERM


class AnnealedPenaltyERM(ERM):
    """The penalty weighs 1.0 until `hparams[ANNEAL_ITERS]` updates, then `hparams[LAMBDA]`; Adam restarts at the
    jump (DomainBed: "it doesn't like the sharp jump in gradient magnitudes"). Subclasses define `penalty`."""

    LAMBDA: ClassVar[str]
    ANNEAL_ITERS: ClassVar[str]
    UPDATE_KEYS = ("loss", "nll", "penalty")

    def penalty(self, domain_logits: list[torch.Tensor], domain_labels: list[torch.Tensor],
                domain_losses: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        anneal_iters = self.hparams[self.ANNEAL_ITERS]
        penalty_weight = self.hparams[self.LAMBDA] if self.update_count >= anneal_iters else 1.0
        all_logits = self.network(torch.cat([x for x, _ in minibatches]))
        domain_logits = split_logits(all_logits, minibatches)
        domain_labels = [y for _, y in minibatches]
        domain_losses = torch.stack([F.cross_entropy(logits, y) for logits, y in zip(domain_logits, domain_labels)])
        nll = domain_losses.mean()
        penalty = self.penalty(domain_logits, domain_labels, domain_losses)
        loss = nll + penalty_weight * penalty
        if self.update_count == anneal_iters != 0:
            self.optimizer = self.make_adam(self.network.parameters())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_count += 1
        # DomainBed's V-REx reports the last domain's loss as "nll" (a loop variable); the mean over domains is
        # reported for both, the quantity the objective contains.
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}
