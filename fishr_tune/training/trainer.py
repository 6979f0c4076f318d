"""The DomainBed training loop: one minibatch per training domain per step, evaluation of every split at each
checkpoint, and a state that resumes bit-for-bit."""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from fishr_tune import records
from fishr_tune.algorithms import get_algorithm_class
from fishr_tune.data import DATASET_ENVIRONMENTS, MultiDomainDataset, get_dataset
from fishr_tune.data.loaders import FileBackedSplits
from fishr_tune.errors import ConfigError, quote
from fishr_tune.files import replace_atomically
from fishr_tune.networks import amp_unsupported_reason
from fishr_tune.training.config import TrainConfig
from fishr_tune.training.rng import rng_state, seed_everything, set_rng_state
from fishr_tune.training.splits import FileSplits, InMemorySplits, Splits, make_splits


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run cannot continue (a sweep marks the trial failed with this reason)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def check_amp(hparams: Mapping[str, Any], device: torch.device) -> None:
    """Mixed precision the device cannot run natively is refused, not silently ignored or emulated slowly."""
    amp = hparams.get("amp", "off")
    reason = amp_unsupported_reason(amp, device)
    if reason is not None:
        raise ConfigError(f"hyperparameter amp: {quote(amp)} cannot run here: {reason}; set amp to 'off'")


class Trainer:
    """Owns one run: the data (one `Splits`, in memory or file-backed alike), the algorithm and the running means
    since the last record."""

    def __init__(self, config: TrainConfig, dataset: MultiDomainDataset | None = None, device: torch.device | None = None):
        self.config = config
        self.hparams = config.resolved_hparams()
        self.device = device or resolve_device(config.device)
        if dataset is None:
            dataset = get_dataset(
                config.dataset, data_dir=config.data_dir, download=config.download,
                seed=config.trial_seed, label_noise=config.label_noise,
            )
        self.dataset = dataset
        self.steps = config.steps or dataset.n_steps
        self.checkpoint_freq = config.checkpoint_freq or dataset.checkpoint_freq
        self.test_envs = sorted(set(config.test_envs))
        self.train_envs = [i for i in range(len(DATASET_ENVIRONMENTS[config.dataset])) if i not in self.test_envs]
        input_shape = dataset.input_shape
        check_amp(self.hparams, self.device)
        self.data: Splits = make_splits(dataset, self.train_envs, self.hparams, self.device, config.holdout_fraction,
                                        config.trial_seed, config.seed, config.num_workers)
        if dataset.file_backed:  # the image transforms resize to image_size
            input_shape = (input_shape[0], self.hparams["image_size"], self.hparams["image_size"])
        for i in self.train_envs:
            if self.split_size(i, "in") == 0:
                raise ConfigError(f"environment {i} of {config.dataset} has no training examples")
        seed_everything(config.seed)
        algorithm_class = get_algorithm_class(config.algorithm)
        self.algorithm = algorithm_class(input_shape, dataset.num_classes, len(self.train_envs), self.hparams)
        self.algorithm.to(self.device)
        self.step = 0
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0
        self._time = 0.0

    @property
    def args(self) -> dict[str, Any]:
        return {
            "dataset": self.config.dataset,
            "algorithm": self.config.algorithm,
            "test_envs": self.test_envs,
            "trial_seed": self.config.trial_seed,
            "hparams_seed": self.config.hparams_seed,
            "seed": self.config.seed,
            "holdout_fraction": self.config.holdout_fraction,
            "steps": self.steps,
            "checkpoint_freq": self.checkpoint_freq,
            "label_noise": self.dataset.info.get("label_noise"),
            "data_source": self.dataset.source,
        }

    @property
    def splits(self) -> dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """The in-memory tensors by environment and split ({} for file-backed data), for code that reads them whole."""
        return self.data.tensors if isinstance(self.data, InMemorySplits) else {}

    @property
    def file_splits(self) -> FileBackedSplits | None:
        """The DataLoaders of file-backed data (None in memory), for code that reads the images whole."""
        return self.data.files if isinstance(self.data, FileSplits) else None

    def split_size(self, env: int, split: str) -> int:
        return self.data.split_size(env, split)

    @property
    def steps_per_epoch(self) -> float:
        return min(self.split_size(i, "in") for i in self.train_envs) / self.hparams["batch_size"]

    def minibatches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One minibatch per training domain, drawn with replacement (as DomainBed's InfiniteDataLoader)."""
        return self.data.minibatches()

    def train_step(self) -> dict[str, float]:
        start = time.perf_counter()
        self.algorithm.train()
        results = self.algorithm.update(self.minibatches())
        self._time += time.perf_counter() - start
        for key, value in results.items():
            if not math.isfinite(value):
                raise NonFiniteLossError(f"{key} became {value} at step {self.step}")
            self._sums[key] += value
        self._count += 1
        self.step += 1
        return results

    def evaluate(self) -> dict[int, dict[str, float]]:
        self.algorithm.eval()
        result = self.data.evaluate(self.algorithm)
        self.algorithm.train()
        return result

    def is_checkpoint_step(self, step: int) -> bool:
        return step % self.checkpoint_freq == 0 or step == self.steps - 1

    def make_record(self) -> dict[str, Any]:
        """A record of the step just taken; the running means start again after it."""
        count = max(self._count, 1)
        record = records.make_record(
            step=self.step - 1,
            epoch=self.step / self.steps_per_epoch,
            losses={k: v / count for k, v in self._sums.items()},
            step_time=self._time / count,
            accuracies=self.evaluate(),
            hparams=self.hparams,
            args=self.args,
        )
        record[records.VAL_ACC] = records.validation_accuracy(record)
        self._sums.clear()
        self._count = 0
        self._time = 0.0
        return record

    def records(self) -> Iterator[dict[str, Any]]:
        """Train until `steps`, yielding a record at every checkpoint step (the caller may checkpoint then)."""
        while self.step < self.steps:
            self.train_step()
            if self.is_checkpoint_step(self.step - 1):
                yield self.make_record()

    @property
    def finished(self) -> bool:
        return self.step >= self.steps

    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "algorithm": self.algorithm.state_dict(),
            **self.data.state_dict(),
            "rng": rng_state(),
            "sums": dict(self._sums),
            "count": self._count,
            "time": self._time,
        }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.algorithm.load_state_dict(state["algorithm"])
        self.data.load_state_dict(state)
        set_rng_state(state["rng"])
        self._sums = defaultdict(float, state["sums"])
        self._count = int(state["count"])
        self._time = float(state["time"])

    def close(self) -> None:
        """Stop DataLoader workers (image datasets); the trainer can still be used, they restart on demand."""
        self.data.close()

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Atomic and durable: a crash or power cut mid-write leaves the previous checkpoint intact."""
        state = self.state_dict()
        replace_atomically(path, lambda handle: torch.save(state, handle))

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))


