"""Datasets: environments per dataset, their sources, and in/out splits."""

from __future__ import annotations

from typing import Any

from fishr_tune.data import colored_mnist, images, rotated_mnist  # noqa: F401  (registers the datasets)
from fishr_tune.data.base import (
    DATASET_ENVIRONMENTS,
    DATASETS,
    Environment,
    FileEnvironment,
    MultiDomainDataset,
    check_dataset_name,
    check_test_envs,
    register_dataset,
)
from fishr_tune.data.splits import holdout_split

__all__ = [
    "DATASETS",
    "DATASET_ENVIRONMENTS",
    "Environment",
    "FileEnvironment",
    "MultiDomainDataset",
    "check_dataset_name",
    "check_test_envs",
    "get_dataset",
    "holdout_split",
    "register_dataset",
]


def get_dataset(name: str, **options: Any) -> MultiDomainDataset:
    """Build a registered dataset; options (data_dir, download, seed, label_noise) go to its builder."""
    check_dataset_name(name)
    return DATASETS[name](**options)
