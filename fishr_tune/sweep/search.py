"""Per-group search inside one Ray Tune run, with the search methods by name.

DomainBed selects models per (dataset, algorithm, test_envs, trial_seed), so TPE must learn only from its own
group's trials. One Tuner still runs every group, so no worker idles while a group drains: `GroupSearcher` holds one
OptunaSearch per group and routes each trial's events to its group by the `group` key of the trial's config.
Adding an Optuna sampler is one small class in SEARCHERS (the sweep file's `search.algorithm` takes its names).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from fishr_tune import records
from fishr_tune.hparams import seed_hash
from fishr_tune.space import Distribution
from fishr_tune.sweep.trial import Group, TrialSpec, failed

METRIC = records.VAL_ACC
MODE = "max"


class SearchMethod(Protocol):
    """How one group's Optuna sampler is made and seeded."""

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler: ...

    def seed(self, sweep_seed: int, group: Group, index: int) -> int: ...


@dataclass(frozen=True)
class Tpe:
    """Optuna's TPE. It adapts to its own group's results, so its configurations differ across groups anyway: each
    group keeps its own seed."""

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed)

    def seed(self, sweep_seed: int, group: Group, index: int) -> int:
        return sweep_seed * 10_007 + index


@dataclass(frozen=True)
class RandomSearch:
    """Optuna's random sampler, seeded from (sweep seed, algorithm, trial seed) only, so groups that differ only in
    their test envs draw the same configurations in the same order, as DomainBed's seed_hash(hparams_seed,
    trial_seed) does; leave-one-out selection matches runs across those groups by configuration."""

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)

    def seed(self, sweep_seed: int, group: Group, index: int) -> int:
        return seed_hash(sweep_seed, "random", group.algorithm, group.trial_seed)


SEARCHERS: dict[str, SearchMethod] = {"tpe": Tpe(), "random": RandomSearch()}


@dataclass(frozen=True)
class SpaceFunction:
    """Optuna define-by-run space of one algorithm: searched names call trial.suggest_*, fixed ones are returned.

    A class rather than a closure so the searcher pickles (Tune checkpoints it for --resume).
    """

    space: tuple[tuple[str, Any], ...]

    @classmethod
    def from_mapping(cls, space: Mapping[str, Any]) -> SpaceFunction:
        return cls(tuple(sorted(space.items())))

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        fixed: dict[str, Any] = {}
        for name, value in self.space:
            if not isinstance(value, Distribution):
                fixed[name] = value
                continue
            distribution = value.to_optuna()
            if isinstance(distribution, CategoricalDistribution):
                trial.suggest_categorical(name, list(distribution.choices))
            elif isinstance(distribution, IntDistribution):
                trial.suggest_int(name, distribution.low, distribution.high, log=distribution.log)
            else:
                trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
        return fixed


class GroupSearcher(Searcher):
    """One seeded Optuna study per group; suggestions go round-robin over groups that still have budget."""

    def __init__(self, groups: Sequence[Group], spaces: Mapping[str, Mapping[str, Any]], num_samples: int,
                 sampler: str = "tpe", seed: int = 0):
        super().__init__()
        self.groups = {group.key: group for group in groups}
        self.order = [group.key for group in groups]
        self.num_samples = num_samples
        self.seed = seed
        method = SEARCHERS[sampler]
        self.searchers: dict[str, OptunaSearch] = {}
        for index, group in enumerate(groups):
            optuna_search = OptunaSearch(
                space=SpaceFunction.from_mapping(spaces[group.algorithm]),
                metric=METRIC,
                mode=MODE,
                sampler=method.sampler(method.seed(seed, group, index)),
            )
            # OptunaSearch reports intermediate values by training_iteration; the step is the meaningful clock here.
            self.searchers[group.key] = optuna_search
        self.suggested: dict[str, int] = {key: 0 for key in self.order}
        self.trial_group: dict[str, str] = {}
        self.next_index = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        if metric not in (None, METRIC) or mode not in (None, MODE):
            return False
        self._metric, self._mode = METRIC, MODE
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for offset in range(len(self.order)):
            key = self.order[(self.next_index + offset) % len(self.order)]
            if self.suggested[key] >= self.num_samples:
                continue
            self.next_index = (self.next_index + offset + 1) % len(self.order)
            group = self.groups[key]
            params = self.searchers[key].suggest(trial_id)
            assert params is not None  # OptunaSearch always answers for a define-by-run space
            self.trial_group[trial_id] = key
            index = self.suggested[key]
            self.suggested[key] += 1
            # The seed drives initialization and minibatches; from (sweep seed, group, index), stable across resumes.
            return TrialSpec.of(group, index, seed_hash(self.seed, key, index), params).to_config()
        return Searcher.FINISHED  # type: ignore[return-value]  # Ray's own sentinel, a str its annotation omits

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        key = self.trial_group.get(trial_id)
        if key is None or failed(result) or METRIC not in result or not math.isfinite(result[METRIC]):
            return
        self.searchers[key].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        key = self.trial_group.get(trial_id)
        if key is None:
            return
        if failed(result) or (result is not None and not math.isfinite(result.get(METRIC, math.nan))):
            self.searchers[key].on_trial_complete(trial_id, None, error=True)
        else:
            self.searchers[key].on_trial_complete(trial_id, result, error=error)

    def study(self, key: str) -> optuna.Study:
        study = self.searchers[key]._ot_study
        assert study is not None  # set up in __init__ (a space and a metric were given)
        return study

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))  # our own checkpoint, written by save() above
