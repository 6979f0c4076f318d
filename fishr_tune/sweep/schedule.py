"""Early stopping inside one Ray Tune run, per group, with the stopping rules by name.

ASHA must compare only trials of one group (DomainBed selects per group), so `GroupScheduler` holds one scheduler
per group and routes each trial's events to it by the `group` key of the trial's config. Adding a Ray Tune scheduler
is one small class in SCHEDULERS (the sweep file's `scheduler.type` takes its names).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from fishr_tune import records
from fishr_tune.sweep.search import METRIC, MODE
from fishr_tune.sweep.trial import GROUP_KEY, failed

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

TIME_ATTR = records.STEP
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


class StoppingSettings(Protocol):
    """The sweep file's `scheduler` block (sweep/spec.py's SchedulerSettings), as the rules read it."""

    grace_period: int
    reduction_factor: float
    brackets: int
    stop_last_trials: bool


class Stopping(Protocol):
    """A stopping rule: `make` builds one group's Tune scheduler (None: the trials run to the end)."""

    description: ClassVar[str]

    def make(self) -> ASHAScheduler | None: ...


@dataclass(frozen=True)
class Asha:
    """Ray Tune's ASHA, ranking by SCHEDULER_METRIC. With `brackets` > 1 it is asynchronous HyperBand."""

    max_t: int
    grace_period: int
    reduction_factor: float = 4.0
    brackets: int = 1
    stop_last_trials: bool = True
    description: ClassVar[str] = "ASHA per group"

    @classmethod
    def from_settings(cls, settings: StoppingSettings, max_t: int) -> Asha:
        return cls(max_t, settings.grace_period, settings.reduction_factor, settings.brackets, settings.stop_last_trials)

    def make(self) -> ASHAScheduler:
        return ASHAScheduler(
            time_attr=TIME_ATTR, metric=SCHEDULER_METRIC, mode=MODE, max_t=self.max_t,
            grace_period=self.grace_period, reduction_factor=self.reduction_factor,
            brackets=self.brackets, stop_last_trials=self.stop_last_trials,
        )


@dataclass(frozen=True)
class NoStopping:
    """Every trial trains all its steps (a failed one still stops)."""

    description: ClassVar[str] = "no early stopping"

    @classmethod
    def from_settings(cls, settings: StoppingSettings, max_t: int) -> NoStopping:
        return cls()

    def make(self) -> None:
        return None


SCHEDULERS: dict[str, type[Asha] | type[NoStopping]] = {"asha": Asha, "none": NoStopping}


def make_stopping(name: str, settings: StoppingSettings, max_t: int) -> Stopping:
    return SCHEDULERS[name].from_settings(settings, max_t)


def _scored(result: dict[str, Any]) -> dict[str, Any]:
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

    def __init__(self, group_keys: Sequence[str], stopping: Stopping):
        super().__init__()
        self._metric = METRIC
        self.stopping = stopping
        self.schedulers: dict[str, ASHAScheduler] = {}
        for key in group_keys:
            scheduler = stopping.make()
            if scheduler is not None:
                self.schedulers[key] = scheduler
        self.trial_group: dict[str, str] = {}
        self.stopped_early: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return metric in (None, METRIC) and mode in (None, MODE)

    def _scheduler(self, controller: TuneController, trial: Trial) -> ASHAScheduler | None:
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
        if failed(result):
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
        if scheduler is not None and not failed(result):
            scheduler.on_trial_complete(tune_controller, trial, _scored(result))
        elif scheduler is not None:
            scheduler.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        key = trial.config.get(GROUP_KEY)
        if key in self.schedulers and trial.trial_id in self.schedulers[key]._trial_info:
            self.schedulers[key].on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"{self.stopping.description}: {len(self.stopped_early)} trials stopped early"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
