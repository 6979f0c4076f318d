"""The search-space YAML: one file is one sweep, validated completely before Ray starts.

Every mistake becomes one `ConfigError` line naming the file, the key path and what was expected, so a typo
costs seconds instead of a cluster allocation.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from fishr_tune import records
from fishr_tune.algorithms import get_algorithm_class
from fishr_tune.data import DATASET_ENVIRONMENTS, check_dataset_name, check_test_envs
from fishr_tune.errors import ConfigError, quote
from fishr_tune.hparams import MAX_SEED, apply_overrides, default_hparams, hparam_space
from fishr_tune.space import MAX_STEPS, SEARCH_KINDS, Distribution
from fishr_tune.sweep.preflight import check_tracking_uri
from fishr_tune.sweep.schedule import SCHEDULERS
from fishr_tune.sweep.search import SEARCHERS
from fishr_tune.sweep.trial import Group
from fishr_tune.yaml_io import load_yaml

MAX_SEARCH_SEED = 2**18 - 1  # * 10,007 + any group index stays below 2**32


def parse_distribution(value: Any) -> Distribution | Any:
    """A fixed value passes through; a one-key mapping {kind: [low, high]} or {choice: [...]} becomes a Distribution."""
    if not isinstance(value, Mapping):
        if isinstance(value, (list, tuple)):
            raise ValueError(f"expected a value or a mapping like {{loguniform: [1.0e-4, 1.0e-2]}}, got a list {quote(list(value))}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {quote(value)}")
        return value
    if len(value) != 1:
        raise ValueError(f"expected exactly one of {', '.join(SEARCH_KINDS)}, got keys {sorted(map(str, value))}")
    kind, args = next(iter(value.items()))
    if kind not in SEARCH_KINDS:
        raise ValueError(f"unknown distribution {quote(kind)}; expected one of {', '.join(SEARCH_KINDS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ValueError("choice: expected a non-empty list of values")
        for option in args:
            if isinstance(option, (Mapping, list)) or (isinstance(option, float) and not math.isfinite(option)):
                raise ValueError(f"choice: options must be plain values, got {quote(option)}")
        return Distribution("choice", choices=tuple(args))
    if not isinstance(args, list) or len(args) != 2:
        raise ValueError(f"{kind}: expected a list [low, high], got {quote(args)}")
    low, high = args
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise ValueError(f"{kind}: bounds must be finite numbers, got {quote(args)}")
    if kind in ("int", "logint") and not all(isinstance(b, int) or float(b).is_integer() for b in (low, high)):
        raise ValueError(f"{kind}: bounds must be integers, got {quote(args)}")
    if not low < high:
        raise ValueError(f"{kind}: expected low < high, got [{low}, {high}] (write a fixed value for a single one)")
    if kind in ("loguniform", "logint") and low <= 0:
        raise ValueError(f"{kind}: bounds must be positive, got [{low}, {high}]")
    return Distribution(kind, float(low), float(high))


def _registered(value: Any, registry: Mapping[str, Any]) -> Any:
    """A registry's name, refused with pydantic's own words for a Literal of the names (the messages stay as they were)."""
    if isinstance(value, str) and value in registry:
        return value
    names = [repr(name) for name in registry]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    raise ValueError(f"Input should be {listed}")


class SearchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf passes gt=0 (cpu, reduction_factor)

    algorithm: str = "tpe"  # a name in sweep/search.py's SEARCHERS
    num_samples: StrictInt = Field(8, gt=0, description="configurations per group")
    # Each group's TPE sampler is seeded with seed * 10,007 + group index (sweep/search.py), which numpy needs below 2**32.
    seed: StrictInt = Field(0, ge=0, le=MAX_SEARCH_SEED)

    @field_validator("algorithm", mode="before")
    @classmethod
    def _known_searcher(cls, value: Any) -> Any:
        return _registered(value, SEARCHERS)


class SchedulerSettings(BaseModel):
    """Ray Tune's ASHA per group. With `brackets` > 1 it is asynchronous HyperBand: bracket s starts stopping at
    grace_period * reduction_factor**s, and each trial joins one bracket at random (weighted by its rungs)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf passes gt=0 (cpu, reduction_factor)

    type: str = "asha"  # a name in sweep/schedule.py's SCHEDULERS
    grace_period: StrictInt = Field(500, gt=0, description="optimizer steps before a trial may be stopped")
    reduction_factor: float = Field(4.0, gt=1.0, description="1 in reduction_factor trials goes on at each rung")
    brackets: StrictInt = Field(1, ge=1, description="ASHA brackets (asynchronous HyperBand when > 1)")
    stop_last_trials: bool = Field(True, description="stop the trials that pass the last rung at `steps`")

    @field_validator("type", mode="before")
    @classmethod
    def _known_scheduler(cls, value: Any) -> Any:
        return _registered(value, SCHEDULERS)


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf passes gt=0 (cpu, reduction_factor)

    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)

    @field_validator("gpu")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise ValueError("a trial takes a fraction of one GPU or a whole number of GPUs")
        return value


