"""Which examples a training minibatch holds: uniform with replacement (DomainBed's default), or DomainBed's
class-balanced sampling (`class_balanced`), shared by the in-memory and the file-backed data paths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch.utils.data import WeightedRandomSampler


def class_balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """DomainBed's make_weights_for_balanced_classes: 1 / (count of the example's class * number of classes present),
    so every class present is drawn equally often, and its examples uniformly. float32, as DomainBed stores them
    (the sampler's draws depend on the weights' precision)."""
    classes, inverse, counts = torch.unique(labels.cpu(), return_inverse=True, return_counts=True)
    return (1.0 / (counts.double() * len(classes))).float()[inverse]


def draw_indices(size: int, batch_size: int, generator: torch.Generator, weights: torch.Tensor | None = None) -> torch.Tensor:
    """`batch_size` indices into `size` examples, with replacement: uniform, or by `weights` through torch's
    WeightedRandomSampler (DomainBed's InfiniteDataLoader with weights)."""
    if weights is None:
        return torch.randint(size, (batch_size,), generator=generator)
    # torch's own stub asks for a sequence; the sampler takes a tensor as it is (torch.as_tensor)
    sampler = WeightedRandomSampler(cast(Sequence[float], weights), batch_size, replacement=True, generator=generator)
    return torch.tensor(list(sampler), dtype=torch.long)
