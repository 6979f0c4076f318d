"""Deep CORAL (Sun & Saenko 2016) as DomainBed runs it: match the means and covariances of every pair of
training domains' features (DomainBed's "mean_cov" kernel of its MMD class)."""

from __future__ import annotations

import torch

from fishr_tune.algorithms.base import register_algorithm
from fishr_tune.algorithms.mmd import FeatureMatching


def coral_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the feature means plus that of the (unbiased) feature covariances."""
    mean_x = x.mean(dim=0, keepdim=True)
    mean_y = y.mean(dim=0, keepdim=True)
    centred_x = x - mean_x
    centred_y = y - mean_y
    cov_x = centred_x.T @ centred_x / (len(x) - 1)
    cov_y = centred_y.T @ centred_y / (len(y) - 1)
    return (mean_x - mean_y).pow(2).mean() + (cov_x - cov_y).pow(2).mean()


@register_algorithm("CORAL")
class CORAL(FeatureMatching):
    @staticmethod
    def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return coral_distance(x, y)
