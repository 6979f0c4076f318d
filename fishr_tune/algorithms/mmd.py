"""MMD (Li et al. 2018) as DomainBed runs it: ERM plus a penalty matching every pair of training domains'
feature distributions under a mixture of Gaussian kernels. `FeatureMatching` is the shared base that CORAL
(coral.py) reuses with a different distance."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from itertools import combinations

import torch
import torch.nn.functional as F

from fishr_tune.algorithms.base import Minibatches, register_algorithm
from fishr_tune.algorithms.erm import ERM
from fishr_tune.space import NON_NEGATIVE, HParam, loguniform

# DomainBed's kernel bandwidths: the kernel is the sum of exp(-gamma * ||x - y||^2) over these.
GAUSSIAN_GAMMAS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)

MMD_GAMMA = HParam(1.0, loguniform(-1, 1), "weight of the feature-matching penalty (not a kernel width)",
                   domain=NON_NEGATIVE)


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, clamped away from 0 (as DomainBed) so the gradient stays finite."""
    x_norm = x.pow(2).sum(dim=-1, keepdim=True)
    y_norm = y.pow(2).sum(dim=-1, keepdim=True)
    return torch.addmm(y_norm.transpose(-2, -1), x, y.transpose(-2, -1), alpha=-2).add_(x_norm).clamp_min_(1e-30)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, gammas: Sequence[float] = GAUSSIAN_GAMMAS) -> torch.Tensor:
    distances = squared_distances(x, y)
    return sum(torch.exp(-gamma * distances) for gamma in gammas)  # type: ignore[return-value]


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor, gammas: Sequence[float] = GAUSSIAN_GAMMAS) -> torch.Tensor:
    """Biased estimate of the squared MMD between the samples x (n x d) and y (m x d)."""
    return (
        gaussian_kernel(x, x, gammas).mean()
        + gaussian_kernel(y, y, gammas).mean()
        - 2 * gaussian_kernel(x, y, gammas).mean()
    )


class FeatureMatching(ERM):
    """Mean of the domains' cross-entropies plus `mmd_gamma` times the mean distance over all pairs of domains'
    features. `loss` is that whole objective and `nll` its first term (DomainBed's `loss` for these two)."""

    HPARAMS = {"mmd_gamma": MMD_GAMMA}
    UPDATE_KEYS = ("loss", "nll", "penalty")

    @staticmethod
    @abstractmethod
    def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Discrepancy between two domains' features (n x d and m x d)."""

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        all_x = torch.cat([x for x, _ in minibatches])
        features = self.featurizer(all_x)
        per_domain = torch.split(features, [len(x) for x, _ in minibatches])
        logits = torch.split(self.classifier(features), [len(x) for x, _ in minibatches])
        # DomainBed averages the per-domain cross-entropies (not the pooled one: they differ for unequal batches).
        nll = torch.stack([F.cross_entropy(lg, y) for lg, (_, y) in zip(logits, minibatches)]).mean()
        pairs = list(combinations(range(len(minibatches)), 2))
        if pairs:
            penalty = torch.stack([self.distance(per_domain[i], per_domain[j]) for i, j in pairs]).mean()
        else:
            penalty = torch.zeros((), device=features.device)
        loss = nll + self.hparams["mmd_gamma"] * penalty
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_count += 1
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}


@register_algorithm("MMD")
class MMD(FeatureMatching):
    """Maximum mean discrepancy with DomainBed's mixture of Gaussian kernels."""

    @staticmethod
    def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return gaussian_mmd(x, y)
