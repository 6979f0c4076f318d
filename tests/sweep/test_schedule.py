"""Per-group early stopping: ASHA never compares a trial with another group's (unit level, no Ray cluster), and
the score it ranks by."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fishr_tune.sweep.schedule import (
    SCHEDULER_METRIC,
    Asha,
    GroupScheduler,
    NoStopping,
    accuracy_resolution,
    scheduler_score,
)
from fishr_tune.sweep.trial import FAILURE_KEY, GROUP_KEY, Group

STRONG = Group("ColoredMNIST-IRM", "ERM", (2,), 0)
WEAK = Group("ColoredMNIST-IRM", "Fishr", (2,), 0)


@dataclass
class FakeTrial:
    trial_id: str
    config: dict[str, Any] = field(default_factory=dict)


def result(val_acc: float, step: int, iteration: int = 1, **extra: Any) -> dict[str, Any]:
    return {"val_acc": val_acc, "step": step, "training_iteration": iteration, **extra}


def add(scheduler: GroupScheduler, trial_id: str, group: Group) -> FakeTrial:
    trial = FakeTrial(trial_id, {GROUP_KEY: group.key})
    scheduler.on_trial_add(None, trial)
    return trial


def test_a_strong_group_never_stops_a_weak_group_trial() -> None:
    scheduler = GroupScheduler([STRONG.key, WEAK.key], Asha(max_t=1000, grace_period=100, reduction_factor=2))
    for i in range(4):
        strong = add(scheduler, f"s{i}", STRONG)
        assert scheduler.on_trial_result(None, strong, result(0.90 + 0.01 * i, 100)) == "CONTINUE"
    weak = add(scheduler, "w0", WEAK)
    # Far below every strong trial, but the first of its own group at this rung: it continues.
    assert scheduler.on_trial_result(None, weak, result(0.30, 100)) == "CONTINUE"
    better_weak = add(scheduler, "w1", WEAK)
    assert scheduler.on_trial_result(None, better_weak, result(0.35, 100)) == "CONTINUE"
    # Within its own group ASHA still works: the worst of the weak group is stopped.
    worse_weak = add(scheduler, "w2", WEAK)
    assert scheduler.on_trial_result(None, worse_weak, result(0.10, 100)) == "STOP"
    assert scheduler.stopped_early == {"w2"}
    # ...and a strong trial below the strong median is stopped although it beats every weak trial.
    lagging = add(scheduler, "s9", STRONG)
    assert scheduler.on_trial_result(None, lagging, result(0.80, 100)) == "STOP"


def test_one_shared_asha_would_have_stopped_the_weak_trial() -> None:
    """The control for the test above: with all trials in one group the weak trial dies at its first rung."""
    pooled = Group("ColoredMNIST-IRM", "pooled", (2,), 0)
    scheduler = GroupScheduler([pooled.key], Asha(max_t=1000, grace_period=100, reduction_factor=2))
    for i in range(4):
        scheduler.on_trial_result(None, add(scheduler, f"s{i}", pooled), result(0.90 + 0.01 * i, 100))
    assert scheduler.on_trial_result(None, add(scheduler, "w0", pooled), result(0.30, 100)) == "STOP"


def test_failure_result_stops_the_trial_and_does_not_enter_the_rung() -> None:
    scheduler = GroupScheduler([STRONG.key], Asha(max_t=1000, grace_period=100, reduction_factor=2))
    trial = add(scheduler, "x", STRONG)
    assert scheduler.on_trial_result(None, trial, result(float("nan"), 100, **{FAILURE_KEY: "nan"})) == "STOP"
    scheduler.on_trial_complete(None, trial, result(float("nan"), 100, **{FAILURE_KEY: "nan"}))
    assert all(not recorded for _, recorded in scheduler.schedulers[STRONG.key]._brackets[0]._rungs)


def test_no_early_stopping_continues_every_trial_to_the_end() -> None:
    scheduler = GroupScheduler([STRONG.key], NoStopping())
    for i, score in enumerate([0.9, 0.1, 0.05]):
        assert scheduler.on_trial_result(None, add(scheduler, f"t{i}", STRONG), result(score, 500)) == "CONTINUE"


def test_asha_settings_reach_every_groups_scheduler() -> None:
    """brackets > 1 is Ray's asynchronous HyperBand: bracket s starts at grace * rf**s; stop_last_trials passes through."""
    scheduler = GroupScheduler([STRONG.key, WEAK.key], Asha(max_t=600, grace_period=25, reduction_factor=4, brackets=2,
                               stop_last_trials=False))
    for asha in scheduler.schedulers.values():
        assert [[milestone for milestone, _ in b._rungs] for b in asha._brackets] == [[400, 100, 25], [400, 100]]
        assert asha._stop_last_trials is False
    trial = add(scheduler, "t", STRONG)
    assert scheduler.on_trial_result(None, trial, result(0.9, 600)) == "CONTINUE"  # not stopped at max_t
    stopping = GroupScheduler([STRONG.key], Asha(max_t=600, grace_period=25, reduction_factor=4))
    assert stopping.on_trial_result(None, add(stopping, "u", STRONG), result(0.9, 600)) == "STOP"


