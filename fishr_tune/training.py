"""The DomainBed training loop: one minibatch per training domain per step, evaluation of every split at each
checkpoint, records written as they are produced, and checkpoints that resume bit-for-bit."""

from __future__ import annotations

import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fishr_tune import records
from fishr_tune.algorithms import Algorithm, get_algorithm_class
from fishr_tune.data import DATASET_ENVIRONMENTS, MultiDomainDataset, check_dataset_name, check_test_envs, get_dataset, holdout_split
from fishr_tune.data.loaders import FileBackedSplits
from fishr_tune.data.sampling import class_balanced_weights, draw_indices
from fishr_tune.errors import ConfigError, quote
from fishr_tune.files import replace_atomically, write_text_atomically
from fishr_tune.hparams import MAX_SEED, apply_overrides, hparams_for_trial
from fishr_tune.networks import amp_unsupported_reason
from fishr_tune.yaml_io import load_yaml

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.yaml"
DONE_FILE = "done"
EVAL_BATCH_SIZE = 2048
MAX_STEPS = 10**9  # DomainBed trains 5,001 steps; a billion is a typo and would never end


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run cannot continue (a sweep marks the trial failed with this reason)."""


class TrainConfig(BaseModel):
    """Everything that defines a training run; `fishr-tune train --config` reads it from YAML."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset: str = "ColoredMNIST-IRM"
    algorithm: str = "ERM"
    test_envs: list[int] = Field(default_factory=lambda: [2])
    hparams: dict[str, Any] = Field(default_factory=dict, description="overrides of the registry's values")
    hparams_seed: int = Field(0, ge=0, le=MAX_SEED, description="0: the defaults; otherwise a random configuration")
    trial_seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds the data and the in/out splits")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds initialization and minibatch sampling")
    steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="default: the dataset's (DomainBed: 5001)")
    checkpoint_freq: int | None = Field(None, gt=0, le=MAX_STEPS, description="default: the dataset's (DomainBed: 100 for MNIST)")
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    label_noise: float | None = Field(None, ge=0.0, le=1.0, description="Colored MNIST only; default 0.25")
    data_dir: str | None = None
    download: bool = False
    output_dir: str | None = None
    device: str = "auto"
    num_workers: int | None = Field(
        None, ge=0, description="image datasets: DataLoader worker processes (default: the CPUs available less one, at most 8)"
    )

    @field_validator("data_dir", "output_dir")
    @classmethod
    def _usable_path(cls, value: str | None) -> str | None:
        from fishr_tune.files import path_problem

        problem = path_problem(value) if value is not None else None
        if problem:
            raise ValueError(f"not a usable path: {problem}")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    def resolved_hparams(self, where: str = "--hparams") -> dict[str, Any]:
        base = hparams_for_trial(self.algorithm, self.dataset, self.hparams_seed, self.trial_seed)
        return apply_overrides(self.algorithm, self.dataset, base, self.hparams, where=where)

    def check(self, hparams_where: str = "--hparams", key_where: Callable[[str], str] | None = None) -> None:
        """Every name and range, before any data is loaded; `hparams_where` and `key_where(key)` say where the
        overrides and the other keys came from (a file's key or a flag), so that the refusal names it."""
        where = key_where or (lambda key: f"--{key.replace('_', '-')}")
        for key, check in (("dataset", lambda: check_dataset_name(self.dataset)),
                           ("algorithm", lambda: get_algorithm_class(self.algorithm))):
            try:
                check()
            except ConfigError as error:
                raise ConfigError(f"{where(key)}: {error}") from None
        check_test_envs(self.dataset, self.test_envs, where=where("test_envs"))
        self.resolved_hparams(hparams_where)

    def default_output_dir(self) -> str:
        envs = "-".join(str(e) for e in self.test_envs)
        return os.path.join(
            "runs", f"{self.dataset}_{self.algorithm}_te{envs}_hs{self.hparams_seed}_ts{self.trial_seed}_s{self.seed}"
        )


