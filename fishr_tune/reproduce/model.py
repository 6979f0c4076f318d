"""The official script's model and objective: the IRM paper's MLP (with the grayscale oracle's view), its binary
cross-entropy and accuracy, and its penalties. Names say how each penalty reduces, since the script's reductions
differ from the algorithms' (fishr_tune.algorithms) on purpose."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fishr_tune.errors import unknown_name_error
from fishr_tune.gradvar import get_engine
from fishr_tune.networks import MLP
from fishr_tune.reproduce.config import (
    FISHR_VARIANTS,
    REPRODUCIBLE_ALGORITHMS,
    UNPENALIZED,
    ScriptConfig,
)


def remove_color(x: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) -> (N, H, W): the digit without its colour, the grayscale oracle's only view of an image.

    A coloured digit has one channel zeroed, so this equals the IRM script's channel sum on every coloured image;
    the maximum (not the sum) also gives the same digit for the gray copy, whose two channels both hold it.
    """
    return x.amax(dim=1)


class IrmMLP(nn.Module):
    """The script's model: MLP body (2x14x14 -> 390 -> 390, ReLU) and a single-logit linear head, Xavier/zero init.

    `grayscale` is the script's grayscale model: colour removed before the body, which then has H*W inputs.
    """

    def __init__(self, n_inputs: int = 2 * 14 * 14, hidden_dim: int = 390, grayscale: bool = False):
        super().__init__()
        self.grayscale = grayscale
        self.body = MLP(n_inputs // 2 if grayscale else n_inputs, hidden_dim, hidden_layers=2)
        self.classifier = nn.Linear(hidden_dim, 1)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(remove_color(x) if self.grayscale else x)
        return features, self.classifier(features)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.reshape(-1).to(logits.dtype))


def mean_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return ((logits.reshape(-1) > 0).long() == labels.reshape(-1)).float().mean()


def irm_penalty_full_batch(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """IRMv1: squared derivative of the environment's risk with respect to a dummy scale on the logits, at 1."""
    scale = torch.ones((), dtype=logits.dtype, requires_grad=True)
    grad = torch.autograd.grad(mean_nll(logits * scale, labels), [scale], create_graph=True)[0]
    return grad.pow(2).sum()


def vrex_penalty(env_nlls: Sequence[torch.Tensor]) -> torch.Tensor:
    """The script's V-REx ("rex") penalty for two environments: squared difference of their risks."""
    first, second = env_nlls
    return (first - second).pow(2)


def fishr_penalty_summed(
    classifier: nn.Linear, features: torch.Tensor, labels: torch.Tensor, domain_sizes: Sequence[int],
    logits: torch.Tensor | None = None, centered: bool = True, full_covariance: bool = False,
) -> torch.Tensor:
    """Sum over environments of the summed squared distance between the environment's centred per-sample
    gradient variance (head weight and bias) and the variance averaged over environments, as the script does.
    `centered` and `full_covariance` select the Table 6 variants (see FISHR_VARIANTS).
    """
    variances = get_engine("closed_form").per_domain(
        classifier, features, labels, domain_sizes, loss="binary_cross_entropy", centered=centered,
        full_covariance=full_covariance, logits=logits,
    )
    return (variances - variances.mean(dim=0, keepdim=True)).pow(2).sum()


@dataclass
class StepOutput:
    loss: torch.Tensor
    train_nll: float
    train_acc: float
    penalty: float


def training_loss(
    algorithm: str, model: IrmMLP, envs_x: Sequence[torch.Tensor], envs_y: Sequence[torch.Tensor], step: int,
    config: ScriptConfig,
) -> StepOutput:
    """The script's objective at `step`: mean env NLL + L2 on all parameters + annealed penalty, rescaled."""
    sizes = [len(y) for y in envs_y]
    features, logits = model(torch.cat(list(envs_x)))
    labels = torch.cat(list(envs_y))
    env_logits = torch.split(logits, sizes)
    env_nlls = [mean_nll(lg, y) for lg, y in zip(env_logits, envs_y)]
    train_nll = torch.stack(env_nlls).mean()
    train_acc = torch.stack([mean_accuracy(lg, y) for lg, y in zip(env_logits, envs_y)]).mean()
    weight_norm = sum(w.pow(2).sum() for w in model.parameters())
    loss = train_nll + config.l2_regularizer_weight * weight_norm
    penalty = torch.zeros(())
    if algorithm not in UNPENALIZED:
        if algorithm == "IRM":
            penalty = torch.stack([irm_penalty_full_batch(lg, y) for lg, y in zip(env_logits, envs_y)]).mean()
        elif algorithm == "VREx":
            penalty = vrex_penalty(env_nlls)
        elif algorithm in FISHR_VARIANTS:
            centered, full_covariance = FISHR_VARIANTS[algorithm]
            penalty = fishr_penalty_summed(model.classifier, features, labels, sizes, logits=logits, centered=centered,
                                    full_covariance=full_covariance)
        else:
            raise unknown_name_error("algorithm", algorithm, REPRODUCIBLE_ALGORITHMS)
        penalty_weight = config.penalty_weight if step >= config.penalty_anneal_iters else 1.0
        loss = loss + penalty_weight * penalty
        if penalty_weight > 1.0:
            loss = loss / penalty_weight
    return StepOutput(loss, float(train_nll.detach()), float(train_acc), float(penalty.detach()))