def test_sweep_yaml_scheduler_settings_build_the_schedulers() -> None:
    from fishr_tune.sweep.runner import make_search
    from fishr_tune.sweep.spec import build_spec

    spec = build_spec({"name": "s", "dataset": "ColoredMNIST-IRM", "algorithms": ["ERM"], "steps": 600,
                       "scheduler": {"grace_period": 25, "brackets": 2}}, "s.yaml")
    assert spec.settings.scheduler.reduction_factor == 4.0 and spec.settings.scheduler.stop_last_trials is True
    _, scheduler = make_search(spec)
    (asha,) = scheduler.schedulers.values()
    assert len(asha._brackets) == 2 and asha._brackets[1]._rungs[-1][0] == 100


# --- The score ASHA ranks by: val_acc, ties broken by the validation loss ------------------------------------------

SIZES = st.sampled_from([(416, 416), (5, 7, 9), (1000, 999), (3,), (2000, 1667, 1250)])


def val_acc_of(correct: tuple[int, ...], sizes: tuple[int, ...]) -> float:
    """As records.validation_accuracy computes it: the mean of the per-env accuracies, in float64."""
    return sum(c / n for c, n in zip(correct, sizes)) / len(sizes)


@st.composite
def two_outcomes(draw: Any) -> tuple[tuple[int, ...], Fraction, float, tuple[int, ...], Fraction, float, tuple[int, ...]]:
    sizes = draw(SIZES)
    first = tuple(draw(st.integers(0, n)) for n in sizes)
    # often a neighbour of the first (the hard case: accuracies one image apart), sometimes anything
    second = tuple(min(n, max(0, c + draw(st.integers(-1, 1)))) for c, n in zip(first, sizes)) if draw(st.booleans()) \
        else tuple(draw(st.integers(0, n)) for n in sizes)
    nll = st.floats(0.0, 50.0, allow_nan=False)
    exact = [sum(Fraction(c, n) for c, n in zip(counts, sizes)) / len(sizes) for counts in (first, second)]
    return sizes, exact[0], draw(nll), first, exact[1], draw(nll), second


@settings(max_examples=400, deadline=None)
@given(two_outcomes())
def test_the_score_never_reorders_different_accuracies(case) -> None:
    sizes, exact_a, nll_a, first, exact_b, nll_b, second = case
    resolution = accuracy_resolution(sizes)
    score_a = scheduler_score(val_acc_of(first, sizes), nll_a, resolution)
    score_b = scheduler_score(val_acc_of(second, sizes), nll_b, resolution)
    if exact_a > exact_b:
        assert score_a > score_b
    elif exact_a < exact_b:
        assert score_a < score_b


