"""Datasets as lists of named environments held in memory, and the dataset registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fishr_tune.errors import ConfigError, unknown_name_error


@dataclass
class Environment:
    """One domain: inputs `x` (float, N x input_shape) and labels `y` (int64, N)."""

    name: str
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class FileEnvironment:
    """One domain kept on disk: image `files` (relative to `root`) with labels `y` (int64), read by data loaders.

    Only paths travel (to Ray's object store, to DataLoader workers); the pixels are decoded where they are used.
    """

    name: str
    root: str
    files: list[str]
    y: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        return f"{self.root}/{self.files[index]}"


@dataclass
class MultiDomainDataset:
    name: str
    environments: Sequence[Environment | FileEnvironment]  # all of one kind
    input_shape: tuple[int, ...]
    num_classes: int
    source: str
    n_steps: int = 5001
    checkpoint_freq: int = 100
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def file_backed(self) -> bool:
        """Images read from files by loaders (True) or tensors held in memory (False)."""
        return any(isinstance(env, FileEnvironment) for env in self.environments)

    @property
    def env_names(self) -> list[str]:
        return [env.name for env in self.environments]

    def __len__(self) -> int:
        return len(self.environments)

    def summary(self) -> str:
        sizes = ", ".join(f"env{i} {env.name!r}: {len(env)}" for i, env in enumerate(self.environments))
        return f"{self.name} from {self.source} ({sizes} images)"


DatasetBuilder = Callable[..., MultiDomainDataset]
DATASETS: dict[str, DatasetBuilder] = {}
DATASET_ENVIRONMENTS: dict[str, tuple[str, ...]] = {}


def register_dataset(name: str, environments: tuple[str, ...]) -> Callable[[DatasetBuilder], DatasetBuilder]:
    def wrap(builder: DatasetBuilder) -> DatasetBuilder:
        DATASETS[name] = builder
        DATASET_ENVIRONMENTS[name] = environments
        return builder

    return wrap


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise unknown_name_error("dataset", name, list(DATASETS))


def check_test_envs(dataset: str, test_envs: list[int], where: str = "--test-envs") -> None:
    """Test environments must be valid indices and leave at least one environment to train on."""
    check_dataset_name(dataset)
    names = DATASET_ENVIRONMENTS[dataset]
    for env in test_envs:
        if not 0 <= env < len(names):
            listing = ", ".join(f"{i} ({n})" for i, n in enumerate(names))
            raise ConfigError(f"{where}: environment {env} out of range for {dataset}; valid: {listing}")
    if len(set(test_envs)) >= len(names):
        raise ConfigError(f"{where}: every environment of {dataset} is a test environment; none is left to train on")
