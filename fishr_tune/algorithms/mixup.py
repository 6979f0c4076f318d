"""Inter-domain Mixup (Xu et al. 2020; Yan et al. 2020) as DomainBed runs it: the domains are put in a random
cyclic order, each is mixed with the next one with a Beta(alpha, alpha) weight, and the loss is the
cross-entropy against the equally mixed labels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fishr_tune.algorithms.base import Minibatches, register_algorithm
from fishr_tune.algorithms.erm import ERM
from fishr_tune.space import POSITIVE, HParam, loguniform

Batch = tuple[torch.Tensor, torch.Tensor]


def random_domain_pairs(minibatches: Minibatches) -> list[tuple[Batch, Batch]]:
    """(domain perm[i], domain perm[i+1 mod n]) for a random permutation, cut to the smaller batch.

    The permutation comes from torch's global generator (which training seeds and checkpoints).
    """
    order = torch.randperm(len(minibatches)).tolist()
    pairs = []
    for position, i in enumerate(order):
        j = order[(position + 1) % len(order)]
        (xi, yi), (xj, yj) = minibatches[i], minibatches[j]
        n = min(len(xi), len(xj))
        pairs.append(((xi[:n], yi[:n]), (xj[:n], yj[:n])))
    return pairs


def mixed_cross_entropy(logits: torch.Tensor, yi: torch.Tensor, yj: torch.Tensor, lam: float) -> torch.Tensor:
    """Cross-entropy against lam * onehot(yi) + (1 - lam) * onehot(yj), which is linear in the target."""
    return lam * F.cross_entropy(logits, yi) + (1 - lam) * F.cross_entropy(logits, yj)


@register_algorithm("Mixup")
class Mixup(ERM):
    HPARAMS = {"mixup_alpha": HParam(0.2, loguniform(-1, 1), "Beta(alpha, alpha) distribution of the mixing weight",
                                      domain=POSITIVE)}
    UPDATE_KEYS = ("loss", "nll")

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        alpha = self.hparams["mixup_alpha"]
        objective = torch.zeros((), device=minibatches[0][0].device)
        for (xi, yi), (xj, yj) in random_domain_pairs(minibatches):
            # numpy's global generator, as DomainBed (training seeds and checkpoints it too)
            lam = float(np.random.beta(alpha, alpha))
            logits = self.network(lam * xi + (1 - lam) * xj)
            objective = objective + mixed_cross_entropy(logits, yi, yj, lam)
        objective = objective / len(minibatches)
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()
        self.update_count += 1
        return {"loss": objective.item(), "nll": objective.item()}
