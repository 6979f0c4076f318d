"""Fishr (Rame, Dancette & Cord, ICML 2022) as DomainBed's official implementation runs it: match across domains
the variances of the classifier head's per-sample gradients, smoothed by a per-domain moving average.

Differences from DomainBed, all deliberate: the variances come from a gradient-variance engine
(``fishr_tune.gradvar``; the closed form by default, BackPACK as the reference), before the anneal step the
penalty is computed and the moving average updated without building a graph (its weight is 0, so nothing is
backpropagated through it in DomainBed either), and the moving averages are checkpointed (DomainBed loses them
on resume).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fishr_tune.algorithms.base import Algorithm, Minibatches, register_algorithm
from fishr_tune.errors import ConfigError
from fishr_tune.gradvar import (
    LossKind,
    engine_names,
    fishr_penalty,
    get_engine,
    head_parameter_count,
    per_sample_losses,
)
from fishr_tune.networks import Classifier, Featurizer
from fishr_tune.space import NON_NEGATIVE, STEPS, SWITCH, UNIT_OPEN, HParam, fixed, loguniform, one_of, uniform

# A full covariance holds one p x p block per head parameter tensor and domain (up to D x P^2 numbers): beyond
# this many head parameters it is neither cheap nor what the paper meant.
MAX_FULL_COVARIANCE_PARAMS = 4096


class DomainMovingAverage:
    """DomainBed's per-domain EMA with the 1/(1 - ema) correction, as one D x P (or D x sum p_t^2) state.

    m_t = ema * m_{t-1} + (1 - ema) * v_t with m_0 = 0, stored detached; the value used is m_t / (1 - ema),
    so the gradient reaches v_t with coefficient 1 whatever ema is, and the first call returns v_1.
    """

    def __init__(self, ema: float):
        if not 0.0 <= ema < 1.0:
            raise ConfigError(f"hyperparameter 'ema' must be in [0, 1), got {ema!r}")
        self.ema = ema
        self.state: torch.Tensor | None = None

    def update(self, value: torch.Tensor) -> torch.Tensor:
        previous = torch.zeros_like(value) if self.state is None else self.state.to(value)
        if previous.shape != value.shape:
            raise ValueError(f"moving average holds shape {tuple(previous.shape)}, got {tuple(value.shape)}")
        smoothed = self.ema * previous + (1.0 - self.ema) * value
        self.state = smoothed.detach()
        return smoothed / (1.0 - self.ema)


@register_algorithm("Fishr")
class Fishr(Algorithm):
    HPARAMS = {
        "lambda": HParam(1000.0, loguniform(1, 4), "penalty weight from penalty_anneal_iters on", domain=NON_NEGATIVE),
        "ema": HParam(0.95, uniform(0.90, 0.99), "moving-average coefficient of the per-domain gradient variances",
                      domain=UNIT_OPEN),
        "penalty_anneal_iters": HParam(1500, uniform(0, 5000, integer=True), "steps with penalty weight 0; Adam restarts then",
                                      domain=STEPS),
        "gradvar_engine": HParam(
            "closed_form", fixed(), "per-sample gradient variances: closed_form, torch_func or backpack", domain=one_of(*engine_names())
        ),
        "centered": HParam(True, fixed(), "centred variance (paper's default) or uncentred second moment (Table 6)",
                           domain=SWITCH),
        "full_covariance": HParam(
            False, fixed(), "match each head parameter tensor's full gradient covariance (Table 6, the official "
            "script's fishr_offdiagonal; small heads only)", domain=SWITCH),
    }
    UPDATE_KEYS = ("loss", "nll", "penalty")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.engine = get_engine(self.hparams["gradvar_engine"])
        nonlinear = bool(self.hparams["nonlinear_classifier"])
        if nonlinear and not self.engine.any_head:
            raise ConfigError(
                f"hyperparameters: gradvar_engine {self.engine.name!r} needs a linear head, but nonlinear_classifier "
                "is true; use gradvar_engine 'torch_func' or 'backpack'"
            )
        self.loss_kind: LossKind = "binary_cross_entropy" if num_classes == 1 else "cross_entropy"
        self.featurizer = Featurizer(input_shape, self.hparams)
        classifier = Classifier(self.featurizer.n_outputs, num_classes, nonlinear)
        n_params = head_parameter_count(classifier)
        if self.hparams["full_covariance"] and n_params > MAX_FULL_COVARIANCE_PARAMS:
            raise ConfigError(
                f"hyperparameters: full_covariance needs a head of at most {MAX_FULL_COVARIANCE_PARAMS} parameters "
                f"(one p x p covariance block per parameter tensor and domain); this head has {n_params}"
            )
        self.classifier = self.engine.prepare(classifier)
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.moving_average = DomainMovingAverage(float(self.hparams["ema"]))
        self.optimizer = self.make_adam(self.network.parameters())

    @property
    def penalty_active(self) -> bool:
        return self.update_count >= self.hparams["penalty_anneal_iters"]

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        if len(minibatches) != self.num_domains:
            raise ValueError(f"Fishr was built for {self.num_domains} domains, got {len(minibatches)} minibatches")
        all_x = torch.cat([x for x, _ in minibatches])
        all_y = torch.cat([y for _, y in minibatches])
        domain_sizes = [int(x.shape[0]) for x, _ in minibatches]
        features = self.featurizer(all_x)
        logits = self.classifier(features)
        nll = per_sample_losses(logits, all_y, self.loss_kind).mean()

        active = self.penalty_active
        variances = self.engine.per_domain(
            self.classifier, features, all_y, domain_sizes, self.loss_kind,
            centered=bool(self.hparams["centered"]), full_covariance=bool(self.hparams["full_covariance"]),
            logits=logits, create_graph=active,
        )
        penalty = fishr_penalty(self.moving_average.update(variances))

        if self.update_count == self.hparams["penalty_anneal_iters"] != 0:
            # As DomainBed (after IRM and V-REx): Adam restarts when the penalty weight jumps from 0 to lambda.
            self.optimizer = self.make_adam(self.network.parameters())
        objective = nll + self.hparams["lambda"] * penalty if active else nll
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()
        self.update_count += 1
        nll_value, penalty_value = nll.item(), penalty.item()
        loss_value = objective.item() if active else nll_value  # DomainBed reports nll + 0 * penalty
        return {"loss": loss_value, "nll": nll_value, "penalty": penalty_value}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def extra_state(self) -> dict[str, Any]:
        return {"grad_variance_ema": self.moving_average.state}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        ema_state = state.get("grad_variance_ema")
        if ema_state is not None:
            device = next(self.parameters()).device
            ema_state = ema_state.to(device)
        self.moving_average.state = ema_state
