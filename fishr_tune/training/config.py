"""A training run's settings, validated: `fishr-tune train --config` reads them from YAML, a sweep builds them."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fishr_tune.algorithms import get_algorithm_class
from fishr_tune.data import check_dataset_name, check_test_envs
from fishr_tune.errors import ConfigError, quote
from fishr_tune.hparams import MAX_SEED, apply_overrides, hparams_for_trial, parse_hparams_json
from fishr_tune.space import MAX_STEPS
from fishr_tune.yaml_io import load_yaml


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
        from fishr_tune.files import usable_path

        return usable_path(value)

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


def parse_env_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise ConfigError(
            f"--test-envs: expected comma-separated environment indices like '2' or '0,1', got {quote(text)}") from None


def config_from_command(config_file: str | None, flags: Mapping[str, Any], test_envs: str | None = None,
                        hparams_json: str | None = None) -> TrainConfig:
    """`fishr-tune train`'s settings: the --config file, the flags over it, and --hparams over the file's hparams.

    An error names where the wrong value came from: a flag, the file's key, or (for a hyperparameter) the file's
    `hparams` key when the file set it and --hparams did not override it, else --hparams.
    """
    values: dict[str, Any] = load_config_file(config_file) if config_file else {}
    where = config_file or "command line"
    file_where = f"{config_file}: key 'hparams'"
    given = {k for k, v in flags.items() if v is not None} | ({"test_envs"} if test_envs is not None else set())
    if test_envs is not None:
        values["test_envs"] = parse_env_list(test_envs)
    values.update({k: v for k, v in flags.items() if v is not None})
    flag_hparams = parse_hparams_json(hparams_json) if hparams_json is not None else None
    file_hparams = values.get("hparams")
    if flag_hparams is None:
        return make_config(values, where, hparams_where=file_where if file_hparams else "--hparams", flags=given)
    if file_hparams is not None:  # the file's own values first, so an error names the file (and `hparams: 5` its key)
        kept = {k: v for k, v in file_hparams.items() if k not in flag_hparams} if isinstance(file_hparams, dict) else file_hparams
        make_config({**values, "hparams": kept}, where, hparams_where=file_where, flags=given)
    values["hparams"] = {**(file_hparams or {}), **flag_hparams}
    return make_config(values, where, flags=given)
