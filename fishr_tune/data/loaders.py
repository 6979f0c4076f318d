"""The input pipeline for file-backed environments: DataLoader workers, pinned memory, one infinite sampler per
training domain, and batched evaluation of every split.

Reproducibility does not depend on the number of workers, nor on prefetching: training batch k of domain d is
drawn from a generator seeded by (seed, d, k) alone, and every sample carries its own augmentation seed (set in
whichever process decodes it). Resuming therefore only needs the number of batches consumed, and continues with
exactly the images and augmentations an uninterrupted run would have seen (as long as the folders are unchanged).

Workers return uint8 images (4x less to copy between processes and to the GPU than float32); normalization runs
on the training device.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fishr_tune.data.base import FileEnvironment
from fishr_tune.data.sampling import class_balanced_weights, draw_indices
from fishr_tune.data.transforms import evaluation_transform, normalize, training_transform
from fishr_tune.hparams import seed_hash

IMAGE_EVAL_BATCH_SIZE = 128  # images per batch the file-backed evaluation loader decodes (workers' memory bounds it)
MAX_DEFAULT_WORKERS = 8  # DomainBed's N_WORKERS
SEED_RANGE = 2**62

SampleKey = tuple[int, int]  # (index, augmentation seed; -1 for none)


def default_num_workers() -> int:
    """The CPUs this process may use, less one for the training loop, at most DomainBed's 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(MAX_DEFAULT_WORKERS, cpus - 1))


class SeededImages(Dataset):
    """Images addressed by (index, seed): the seed fixes the random transform, whichever process reads the file.

    Paths are held in one numpy array rather than a list of str, so forked workers do not copy them page by page
    as reference counts change (which matters at DomainNet's 586,575 paths).
    """

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, transform: Callable[[Any], torch.Tensor]):
        self.paths = np.array(paths, dtype=np.str_)
        self.labels = labels.numpy().astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Any:
        from PIL import Image

        with Image.open(str(self.paths[index])) as image:
            return image.convert("RGB")

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, int]:
        index, seed = key
        image = self.load(index)
        if seed < 0:
            return self.transform(image), int(self.labels[index])
        with torch.random.fork_rng(devices=[]):  # torchvision's random transforms draw from the global torch RNG
            torch.manual_seed(seed)
            return self.transform(image), int(self.labels[index])


class DomainBatchSampler:
    """Infinite: one with-replacement sampler per training domain (as DomainBed's InfiniteDataLoader), their
    batches concatenated in domain order. Batch k of domain d depends only on (seed, d, k)."""

    def __init__(self, domain_sizes: Sequence[int], batch_size: int, seed: int, augment: bool,
                 weights: Sequence[torch.Tensor] | None = None):
        self.domain_sizes = list(domain_sizes)
        self.weights = list(weights) if weights is not None else None  # DomainBed's class_balanced, per domain
        self.offsets = np.cumsum([0, *self.domain_sizes[:-1]]).tolist()
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.start = 0

    def batch(self, k: int) -> list[SampleKey]:
        keys: list[SampleKey] = []
        for domain, (offset, size) in enumerate(zip(self.offsets, self.domain_sizes)):
            generator = torch.Generator().manual_seed(seed_hash(self.seed, domain, k))
            weights = self.weights[domain] if self.weights is not None else None
            indices = draw_indices(size, self.batch_size, generator, weights).tolist()
            if self.augment:
                seeds = torch.randint(SEED_RANGE, (self.batch_size,), generator=generator).tolist()
            else:
                seeds = [-1] * self.batch_size
            keys.extend((offset + i, s) for i, s in zip(indices, seeds))
        return keys

    def __iter__(self) -> Iterator[list[SampleKey]]:
        k = self.start
        while True:
            yield self.batch(k)
            k += 1


