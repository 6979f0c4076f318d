"""Per-group search and early stopping inside one Ray Tune run.

DomainBed selects models per (dataset, algorithm, test_envs, trial_seed), so TPE must learn only from its own
group's trials and ASHA must compare only trials of one group. One Tuner still runs every group, so no worker
idles while a group drains: `GroupSearcher` holds one OptunaSearch per group and `GroupScheduler` one ASHA per group,
and both route each trial's events to its group by the `group` key of the trial's config.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from fishr_tune import records
from fishr_tune.hparams import seed_hash
from fishr_tune.sweep.spec import Distribution, Group, SweepSpec

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

METRIC = records.VAL_ACC
MODE = "max"
TIME_ATTR = records.STEP
GROUP_KEY = "group"
FAILURE_KEY = "failure"  # a trial's last result carries it when training diverged (NaN/inf loss)
# What ASHA compares: val_acc with ties broken by the validation loss (scheduler_score). Search and selection keep
# val_acc itself.
SCHEDULER_METRIC = "scheduler_score"
# Below this the tie-break would sink into float64 rounding of val_acc (~1e-16): then the score is val_acc itself.
MIN_TIE_BREAK_RESOLUTION = 1e-12


def accuracy_resolution(sizes: Sequence[int]) -> float:
    """The smallest non-zero difference two val_acc values can have, given the training envs' out-split sizes.

    val_acc is the mean over k envs of correct_i / n_i = (sum_i correct_i * L / n_i) / (k * L), L = lcm(n_i): an
    integer over k * L, so two different values differ by at least 1 / (k * L). 0.0 where a split is empty.
    """
    if not sizes or any(int(n) <= 0 for n in sizes):
        return 0.0
    return 1.0 / (len(sizes) * reduce(math.lcm, (int(n) for n in sizes)))


def scheduler_score(val_acc: float, val_nll: float | None, resolution: float) -> float:
    """val_acc plus a tie-break below half its resolution that falls as the validation loss rises.

    Lexicographic in (val_acc, -val_nll): different accuracies keep their order (they differ by >= resolution,
    the tie-break adds < resolution / 2), equal ones are ordered by loss. ASHA stops a trial only when its value is
    strictly below the rung's quantile, so without the tie-break the many equal accuracies of a small validation
    set all pass; with it they are ranked. No usable loss or resolution: val_acc unchanged.
    """
    if (val_nll is None or not math.isfinite(val_nll) or not math.isfinite(val_acc)
            or resolution < MIN_TIE_BREAK_RESOLUTION):
        return val_acc
    return val_acc + 0.5 * resolution / (1.0 + max(val_nll, 0.0))


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
            elif value.kind == "choice":
                trial.suggest_categorical(name, list(value.choices))
            elif value.kind in ("int", "logint"):
                trial.suggest_int(name, int(value.low), int(value.high), log=value.kind == "logint")
            else:
                trial.suggest_float(name, value.low, value.high, log=value.kind == "loguniform")
        return fixed


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def sampler_seed(kind: str, sweep_seed: int, group: Group, index: int) -> int:
    """The seed of one group's sampler.

    Random search: from (sweep seed, algorithm, trial seed) only, so groups that differ only in their test envs
    draw the same configurations in the same order, as DomainBed's seed_hash(hparams_seed, trial_seed) does;
    leave-one-out selection matches runs across those groups by configuration. TPE adapts to its own group's
    results, so its configurations differ anyway: each group keeps its own seed.
    """
    if kind == "random":
        return seed_hash(sweep_seed, "random", group.algorithm, group.trial_seed)
    return sweep_seed * 10_007 + index


def _failed(result: Mapping[str, Any] | None) -> bool:
    return bool(result) and bool(result.get(FAILURE_KEY))


class GroupSearcher(Searcher):
    """One seeded Optuna study per group; suggestions go round-robin over groups that still have budget."""

    def __init__(self, groups: Sequence[Group], spaces: Mapping[str, Mapping[str, Any]], num_samples: int,
                 sampler: str = "tpe", seed: int = 0):
        super().__init__()
        self.groups = {group.key: group for group in groups}
        self.order = [group.key for group in groups]
        self.num_samples = num_samples
        self.seed = seed
        self.searchers: dict[str, OptunaSearch] = {}
        for index, group in enumerate(groups):
            optuna_search = OptunaSearch(
                space=SpaceFunction.from_mapping(spaces[group.algorithm]),
                metric=METRIC,
                mode=MODE,
                sampler=make_sampler(sampler, sampler_seed(sampler, seed, group, index)),
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

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        for offset in range(len(self.order)):
            key = self.order[(self.next_index + offset) % len(self.order)]
            if self.suggested[key] >= self.num_samples:
                continue
            self.next_index = (self.next_index + offset + 1) % len(self.order)
            group = self.groups[key]
            params = self.searchers[key].suggest(trial_id)
            self.trial_group[trial_id] = key
            index = self.suggested[key]
            self.suggested[key] += 1
            return {
                GROUP_KEY: key,
                "dataset": group.dataset,
                "algorithm": group.algorithm,
                "test_envs": list(group.test_envs),
                "trial_seed": group.trial_seed,
                "sample_index": index,
                "seed": seed_hash(self.seed, key, index),  # initialization and minibatches; stable across resumes
                "hparams": dict(params),
            }
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        key = self.trial_group.get(trial_id)
        if key is None or _failed(result) or METRIC not in result or not math.isfinite(result[METRIC]):
            return
        self.searchers[key].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        key = self.trial_group.get(trial_id)
        if key is None:
            return
        if _failed(result) or (result is not None and not math.isfinite(result.get(METRIC, math.nan))):
            self.searchers[key].on_trial_complete(trial_id, None, error=True)
        else:
            self.searchers[key].on_trial_complete(trial_id, result, error=error)

    def study(self, key: str) -> optuna.Study:
        return self.searchers[key]._ot_study

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))  # our own checkpoint, written by save() above


def _scored(result: Mapping[str, Any]) -> Mapping[str, Any]:
    """The result with SCHEDULER_METRIC present: val_acc itself where the trial did not report one (an older sweep
    resumed, a failure record), so ASHA never skips a decision for want of the key."""
    if SCHEDULER_METRIC in result or METRIC not in result:
        return result
    return {**result, SCHEDULER_METRIC: result[METRIC]}


class GroupScheduler(FIFOScheduler):
    """One ASHA per group (or none): a trial's results are only ever compared with its own group's trials.

    Each ASHA ranks by SCHEDULER_METRIC (val_acc, ties broken by validation loss); Tune's and the searcher's metric
    stays val_acc.
    """

    def __init__(self, group_keys: Sequence[str], max_t: int, grace_period: int | None = None,
                 reduction_factor: float = 4.0, brackets: int = 1, stop_last_trials: bool = True):
        super().__init__()
        self._metric = METRIC
        self.early_stopping = grace_period is not None
        self.schedulers: dict[str, ASHAScheduler] = {}
        if self.early_stopping:
            for key in group_keys:
                self.schedulers[key] = ASHAScheduler(
                    time_attr=TIME_ATTR, metric=SCHEDULER_METRIC, mode=MODE, max_t=max_t,
                    grace_period=grace_period, reduction_factor=reduction_factor,
                    brackets=brackets, stop_last_trials=stop_last_trials,
                )
        self.trial_group: dict[str, str] = {}
        self.stopped_early: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return metric in (None, METRIC) and mode in (None, MODE)

    def _scheduler(self, controller: TuneController | None, trial: Trial) -> ASHAScheduler | None:
        key = trial.config.get(GROUP_KEY)
        if key is None or key not in self.schedulers:
            return None
        scheduler = self.schedulers[key]
        if trial.trial_id not in scheduler._trial_info:  # e.g. a trial restored by --resume
            scheduler.on_trial_add(controller, trial)
        self.trial_group[trial.trial_id] = key
        return scheduler

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        self._scheduler(tune_controller, trial)

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        if _failed(result):
            return TrialScheduler.STOP
        scheduler = self._scheduler(tune_controller, trial)
        if scheduler is None:
            return TrialScheduler.CONTINUE
        action = scheduler.on_trial_result(tune_controller, trial, _scored(result))
        if action == TrialScheduler.STOP and result.get(TIME_ATTR, 0) < scheduler._max_t - 1:
            self.stopped_early.add(trial.trial_id)
        return action

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        scheduler = self._scheduler(tune_controller, trial)
        if scheduler is not None and not _failed(result):
            scheduler.on_trial_complete(tune_controller, trial, _scored(result))
        elif scheduler is not None:
            scheduler.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        key = trial.config.get(GROUP_KEY)
        if key in self.schedulers and trial.trial_id in self.schedulers[key]._trial_info:
            self.schedulers[key].on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        mode = "ASHA per group" if self.early_stopping else "no early stopping"
        return f"{mode}: {len(self.stopped_early)} trials stopped early"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))


def make_search(spec: SweepSpec) -> tuple[GroupSearcher, GroupScheduler]:
    settings = spec.settings
    searcher = GroupSearcher(spec.groups, spec.spaces, settings.search.num_samples,
                             settings.search.algorithm, settings.search.seed)
    asha = settings.scheduler
    grace = asha.grace_period if asha.type == "asha" else None
    scheduler = GroupScheduler([g.key for g in spec.groups], settings.steps, grace, asha.reduction_factor,
                               asha.brackets, asha.stop_last_trials)
    return searcher, scheduler