def _default_test_envs() -> list[int | list[int]]:
    return [2]


class SweepFile(BaseModel):
    """The YAML's schema; `SweepSpec` adds the cross-field checks (names, ranges, environments)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf passes gt=0 (cpu, reduction_factor)

    name: str = Field(min_length=1, max_length=128)  # a directory and an MLflow experiment name
    description: str | None = Field(None, description="shown as the MLflow experiment's description")
    dataset: str
    algorithms: list[str] = Field(min_length=1)
    test_envs: Literal["all", "pairs"] | list[StrictInt | list[StrictInt]] = Field(default_factory=_default_test_envs)
    trial_seeds: list[StrictInt] = Field(default_factory=lambda: [0], min_length=1)
    steps: StrictInt = Field(5001, gt=0, le=MAX_STEPS)
    checkpoint_freq: StrictInt = Field(100, gt=0, le=MAX_STEPS)
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    label_noise: float | None = Field(None, ge=0.0, le=1.0)
    data_dir: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="for every listed algorithm that has the name")
    per_algorithm: dict[str, dict[str, Any]] = Field(default_factory=dict, description="algorithm -> its own hyperparameters")
    search: SearchSettings = Field(default_factory=SearchSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    resources: Resources = Field(default_factory=Resources)
    storage_path: str = "sweeps"
    tracking_uri: str = records.DEFAULT_TRACKING_URI
    max_failures: StrictInt = Field(2, ge=0)
    system_metrics: bool = Field(False, description="log each trial's CPU, memory (and GPU) use as MLflow system metrics")
    inconsistency_epsilon: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="at each trial's last step, log the inconsistency score at this epsilon (as `fishr-tune inspect`)")

    @field_validator("name")
    @classmethod
    def _directory_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("must be a directory name: letters, digits, '_', '-', '.'")
        return value

    @field_validator("data_dir")
    @classmethod
    def _usable_path(cls, value: str | None) -> str | None:
        from fishr_tune.files import usable_path

        return usable_path(value)

    @field_validator("trial_seeds")
    @classmethod
    def _non_negative(cls, value: list[int]) -> list[int]:
        if any(seed < 0 or seed > MAX_SEED for seed in value):
            raise ValueError(f"trial seeds must be in [0, {MAX_SEED}]")
        if len(set(value)) != len(value):
            raise ValueError("trial seeds must be distinct")
        return value

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value



@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: the file's settings plus the resolved groups and per-algorithm search spaces."""

    settings: SweepFile
    source: str
    groups: tuple[Group, ...]
    spaces: Mapping[str, Mapping[str, Any]]  # algorithm -> {hparam name: fixed value or Distribution}

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def total_samples(self) -> int:
        return len(self.groups) * self.settings.search.num_samples

    def with_overrides(self, **overrides: Any) -> SweepSpec:
        """Command-line flags override the file; the result is validated again as a whole."""
        values = self.settings.model_dump()
        search = dict(values["search"])
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "num_samples":
                search["num_samples"] = value
            else:
                values[key] = value
        values["search"] = search
        return build_spec(values, self.source, flag_names=set(overrides))