def format_validation_error(error: ValidationError, where: str) -> ConfigError:
    first = error.errors()[0]
    path = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        valid = ", ".join(TrainConfig.model_fields)
        return ConfigError(f"{where}: unknown key {quote(path)}; valid keys: {valid}")
    return ConfigError(f"{where}: key {quote(path)}: {first['msg']} (got {quote(first.get('input'))})")


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    data = load_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: keys must be names, got {quote(bad[0])}")
    return data


def make_config(values: Mapping[str, Any], where: str, hparams_where: str = "--hparams",
                flags: Collection[str] = ()) -> TrainConfig:
    """Validate settings read from `where` (a file, or "command line"); keys in `flags` came from flags."""
    try:
        config = TrainConfig(**values)
    except ValidationError as error:
        raise format_validation_error(error, where) from None

    def key_where(key: str) -> str:
        return f"--{key.replace('_', '-')}" if key in flags or where == "command line" else f"{where}: key '{key}'"

    config.check(hparams_where, key_where)
    return config


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


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
        for start in range(0, len(y), EVAL_BATCH_SIZE):
            predicted = predicted_labels(algorithm.predict(x[start : start + EVAL_BATCH_SIZE]))
            target = y[start : start + EVAL_BATCH_SIZE]
            correct += int((predicted == target).sum())
    return correct / len(y)


def check_amp(hparams: Mapping[str, Any], device: torch.device) -> None:
    """Mixed precision the device cannot run natively is refused, not silently ignored or emulated slowly."""
    amp = hparams.get("amp", "off")
    reason = amp_unsupported_reason(amp, device)
    if reason is not None:
        raise ConfigError(f"hyperparameter amp: {quote(amp)} cannot run here: {reason}; set amp to 'off'")


