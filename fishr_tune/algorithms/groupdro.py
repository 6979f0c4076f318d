"""Group DRO (Sagawa et al. 2020, Algorithm 1) as DomainBed runs it: minimize a weighted sum of the domain
losses whose weights follow an exponentiated-gradient ascent on the losses, so the worst domain dominates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from fishr_tune.algorithms.base import Minibatches, register_algorithm, split_logits
from fishr_tune.algorithms.erm import ERM
from fishr_tune.space import POSITIVE, HParam, loguniform


@register_algorithm("GroupDRO")
class GroupDRO(ERM):
    HPARAMS = {"groupdro_eta": HParam(1e-2, loguniform(-3, -1), "step size of the domain weights' exponentiated ascent",
                                       domain=POSITIVE)}
    UPDATE_KEYS = ("loss", "nll")

    q: torch.Tensor

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]
    ) -> None:
        super().__init__(input_shape, num_classes, num_domains, hparams)
        # A buffer, so the weights are checkpointed and moved with the model. DomainBed starts from ones and
        # normalizes after the first ascent step; starting uniform gives the same weights from then on.
        self.register_buffer("q", torch.full((num_domains,), 1.0 / num_domains))

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        if len(minibatches) != len(self.q):
            raise ValueError(f"GroupDRO was built for {len(self.q)} domains, got {len(minibatches)} minibatches")
        logits = split_logits(self.network(torch.cat([x for x, _ in minibatches])), minibatches)
        losses = torch.stack([F.cross_entropy(lg, y) for lg, (_, y) in zip(logits, minibatches)])
        with torch.no_grad():
            self.q.mul_(torch.exp(self.hparams["groupdro_eta"] * losses))
            self.q.div_(self.q.sum())
        loss = torch.dot(losses, self.q)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_count += 1
        return {"loss": loss.item(), "nll": losses.mean().item()}