def _path(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _format(error: ValidationError, source: str, flag_names: set[str]) -> ConfigError:
    first = error.errors()[0]
    loc = list(first["loc"])
    # A union (test_envs) reports one error per member: name the key, say what it accepts.
    if loc and loc[0] == "test_envs":
        return ConfigError(
            f"{source}: key 'test_envs': expected 'all', 'pairs', or a list of environment indices / lists of them "
            f"(got {quote(first.get('input'))})"
        )
    loc = [p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("function-after", "function-before")))]
    path = _path(loc)
    flag = "num_samples" if loc == ["search", "num_samples"] else (loc[0] if len(loc) == 1 else None)
    where = f"--{flag.replace('_', '-')}" if flag in flag_names else f"{source}: key {quote(path)}"
    if first["type"] == "extra_forbidden":
        parent: type[BaseModel] = SweepFile
        for part in loc[:-1]:
            field = parent.model_fields.get(str(part))
            annotation = getattr(field, "annotation", None)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                parent = annotation
        return ConfigError(f"{source}: unknown key {quote(path)}; valid keys here: {', '.join(parent.model_fields)}")
    if first["type"] == "missing":
        return ConfigError(f"{source}: missing required key {quote(path)}")
    message = first["msg"].removeprefix("Value error, ")
    return ConfigError(f"{where}: {message} (got {quote(first.get('input'))})")


def resolve_test_envs(value: str | list[int | list[int]], dataset: str, source: str) -> list[tuple[int, ...]]:
    n_envs = len(DATASET_ENVIRONMENTS[dataset])
    if value == "all":
        return [(i,) for i in range(n_envs)]
    if value == "pairs":
        return [(i, j) for i in range(n_envs) for j in range(i + 1, n_envs)]
    if isinstance(value, str):  # SweepFile admits no other name
        raise ConfigError(f"{source}: key 'test_envs': expected 'all', 'pairs', or a list (got {quote(value)})")
    if not value:
        raise ConfigError(f"{source}: key 'test_envs': expected at least one test environment (or 'all' / 'pairs')")
    resolved: list[tuple[int, ...]] = []
    for index, item in enumerate(value):
        envs = tuple(sorted(set(item))) if isinstance(item, list) else (item,)
        if not envs:
            raise ConfigError(f"{source}: key 'test_envs[{index}]': expected at least one environment index")
        check_test_envs(dataset, list(envs), where=f"{source}: key 'test_envs[{index}]'")
        if envs in resolved:
            raise ConfigError(f"{source}: key 'test_envs[{index}]': {list(envs)} is listed twice")
        resolved.append(envs)
    return resolved


def _check_value(algorithm: str, dataset: str, name: str, value: Any, where: str) -> None:
    """Type-check a fixed value or a distribution's bounds/choices with the registry's own rules."""
    default = hparam_space(algorithm, dataset)[name].default
    if isinstance(value, Distribution):
        is_int = isinstance(default, int) and not isinstance(default, bool)
        if is_int and value.kind in ("uniform", "loguniform"):
            raise ConfigError(f"{where}: {quote(name)} is an integer: use int: [low, high], logint: [low, high] or choice")
        if not isinstance(default, (int, float)) and value.kind != "choice":
            raise ConfigError(f"{where}: {quote(name)} is a {type(default).__name__}: use a fixed value or choice")
        samples = value.representatives()
    else:
        samples = [value]
    for sample in samples:
        apply_overrides(algorithm, dataset, default_hparams(algorithm, dataset), {name: sample}, where=where)


def _parse_at(raw: Any, where: str) -> Any:
    try:
        return parse_distribution(raw)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None


