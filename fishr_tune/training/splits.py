"""A run's data behind one interface, whichever way it is held: in-memory tensors (the MNIST datasets: minibatches
drawn on the device by a seeded generator) or image files read by DataLoaders (fishr_tune.data.loaders). The
trainer draws minibatches, evaluates and checkpoints the position through it without asking which it is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast

import torch

from fishr_tune.algorithms import Algorithm
from fishr_tune.data import Environment, FileEnvironment, MultiDomainDataset, holdout_split
from fishr_tune.data.loaders import FileBackedSplits
from fishr_tune.data.sampling import class_balanced_weights, draw_indices

# Examples per forward pass when evaluating a split held in memory (no gradients, so far above a training batch).
EVAL_CHUNK_SIZE = 2048


def predicted_labels(logits: torch.Tensor) -> torch.Tensor:
    """A single-logit head predicts class 1 when its logit is positive (as DomainBed); otherwise the argmax."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def accuracy(algorithm: Algorithm, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction correct."""
    if len(y) == 0:
        return float("nan")
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), EVAL_CHUNK_SIZE):
            predicted = predicted_labels(algorithm.predict(x[start : start + EVAL_CHUNK_SIZE]))
            target = y[start : start + EVAL_CHUNK_SIZE]
            correct += int((predicted == target).sum())
    return correct / len(y)


class Splits(Protocol):
    """What the trainer needs of its data; `state_dict` holds the sampling position a checkpoint must keep."""

    def split_size(self, env: int, split: str) -> int: ...

    def minibatches(self) -> list[tuple[torch.Tensor, torch.Tensor]]: ...

    def evaluate(self, algorithm: Algorithm) -> dict[int, dict[str, float]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class InMemorySplits:
    """Every environment's in/out split as tensors on the device; minibatches drawn with replacement (as DomainBed's
    InfiniteDataLoader) by a generator seeded with the run's seed, class-balanced when the hyperparameter asks."""

    def __init__(self, dataset: MultiDomainDataset, train_envs: list[int], hparams: Mapping[str, Any],
                 device: torch.device, holdout_fraction: float, trial_seed: int, seed: int):
        self.train_envs = train_envs
        self.batch_size = hparams["batch_size"]
        self.device = device
        self.tensors: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        for i, env in enumerate(cast(list[Environment], dataset.environments)):
            in_idx, out_idx = holdout_split(len(env), holdout_fraction, trial_seed, i)
            x, y = env.x.to(device), env.y.to(device)
            self.tensors[i] = {"in": (x[in_idx], y[in_idx]), "out": (x[out_idx], y[out_idx])}
        # DomainBed's class_balanced: per training domain, weights that draw every class equally often
        self.class_weights = (
            {i: class_balanced_weights(self.tensors[i]["in"][1]) for i in train_envs}
            if hparams.get("class_balanced") else {}
        )
        self.sampler = torch.Generator().manual_seed(seed)

    def split_size(self, env: int, split: str) -> int:
        return len(self.tensors[env][split][1])

    def minibatches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batch = []
        for i in self.train_envs:
            x, y = self.tensors[i]["in"]
            idx = draw_indices(len(y), self.batch_size, self.sampler, self.class_weights.get(i)).to(self.device)
            batch.append((x[idx], y[idx]))
        return batch

    def evaluate(self, algorithm: Algorithm) -> dict[int, dict[str, float]]:
        return {i: {split: accuracy(algorithm, *self.tensors[i][split]) for split in ("in", "out")} for i in self.tensors}

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sampler.set_state(state["sampler"])

    def close(self) -> None:
        """Nothing to stop: the tensors stay usable."""


class FileSplits:
    """Image files read by DataLoaders (`FileBackedSplits`), whose sampler position is part of the checkpoint."""

    def __init__(self, dataset: MultiDomainDataset, train_envs: list[int], hparams: Mapping[str, Any],
                 device: torch.device, holdout_fraction: float, trial_seed: int, seed: int, num_workers: int | None):
        environments = cast(list[FileEnvironment], dataset.environments)
        split_indices = {}
        for i, env in enumerate(environments):
            in_idx, out_idx = holdout_split(len(env), holdout_fraction, trial_seed, i)
            split_indices[i] = {"in": in_idx, "out": out_idx}
        self.files = FileBackedSplits(environments, split_indices, train_envs, dict(hparams), device, seed,
                                      num_workers)

    def split_size(self, env: int, split: str) -> int:
        return self.files.split_size(env, split)

    def minibatches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.files.minibatches()

    def evaluate(self, algorithm: Algorithm) -> dict[int, dict[str, float]]:
        return self.files.evaluate(lambda x: predicted_labels(algorithm.predict(x)))

    def state_dict(self) -> dict[str, Any]:
        return {"file_splits": self.files.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "file_splits" in state:
            self.files.load_state_dict(state["file_splits"])

    def close(self) -> None:
        """Stop the DataLoader workers; they restart on demand."""
        self.files.close()


def make_splits(dataset: MultiDomainDataset, train_envs: list[int], hparams: Mapping[str, Any], device: torch.device,
                holdout_fraction: float, trial_seed: int, seed: int, num_workers: int | None) -> Splits:
    """The one place that asks how the dataset holds its data."""
    if dataset.file_backed:
        return FileSplits(dataset, train_envs, hparams, device, holdout_fraction, trial_seed, seed, num_workers)
    return InMemorySplits(dataset, train_envs, hparams, device, holdout_fraction, trial_seed, seed)
