"""DANN (Ganin et al. 2016) and CDANN (Li et al. 2018) as DomainBed runs them.

A discriminator MLP learns to tell the training domains apart from the features; the featurizer and classifier
minimize the classification loss minus `lambda` times the discriminator's loss, i.e. the discriminator's
gradient reaches the featurizer with its sign flipped (DomainBed writes the reversal into the loss rather than
as a layer). The two players alternate: `d_steps_per_g_step` discriminator steps, then one generator step.
CDANN adds a learned class embedding to the features before the discriminator and balances its loss by class.

Every update reports the same keys whichever player it steps (so running means stay meaningful): `nll` (the
classifier's cross-entropy), `disc_loss` (the discriminator's, gradient penalty included) and `loss`, the
generator's objective nll - lambda * disc_loss. DomainBed reports only the stepped player's loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fishr_tune.algorithms.base import Algorithm, Minibatches, register_algorithm
from fishr_tune.networks import Classifier, Featurizer
from fishr_tune.space import (
    NON_NEGATIVE,
    POSITIVE,
    SMALL_IMAGES,
    UNIT_OPEN,
    WIDTH,
    HParam,
    at_least,
    choice,
    fixed,
    loguniform,
)

ADVERSARIAL_HPARAMS: dict[str, HParam] = {
    "lambda": HParam(1.0, loguniform(-2, 2), "weight of the (reversed) discriminator loss in the generator's objective",
                     domain=NON_NEGATIVE),
    "weight_decay_d": HParam(0.0, loguniform(-6, -2), "discriminator weight decay", domain=NON_NEGATIVE),
    "d_steps_per_g_step": HParam(1, loguniform(0, 3, base=2, integer=True), "discriminator steps per generator step",
                                 domain=at_least(1, 1000)),
    "grad_penalty": HParam(0.0, loguniform(-2, 1), "weight of the squared gradient of the discriminator loss w.r.t. its input",
                           domain=NON_NEGATIVE),
    "beta1": HParam(0.5, choice(0.0, 0.5), "Adam's beta1 for both players (beta2 is 0.9)", domain=UNIT_OPEN),
    "mlp_width": HParam(256, loguniform(6, 10, base=2, integer=True), "discriminator width", domain=WIDTH),
    "mlp_depth": HParam(3, choice(3, 4, 5), "discriminator depth (linear layers)", domain=at_least(2, 64)),
    "mlp_dropout": HParam(0.0, choice(0.0, 0.1, 0.5), "discriminator dropout", domain=UNIT_OPEN),
}


class DomainDiscriminator(nn.Module):
    """DomainBed's MLP: Linear, then (depth - 2) hidden Linear layers, each followed by dropout and ReLU, then Linear."""

    def __init__(self, n_inputs: int, n_outputs: int, width: int, depth: int, dropout: float):
        super().__init__()
        self.input = nn.Linear(n_inputs, width)
        self.hiddens = nn.ModuleList([nn.Linear(width, width) for _ in range(depth - 2)])
        self.output = nn.Linear(width, n_outputs)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.dropout(self.input(x)))
        for hidden in self.hiddens:
            x = F.relu(self.dropout(hidden(x)))
        return self.output(x)


def is_discriminator_step(update_number: int, d_steps_per_g_step: int) -> bool:
    """DomainBed's schedule, with updates numbered from 1: generator steps fall where n % (1 + d) == d."""
    return update_number % (1 + d_steps_per_g_step) < d_steps_per_g_step


@dataclass
class AdversarialLosses:
    nll: torch.Tensor
    disc_loss: torch.Tensor

    def generator_objective(self, weight: float) -> torch.Tensor:
        return self.nll - weight * self.disc_loss