def build_spec(values: Any, source: str, flag_names: set[str] | None = None) -> SweepSpec:
    """Validate a parsed YAML document; every error is a ConfigError naming `source` and the key."""
    flag_names = flag_names or set()
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {type(values).__name__}")
    bad_keys = [k for k in values if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"{source}: top-level keys must be names, got {quote(bad_keys[0])}")
    try:
        settings = SweepFile(**values)
    except ValidationError as error:
        raise _format(error, source, flag_names) from None
    except (TypeError, ValueError) as error:  # non-string keys deeper down reach pydantic as TypeErrors
        raise ConfigError(f"{source}: {error}") from None
    try:
        check_dataset_name(settings.dataset)
    except ConfigError as error:
        raise ConfigError(f"{source}: key 'dataset': {error}") from None
    for index, algorithm in enumerate(settings.algorithms):
        try:
            get_algorithm_class(algorithm)
        except ConfigError as error:
            raise ConfigError(f"{source}: key 'algorithms[{index}]': {error}") from None
    if len(set(settings.algorithms)) != len(settings.algorithms):
        raise ConfigError(f"{source}: key 'algorithms': an algorithm is listed twice")
    if settings.checkpoint_freq > settings.steps:
        raise ConfigError(f"{source}: key 'checkpoint_freq': must be at most steps ({settings.steps}), got {settings.checkpoint_freq}")
    if settings.scheduler.type == "asha" and settings.scheduler.grace_period >= settings.steps:
        raise ConfigError(
            f"{source}: key 'scheduler.grace_period': must be below steps ({settings.steps}), got {settings.scheduler.grace_period}"
        )
    scheduler = settings.scheduler
    try:
        last_start = scheduler.grace_period * scheduler.reduction_factor ** (scheduler.brackets - 1)
    except OverflowError:  # brackets: 1000000 (a float power past 1e308 raises instead of giving inf)
        last_start = math.inf
    if scheduler.type == "asha" and last_start >= settings.steps:
        raise ConfigError(
            f"{source}: key 'scheduler.brackets': bracket {scheduler.brackets - 1} would first stop trials at step "
            f"{last_start:g} (grace_period * reduction_factor**{scheduler.brackets - 1}), not below steps ({settings.steps}); "
            "use fewer brackets or a smaller grace_period"
        )
    test_envs = resolve_test_envs(settings.test_envs, settings.dataset, source)

    spaces: dict[str, dict[str, Any]] = {a: {} for a in settings.algorithms}
    for name, raw in settings.hyperparameters.items():
        value = _parse_at(raw, f"{source}: key 'hyperparameters.{name}'")
        owners = [a for a in settings.algorithms if name in hparam_space(a, settings.dataset)]
        if not owners:
            valid = sorted(set().union(*(hparam_space(a, settings.dataset) for a in settings.algorithms)))
            raise ConfigError(
                f"{source}: key 'hyperparameters.{name}': unknown hyperparameter for {', '.join(settings.algorithms)} "
                f"on {settings.dataset}; valid: {', '.join(valid)}"
            )
        for algorithm in owners:
            _check_value(algorithm, settings.dataset, name, value, f"{source}: key 'hyperparameters.{name}'")
            spaces[algorithm][name] = value
    for algorithm, names in settings.per_algorithm.items():
        if algorithm not in settings.algorithms:
            raise ConfigError(
                f"{source}: key 'per_algorithm.{algorithm}': not one of the listed algorithms ({', '.join(settings.algorithms)})"
            )
        own = hparam_space(algorithm, settings.dataset)
        for name, raw in names.items():
            where = f"{source}: key 'per_algorithm.{algorithm}.{name}'"
            value = _parse_at(raw, where)
            if name not in own:
                raise ConfigError(f"{where}: unknown hyperparameter for {algorithm}; valid: {', '.join(sorted(own))}")
            _check_value(algorithm, settings.dataset, name, value, where)
            spaces[algorithm][name] = value
    check_tracking_uri(
        settings.tracking_uri, "--tracking-uri" if "tracking_uri" in flag_names else f"{source}: key 'tracking_uri'", local_files=False
    )

    groups = tuple(
        Group(settings.dataset, algorithm, envs, seed)
        for algorithm in settings.algorithms
        for envs in test_envs
        for seed in settings.trial_seeds
    )
    return SweepSpec(settings=settings, source=source, groups=groups, spaces=spaces)


def load_spec(path: str | os.PathLike[str]) -> SweepSpec:
    """Read and validate a search-space YAML; never raises anything but ConfigError for bad input."""
    source = str(path)
    values = load_yaml(path, source)
    if values is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping with at least name, dataset and algorithms")
    return build_spec(values, source)