def _rng_state() -> dict[str, Any]:
    """Every global RNG, as tensors and plain Python values so the checkpoint loads with weights_only=True.

    numpy's legacy state includes a cached second Gaussian (has_gauss, cached_gaussian): np.random.beta with
    alpha > 1 draws normals, so without it Mixup would not resume exactly.
    """
    py_state = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached_gaussian),
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `_rng_state`; checkpoints written before the Gaussian cache was saved restore it as empty."""
    torch.set_rng_state(state["torch"])
    np.random.set_state((
        "MT19937",
        state["numpy_keys"].numpy().astype(np.uint32),
        int(state["numpy_pos"]),
        int(state.get("numpy_has_gauss", 0)),
        float(state.get("numpy_cached_gaussian", 0.0)),
    ))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Owns one run: the splits, the algorithm, the sampler and the running means since the last record.

    Two data paths, chosen by the dataset: in-memory tensors (MNIST datasets; `splits` holds them on the device and
    `sampler` draws the minibatches) or files read by DataLoaders (image datasets; `file_splits`, a
    `fishr_tune.data.loaders.FileBackedSplits`, whose position is part of the checkpoint).
    """

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
        self.splits: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.file_splits: FileBackedSplits | None = None
        input_shape = dataset.input_shape
        check_amp(self.hparams, self.device)
        if dataset.file_backed:
            split_indices = {}
            for i, env in enumerate(dataset.environments):
                in_idx, out_idx = holdout_split(len(env), config.holdout_fraction, config.trial_seed, i)
                split_indices[i] = {"in": in_idx, "out": out_idx}
            self.file_splits = FileBackedSplits(
                dataset.environments, split_indices, self.train_envs, self.hparams, self.device, config.seed,
                config.num_workers,
            )
            input_shape = (input_shape[0], self.hparams["image_size"], self.hparams["image_size"])
        else:
            for i, env in enumerate(dataset.environments):
                in_idx, out_idx = holdout_split(len(env), config.holdout_fraction, config.trial_seed, i)
                x, y = env.x.to(self.device), env.y.to(self.device)
                self.splits[i] = {"in": (x[in_idx], y[in_idx]), "out": (x[out_idx], y[out_idx])}
        for i in self.train_envs:
            if self.split_size(i, "in") == 0:
                raise ConfigError(f"environment {i} of {config.dataset} has no training examples")
        # DomainBed's class_balanced: per training domain, weights that draw every class equally often
        self.class_weights = {i: class_balanced_weights(self.splits[i]["in"][1]) for i in self.train_envs} if (
            self.hparams.get("class_balanced") and self.file_splits is None) else {}
        seed_everything(config.seed)
        algorithm_class = get_algorithm_class(config.algorithm)
        self.algorithm = algorithm_class(input_shape, dataset.num_classes, len(self.train_envs), self.hparams)
        self.algorithm.to(self.device)
        self.sampler = torch.Generator().manual_seed(config.seed)
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

    def split_size(self, env: int, split: str) -> int:
        if self.file_splits is not None:
            return self.file_splits.split_size(env, split)
        return len(self.splits[env][split][1])

    @property
    def steps_per_epoch(self) -> float:
        return min(self.split_size(i, "in") for i in self.train_envs) / self.hparams["batch_size"]

    def minibatches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One minibatch per training domain, drawn with replacement (as DomainBed's InfiniteDataLoader)."""
        if self.file_splits is not None:
            return self.file_splits.minibatches()
        batch = []
        for i in self.train_envs:
            x, y = self.splits[i]["in"]
            idx = draw_indices(len(y), self.hparams["batch_size"], self.sampler, self.class_weights.get(i)).to(self.device)
            batch.append((x[idx], y[idx]))
        return batch

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
        if self.file_splits is not None:
            result = self.file_splits.evaluate(lambda x: predicted_labels(self.algorithm.predict(x)))
        else:
            result = {i: {split: accuracy(self.algorithm, *self.splits[i][split]) for split in ("in", "out")} for i in self.splits}
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
            "sampler": self.sampler.get_state(),
            "rng": _rng_state(),
            "sums": dict(self._sums),
            "count": self._count,
            "time": self._time,
        }
        if self.file_splits is not None:
            state["file_splits"] = self.file_splits.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.algorithm.load_state_dict(state["algorithm"])
        self.sampler.set_state(state["sampler"])
        _set_rng_state(state["rng"])
        self._sums = defaultdict(float, state["sums"])
        self._count = int(state["count"])
        self._time = float(state["time"])
        if self.file_splits is not None and "file_splits" in state:
            self.file_splits.load_state_dict(state["file_splits"])

    def close(self) -> None:
        """Stop DataLoader workers (image datasets); the trainer can still be used, they restart on demand."""
        if self.file_splits is not None:
            self.file_splits.close()

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Atomic and durable: a crash or power cut mid-write leaves the previous checkpoint intact."""
        state = self.state_dict()
        replace_atomically(path, lambda handle: torch.save(state, handle))

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))


MACHINE_SETTINGS = ("output_dir", "device", "data_dir", "download", "num_workers")


def saved_settings(config: TrainConfig) -> dict[str, Any]:
    """The config with hyperparameters fully resolved: `fishr-tune train --config` reruns it as is."""
    return config.model_copy(update={"hparams": config.resolved_hparams()}).model_dump()


def prepare_output_dir(config: TrainConfig, output_dir: Path, resume: bool) -> list[dict[str, Any]]:
    """Refuse to mix two runs in one directory; on resume, return the records to keep."""
    results = output_dir / records.RESULTS_FILE
    saved_config = output_dir / CONFIG_FILE
    if not results.exists() and not (output_dir / CHECKPOINT_FILE).exists():
        return []
    if not resume:
        raise ConfigError(
            f"--output-dir {output_dir} already holds a run; pass --resume to continue it, or choose another --output-dir"
        )
    if saved_config.exists():
        try:
            previous = load_yaml(saved_config) or {}
        except (ConfigError, UnicodeDecodeError, yaml.YAMLError) as error:
            reason = str(error).splitlines()[0][:200]
            raise ConfigError(f"--resume: {saved_config} is corrupt ({reason}); cannot check the run's settings") from None
        if not isinstance(previous, dict):
            raise ConfigError(f"--resume: {saved_config} is corrupt (expected a mapping of settings, got {type(previous).__name__})")
        mine = {k: v for k, v in saved_settings(config).items() if k not in MACHINE_SETTINGS}
        theirs = {k: previous.get(k) for k in mine}
        if theirs != mine:
            changed = sorted(k for k in mine if theirs[k] != mine[k])
            raise ConfigError(
                f"--resume: the run in {output_dir} was started with different settings ({', '.join(changed)})"
            )
    if not results.exists():
        return []
    records.repair_tail(results)  # a record torn by the crash is set aside (and reported), never glued onto
    return records.read(results)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's state, or a one-line refusal: a truncated or corrupt file must not end in a traceback."""
    try:
        if path.stat().st_size == 0:
            raise ValueError("the file is empty")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises many kinds for a damaged zip or pickle)
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise ConfigError(f"--resume: {path} is not a readable checkpoint ({reason}); remove it to train the run again "
                          "from step 0") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise ConfigError(f"--resume: {path} is not a checkpoint of fishr-tune train (no step count in it)")
    return state