class AbstractDANN(Algorithm):
    conditional: ClassVar[bool] = False
    class_balance: ClassVar[bool] = False
    UPDATE_KEYS = ("loss", "nll", "disc_loss")

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]
    ) -> None:
        super().__init__(input_shape, num_classes, num_domains, hparams)
        hp = self.hparams
        self.featurizer = Featurizer(input_shape, hp)
        self.classifier = Classifier(self.featurizer.n_outputs, num_classes, hp["nonlinear_classifier"])
        self.discriminator = DomainDiscriminator(
            self.featurizer.n_outputs, num_domains, hp["mlp_width"], hp["mlp_depth"], hp["mlp_dropout"]
        )
        # DomainBed builds (and optimizes) the class embeddings for DANN too, where they are never used.
        self.class_embeddings = nn.Embedding(num_classes, self.featurizer.n_outputs)
        betas = (hp["beta1"], 0.9)
        self.disc_opt = self.make_adam(
            [*self.discriminator.parameters(), *self.class_embeddings.parameters()],
            lr=hp["lr_d"], weight_decay=hp["weight_decay_d"], betas=betas,
        )
        self.gen_opt = self.make_adam(
            [*self.featurizer.parameters(), *self.classifier.parameters()],
            lr=hp["lr_g"], weight_decay=hp["weight_decay_g"], betas=betas,
        )

    @classmethod
    def hparam_space(cls, dataset: str) -> Mapping[str, HParam]:
        space = dict(ADVERSARIAL_HPARAMS)
        if dataset in SMALL_IMAGES:
            space["lr_g"] = HParam(1e-3, loguniform(-4.5, -2.5), "featurizer and classifier learning rate", domain=POSITIVE)
            space["lr_d"] = HParam(1e-3, loguniform(-4.5, -2.5), "discriminator learning rate", domain=POSITIVE)
            space["weight_decay_g"] = HParam(0.0, fixed(), "featurizer and classifier weight decay", domain=NON_NEGATIVE)
        else:
            space["lr_g"] = HParam(5e-5, loguniform(-5, -3.5), "featurizer and classifier learning rate", domain=POSITIVE)
            space["lr_d"] = HParam(5e-5, loguniform(-5, -3.5), "discriminator learning rate", domain=POSITIVE)
            space["weight_decay_g"] = HParam(0.0, loguniform(-6, -2), "featurizer and classifier weight decay", domain=NON_NEGATIVE)
        return space

    def losses(self, minibatches: Minibatches, features: torch.Tensor) -> AdversarialLosses:
        """Classification and discriminator losses for the features of the concatenated minibatches."""
        all_y = torch.cat([y for _, y in minibatches])
        disc_input = features + self.class_embeddings(all_y) if self.conditional else features
        disc_out = self.discriminator(disc_input)
        domains = torch.cat(
            [torch.full((len(x),), i, dtype=torch.long, device=features.device) for i, (x, _) in enumerate(minibatches)]
        )
        if self.class_balance:
            # DomainBed: y_counts = F.one_hot(all_y).sum(dim=0); weights = 1. / (y_counts[all_y] * y_counts.shape[0]).
            # one_hot without num_classes has (largest label + 1) columns, so the divisor is that, not the number of
            # classes present (a class missing below the largest label still counts); bincount has the same length.
            counts = torch.bincount(all_y)
            weights = 1.0 / (counts[all_y] * counts.shape[0]).float()
            disc_loss = (weights * F.cross_entropy(disc_out, domains, reduction="none")).sum()
        else:
            disc_loss = F.cross_entropy(disc_out, domains)
        if self.hparams["grad_penalty"] > 0:
            input_grad = torch.autograd.grad(
                F.cross_entropy(disc_out, domains, reduction="sum"), [disc_input], create_graph=True
            )[0]
            disc_loss = disc_loss + self.hparams["grad_penalty"] * input_grad.pow(2).sum(dim=1).mean()
        nll = F.cross_entropy(self.classifier(features), all_y)
        return AdversarialLosses(nll=nll, disc_loss=disc_loss)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        self.update_count += 1
        features = self.featurizer(torch.cat([x for x, _ in minibatches]))
        weight = self.hparams["lambda"]
        if is_discriminator_step(self.update_count, self.hparams["d_steps_per_g_step"]):
            # the featurizer is not stepped here: cut it off (the input gradient for the penalty still exists)
            losses = self.losses(minibatches, features.detach().requires_grad_())
            self.disc_opt.zero_grad()
            losses.disc_loss.backward()
            self.disc_opt.step()
            objective = losses.generator_objective(weight)
        else:
            losses = self.losses(minibatches, features)
            objective = losses.generator_objective(weight)
            self.disc_opt.zero_grad()
            self.gen_opt.zero_grad()
            objective.backward()
            self.gen_opt.step()
        return {"loss": objective.item(), "nll": losses.nll.item(), "disc_loss": losses.disc_loss.item()}


@register_algorithm("DANN")
class DANN(AbstractDANN):
    """Unconditional: the discriminator sees the features only."""


@register_algorithm("CDANN")
class CDANN(AbstractDANN):
    """Conditional: the discriminator sees features plus a class embedding, and its loss is class-balanced."""

    conditional = True
    class_balance = True