class FileBackedSplits:
    """The in/out splits of file-backed environments, served by two DataLoaders: an infinite one over the training
    domains' `in` splits, and a sequential one over every split for evaluation (its workers persist between
    evaluations)."""

    def __init__(
        self,
        environments: Sequence[FileEnvironment],
        split_indices: Mapping[int, Mapping[str, torch.Tensor]],
        train_envs: Sequence[int],
        hparams: Mapping[str, Any],
        device: torch.device,
        seed: int,
        num_workers: int | None = None,
    ):
        self.device = device
        self.train_envs = list(train_envs)
        self.batch_size = int(hparams["batch_size"])
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        size = int(hparams["image_size"])
        self.sizes = {i: {split: len(idx) for split, idx in splits.items()} for i, splits in split_indices.items()}

        train_paths: list[str] = []
        train_labels: list[torch.Tensor] = []
        for i in self.train_envs:
            idx = split_indices[i]["in"]
            train_paths.extend(environments[i].path(j) for j in idx.tolist())
            train_labels.append(environments[i].y[idx])
        augment = bool(hparams["data_augmentation"])
        transform = training_transform(size) if augment else evaluation_transform(size)
        self.train_data = SeededImages(train_paths, torch.cat(train_labels), transform)
        weights = [class_balanced_weights(labels) for labels in train_labels] if hparams.get("class_balanced") else None
        self.batch_sampler = DomainBatchSampler(
            [self.sizes[i]["in"] for i in self.train_envs], self.batch_size, seed, augment, weights
        )

        eval_paths: list[str] = []
        eval_labels: list[torch.Tensor] = []
        groups: list[tuple[int, str]] = []
        group_ids: list[torch.Tensor] = []
        for i in sorted(split_indices):
            for split in ("in", "out"):
                idx = split_indices[i][split]
                eval_paths.extend(environments[i].path(j) for j in idx.tolist())
                eval_labels.append(environments[i].y[idx])
                group_ids.append(torch.full((len(idx),), len(groups), dtype=torch.long))
                groups.append((i, split))
        self.groups = groups
        self.group_ids = torch.cat(group_ids).to(device)
        self.eval_data = SeededImages(eval_paths, torch.cat(eval_labels), evaluation_transform(size))
        self.batches_drawn = 0
        self._train_loader: DataLoader | None = None
        self._train_iterator: Iterator[Any] | None = None
        self._eval_loader: DataLoader | None = None

    def _loader_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "num_workers": self.num_workers,
            "pin_memory": self.device.type == "cuda",
            "persistent_workers": self.num_workers > 0,
        }
        if self.num_workers > 0:
            options["prefetch_factor"] = 4
        return options

    def split_size(self, env: int, split: str) -> int:
        return self.sizes[env][split]

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pinned uint8 to the device without blocking the host, then normalized there."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        return normalize(images), labels

    def minibatches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The next batch of every training domain, on the device."""
        if self._train_iterator is None:
            self.batch_sampler.start = self.batches_drawn
            if self._train_loader is None:
                self._train_loader = DataLoader(self.train_data, batch_sampler=self.batch_sampler, **self._loader_options())
            self._train_iterator = iter(self._train_loader)
        images, labels = next(self._train_iterator)
        self.batches_drawn += 1
        images, labels = self.to_device(images, labels)
        return list(zip(images.split(self.batch_size), labels.split(self.batch_size)))

    def evaluate(self, predict_labels: Callable[[torch.Tensor], torch.Tensor]) -> dict[int, dict[str, float]]:
        """Accuracy of every (environment, split), in one pass over all of them."""
        if self._eval_loader is None:
            keys = [(i, -1) for i in range(len(self.eval_data))]
            self._eval_loader = DataLoader(self.eval_data, batch_size=IMAGE_EVAL_BATCH_SIZE, sampler=keys, **self._loader_options())
        correct = torch.zeros(len(self.groups), device=self.device)
        offset = 0
        with torch.no_grad():
            for images, labels in self._eval_loader:
                images, labels = self.to_device(images, labels)
                hits = (predict_labels(images) == labels).float()
                correct.index_add_(0, self.group_ids[offset : offset + len(labels)], hits)
                offset += len(labels)
        result: dict[int, dict[str, float]] = {}
        for (env, split), hits in zip(self.groups, correct.tolist()):
            total = self.sizes[env][split]
            result.setdefault(env, {})[split] = hits / total if total else float("nan")
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from batch `batches_drawn`: prefetched batches of the old position are dropped."""
        self.batches_drawn = int(state["batches_drawn"])
        self._train_iterator = None

    def close(self) -> None:
        """Stop the worker processes now rather than at garbage collection."""
        self._train_iterator = None
        self._train_loader = None
        self._eval_loader = None
