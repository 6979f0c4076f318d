"""Empirical Risk Minimization: pool the domains, minimize the mean cross-entropy."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fishr_tune.algorithms.base import Algorithm, Minibatches, register_algorithm
from fishr_tune.networks import Classifier, Featurizer


@register_algorithm("ERM")
class ERM(Algorithm):
    UPDATE_KEYS: ClassVar[tuple[str, ...]] = ("loss", "nll")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurizer = Featurizer(input_shape, self.hparams)
        self.classifier = Classifier(self.featurizer.n_outputs, num_classes, self.hparams["nonlinear_classifier"])
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.optimizer = self.make_adam(self.network.parameters())

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        all_x = torch.cat([x for x, _ in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        loss = F.cross_entropy(self.network(all_x), all_y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_count += 1
        return {"loss": loss.item(), "nll": loss.item()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)