def check_continuity(results: Path, kept: list[dict[str, Any]], trainer: Trainer, checkpoint: Path) -> list[dict[str, Any]]:
    """The records before the checkpoint's step, which must be exactly the run's checkpoint steps, each once."""
    expected = [s for s in range(trainer.step) if trainer.is_checkpoint_step(s)]
    steps = [r.get(records.STEP) for r in kept]
    if any(not isinstance(s, int) or isinstance(s, bool) for s in steps):
        raise ConfigError(f"--resume: {results} holds a record without an integer 'step'")
    before = [r for r in kept if r[records.STEP] < trainer.step]
    have = [r[records.STEP] for r in before]
    if have == expected:
        return before
    seen: set[int] = set()
    for step in have:
        if step in seen:
            raise ConfigError(f"--resume: {results} holds the record of step {step} twice")
        seen.add(step)
    missing = [s for s in expected if s not in seen]
    if missing:
        what = f"{results} lacks" if results.exists() else f"{results} is missing, and with it"
        raise ConfigError(f"--resume: {what} the record of step {missing[0]} ({len(missing)} of {len(expected)} "
                          f"records before the checkpoint's step {trainer.step} in {checkpoint} are missing); "
                          "the run cannot continue without losing them")
    unexpected = sorted(seen - set(expected))
    if unexpected:
        raise ConfigError(f"--resume: {results} holds a record at step {unexpected[0]}, which is no checkpoint step of this run")
    raise ConfigError(f"--resume: {results} holds its records out of order")


def run_training(
    config: TrainConfig,
    resume: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    on_dataset: Callable[[MultiDomainDataset], None] | None = None,
) -> list[dict[str, Any]]:
    """Train with records and checkpoints in the output directory; returns every record of the run."""
    output_dir = Path(config.output_dir or config.default_output_dir())
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a folder must go, a read-only disk: one line, not a traceback
        raise ConfigError(f"output_dir (--output-dir): cannot create {output_dir} ({error.strerror or error})") from None
    kept = prepare_output_dir(config, output_dir, resume)
    checkpoint = output_dir / CHECKPOINT_FILE
    results = output_dir / records.RESULTS_FILE
    resuming = resume and checkpoint.exists()
    if resuming:
        read_checkpoint(checkpoint)  # before the data loads: a damaged file is refused at once
    trainer = Trainer(config)
    if on_dataset is not None:
        on_dataset(trainer.dataset)
    if resuming:
        try:
            trainer.load_checkpoint(checkpoint)
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise ConfigError(f"--resume: {checkpoint} does not fit this run ({type(error).__name__}: {reason})") from None
        kept = check_continuity(results, kept, trainer, checkpoint)
        records.rewrite(results, kept)
    else:
        kept = []
        if results.exists():
            results.unlink()
    write_text_atomically(output_dir / CONFIG_FILE, yaml.safe_dump(saved_settings(config), sort_keys=False))
    produced = list(kept)
    try:
        for record in trainer.records():
            records.append(results, record)
            trainer.save_checkpoint(checkpoint)
            produced.append(record)
            if on_record is not None:
                on_record(record)
    finally:
        trainer.close()
    (output_dir / DONE_FILE).write_text("done\n", encoding="utf-8")
    return produced