@settings(max_examples=200, deadline=None)
@given(SIZES, st.data())
def test_equal_accuracies_are_ranked_by_validation_loss(sizes, data) -> None:
    correct = tuple(data.draw(st.integers(0, n)) for n in sizes)
    low = data.draw(st.floats(0.0, 20.0))
    high = low + data.draw(st.floats(0.05, 20.0))
    acc = val_acc_of(correct, sizes)
    resolution = accuracy_resolution(sizes)
    assert scheduler_score(acc, low, resolution) > scheduler_score(acc, high, resolution) > acc


def test_accuracy_resolution_is_the_step_between_possible_accuracies() -> None:
    assert accuracy_resolution([416, 416]) == 1 / 832
    assert accuracy_resolution([4, 6]) == 1 / 24  # lcm 12, two envs: e.g. (1/4 + 0/6)/2 - (0/4 + 1/6)/2 = 1/24
    assert accuracy_resolution([]) == 0.0 and accuracy_resolution([10, 0]) == 0.0


def test_without_a_usable_loss_or_resolution_the_score_is_val_acc() -> None:
    assert scheduler_score(0.8, None, 1 / 832) == 0.8
    assert scheduler_score(0.8, float("nan"), 1 / 832) == 0.8
    assert scheduler_score(0.8, 0.3, 0.0) == 0.8  # empty split, or a resolution float64 cannot carry
    assert math.isnan(scheduler_score(float("nan"), 0.3, 1 / 832))


def test_asha_breaks_a_val_acc_tie_by_the_score_and_falls_back_to_val_acc_without_it() -> None:
    """Equal val_acc at a rung: strictly-below-the-cutoff never stops a tie, the score's tie-break does."""
    tied = 0.8666
    resolution = 1 / 832

    def run(with_score: bool) -> list[str]:
        scheduler = GroupScheduler([STRONG.key], Asha(max_t=600, grace_period=25, reduction_factor=4))
        actions = []
        for i, nll in enumerate([0.30, 0.31, 0.32, 0.33, 0.50]):
            extra = {SCHEDULER_METRIC: scheduler_score(tied, nll, resolution)} if with_score else {}
            actions.append(scheduler.on_trial_result(None, add(scheduler, f"t{i}", STRONG), result(tied, 25, **extra)))
        return actions

    assert run(with_score=False) == ["CONTINUE"] * 5
    # the first passes (nothing to compare with); the others are below the 75% quantile of the better ones before them
    assert run(with_score=True) == ["CONTINUE", "STOP", "STOP", "STOP", "STOP"]
    scheduler = GroupScheduler([STRONG.key], Asha(max_t=600, grace_period=25, reduction_factor=4))
    (asha,) = scheduler.schedulers.values()
    assert asha._metric == SCHEDULER_METRIC
    # a lower val_acc is stopped whatever its loss: accuracy first
    def scored(val_acc: float, nll: float) -> dict[str, Any]:
        return result(val_acc, 25, **{SCHEDULER_METRIC: scheduler_score(val_acc, nll, resolution)})

    scheduler.on_trial_result(None, add(scheduler, "a", STRONG), scored(tied, 5.0))
    assert scheduler.on_trial_result(None, add(scheduler, "b", STRONG), scored(tied - resolution, 0.0)) == "STOP"


def test_a_result_without_the_score_is_ranked_by_val_acc() -> None:
    """E.g. a trial of a sweep started before the score existed, resumed: ASHA still decides, by val_acc."""
    scheduler = GroupScheduler([STRONG.key], Asha(max_t=600, grace_period=25, reduction_factor=4))
    assert scheduler.on_trial_result(None, add(scheduler, "a", STRONG), result(0.87, 25)) == "CONTINUE"
    assert scheduler.on_trial_result(None, add(scheduler, "b", STRONG), result(0.50, 25)) == "STOP"
