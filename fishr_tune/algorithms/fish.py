"""Fish (Shi et al. 2021, "Gradient Matching for Domain Generalization"), the first-order version DomainBed runs.

Each update copies the weights, takes one Adam step per training domain on the copy (the copy's Adam state
carried over from update to update as in DomainBed), then moves the weights toward the
copy's by `meta_lr`: theta += meta_lr * (theta_inner - theta). To first order this ascends the inner product
of the domains' gradients, which is what Fish is after. `loss` is the mean of the inner steps' losses
(DomainBed reports the last one).

Domain order: DomainBed's inner loop visits the minibatches in their given (domain) order, and so does this one
by default. `fish_permute_domains: true` draws a new order every update from torch's global generator (seeded and
checkpointed by training), as the Fish paper's Algorithm 1 samples the domains.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fishr_tune.algorithms.base import Algorithm, Minibatches, register_algorithm
from fishr_tune.networks import Classifier, Featurizer
from fishr_tune.space import SWITCH, Domain, HParam, choice


@register_algorithm("Fish")
class Fish(Algorithm):
    HPARAMS = {
        "meta_lr": HParam(0.5, choice(0.05, 0.1, 0.5), "fraction of the way toward the inner-loop weights",
                          domain=Domain(0.0, 1.0, low_open=True)),
        "fish_permute_domains": HParam(
            False, doc="inner steps in a random domain order each update (the Fish paper), not in order (DomainBed)", domain=SWITCH
        ),
    }
    UPDATE_KEYS = ("loss", "nll")

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]
    ) -> None:
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurizer = Featurizer(input_shape, self.hparams)
        self.classifier = Classifier(self.featurizer.n_outputs, num_classes, self.hparams["nonlinear_classifier"])
        self.network = nn.Sequential(self.featurizer, self.classifier)
        # The inner copy is a submodule (checkpointed, moved with .to()); its weights are overwritten every update.
        self.inner_network = copy.deepcopy(self.network)
        self.inner_optimizer = self.make_adam(self.inner_network.parameters())

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        meta_state = self.network.state_dict()
        self.inner_network.load_state_dict(meta_state)
        inner_losses = []
        order: Sequence[int] = range(len(minibatches))
        if self.hparams.get("fish_permute_domains", False):
            order = torch.randperm(len(minibatches)).tolist()  # torch's global generator: seeded, checkpointed
        for index in order:
            x, y = minibatches[index]
            loss = F.cross_entropy(self.inner_network(x), y)
            self.inner_optimizer.zero_grad()
            loss.backward()
            self.inner_optimizer.step()
            inner_losses.append(loss.item())
        meta_lr = self.hparams["meta_lr"]
        inner_state = self.inner_network.state_dict()
        with torch.no_grad():
            for name, value in meta_state.items():
                if value.is_floating_point():
                    value.add_(inner_state[name] - value, alpha=meta_lr)
        self.update_count += 1
        mean_loss = sum(inner_losses) / len(inner_losses)
        return {"loss": mean_loss, "nll": mean_loss}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)
