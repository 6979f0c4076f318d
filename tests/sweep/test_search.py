"""Per-group search: TPE never sees another group's trials (unit level, no Ray cluster)."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from fishr_tune.space import Distribution
from fishr_tune.sweep.search import GroupSearcher, SpaceFunction
from fishr_tune.sweep.trial import FAILURE_KEY, GROUP_KEY, Group

optuna.logging.set_verbosity(optuna.logging.WARNING)

STRONG = Group("ColoredMNIST-IRM", "ERM", (2,), 0)
WEAK = Group("ColoredMNIST-IRM", "Fishr", (2,), 0)
SPACES = {
    "ERM": {"lr": Distribution("loguniform", 1e-4, 1e-2), "batch_size": Distribution("choice", choices=(32, 64))},
    "Fishr": {"lr": Distribution("loguniform", 1e-4, 1e-2), "lambda": Distribution("loguniform", 10, 1e4),
              "penalty_anneal_iters": Distribution("int", 0, 500), "ema": 0.95},
}


def result(val_acc: float, step: int, iteration: int = 1, **extra: Any) -> dict[str, Any]:
    return {"val_acc": val_acc, "step": step, "training_iteration": iteration, **extra}


def make_searcher(num_samples: int = 4, sampler: str = "tpe") -> GroupSearcher:
    searcher = GroupSearcher([STRONG, WEAK], SPACES, num_samples, sampler=sampler, seed=3)
    assert searcher.set_search_properties("val_acc", "max", {})
    return searcher


def test_space_function_samples_searched_names_and_returns_fixed_ones() -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    fixed = SpaceFunction.from_mapping(SPACES["Fishr"])(trial)
    assert fixed == {"ema": 0.95}
    assert set(trial.params) == {"lr", "lambda", "penalty_anneal_iters"}
    assert 1e-4 <= trial.params["lr"] <= 1e-2 and isinstance(trial.params["penalty_anneal_iters"], int)


def test_suggestions_go_round_robin_and_finish_when_every_group_has_its_samples() -> None:
    searcher = make_searcher(num_samples=3)
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    assert [c[GROUP_KEY] for c in configs] == [STRONG.key, WEAK.key] * 3
    assert searcher.suggest("t6") == GroupSearcher.FINISHED
    fishr = [c for c in configs if c["algorithm"] == "Fishr"]
    assert all(c["hparams"]["ema"] == 0.95 and "lambda" in c["hparams"] for c in fishr)
    assert all("lambda" not in c["hparams"] for c in configs if c["algorithm"] == "ERM")
    assert len({c["seed"] for c in configs}) == 6  # every trial gets its own initialization seed


def drive(searcher: GroupSearcher, weak_scores: list[float], rounds: int = 8) -> list[dict[str, Any]]:
    """Suggest and complete trials; the strong group's score is a fixed function of lr, the weak group's scripted."""
    strong_configs = []
    weak_index = 0
    for i in range(rounds):
        config = searcher.suggest(f"t{i}")
        if config[GROUP_KEY] == STRONG.key:
            strong_configs.append(config["hparams"])
            score = 1.0 - abs(config["hparams"]["lr"] - 3e-3) * 50
        else:
            score = weak_scores[weak_index % len(weak_scores)]
            weak_index += 1
        searcher.on_trial_result(f"t{i}", result(score, 100))
        searcher.on_trial_complete(f"t{i}", result(score, 599))
    return strong_configs


def test_each_group_study_only_contains_its_own_trials() -> None:
    searcher = make_searcher(num_samples=4)
    drive(searcher, weak_scores=[0.1, 0.2])
    strong_values = sorted(t.value for t in searcher.study(STRONG.key).trials)
    weak_values = sorted(t.value for t in searcher.study(WEAK.key).trials)
    assert weak_values == [0.1, 0.1, 0.2, 0.2]
    assert len(strong_values) == 4 and not set(strong_values) & {0.1, 0.2}
    assert all("lambda" in t.params for t in searcher.study(WEAK.key).trials)
    assert all("lambda" not in t.params for t in searcher.study(STRONG.key).trials)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_group_suggestions_do_not_depend_on_another_group_results(sampler: str) -> None:
    """Same seeds, same own results, wildly different results in the other group: identical suggestions.

    TPE leaves its random start-up after 10 trials, so 30 rounds (15 per group) exercise the model-based phase.
    """
    first = drive(make_searcher(num_samples=15, sampler=sampler), weak_scores=[0.99, 0.01, 0.5], rounds=30)
    second = drive(make_searcher(num_samples=15, sampler=sampler), weak_scores=[0.0], rounds=30)
    assert first == second


def suggestions_by_group(groups: list[Group], sampler: str, rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Drive a searcher over `groups` (each trial scored by its own lr) and collect each group's hparams in order."""
    searcher = GroupSearcher(groups, SPACES, rounds, sampler=sampler, seed=3)
    assert searcher.set_search_properties("val_acc", "max", {})
    found: dict[str, list[dict[str, Any]]] = {group.key: [] for group in groups}
    for i in range(rounds * len(groups)):
        config = searcher.suggest(f"t{i}")
        found[config[GROUP_KEY]].append(config["hparams"])
        score = 1.0 - abs(config["hparams"]["lr"] - 3e-3) * 50 + 0.01 * len(config["test_envs"])
        searcher.on_trial_result(f"t{i}", result(score, 100))
        searcher.on_trial_complete(f"t{i}", result(score, 599))
    return found


PAIR_GROUPS = [Group("ColoredMNIST-IRM", "Fishr", envs, 0) for envs in [(0,), (1,), (0, 1), (0, 2)]]


def test_random_search_gives_groups_that_differ_only_in_test_envs_the_same_configurations() -> None:
    """Leave-one-out matches runs with test envs {t} and {t, v} by configuration, as in DomainBed's random sweeps."""
    found = suggestions_by_group([*PAIR_GROUPS, STRONG], "random", rounds=6)
    reference = found[PAIR_GROUPS[0].key]
    assert len(reference) == 6 and len({c["lr"] for c in reference}) == 6
    assert all(found[group.key] == reference for group in PAIR_GROUPS[1:])


def test_random_search_draws_other_configurations_for_another_trial_seed() -> None:
    groups = [Group("ColoredMNIST-IRM", "Fishr", (0,), seed) for seed in (0, 1)]
    found = suggestions_by_group(groups, "random", rounds=4)
    first, second = (found[group.key] for group in groups)
    assert not {c["lr"] for c in first} & {c["lr"] for c in second}


def test_tpe_keeps_a_seed_per_group() -> None:
    """TPE adapts to its own group's results, so leave-one-out needs random search; its start-up draws differ too."""
    found = suggestions_by_group(PAIR_GROUPS[:2], "tpe", rounds=2)
    assert found[PAIR_GROUPS[0].key] != found[PAIR_GROUPS[1].key]


def test_diverged_and_errored_trials_are_failures_in_their_study() -> None:
    searcher = make_searcher()
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_result("a", result(float("nan"), 50, **{FAILURE_KEY: "non-finite loss"}))
    searcher.on_trial_complete("a", result(float("nan"), 50, **{FAILURE_KEY: "non-finite loss"}))
    searcher.on_trial_complete("b", None, error=True)
    assert [t.state for t in searcher.study(STRONG.key).trials] == [optuna.trial.TrialState.FAIL]
    assert [t.state for t in searcher.study(WEAK.key).trials] == [optuna.trial.TrialState.FAIL]


def test_searcher_state_survives_save_and_restore(tmp_path) -> None:
    searcher = make_searcher(num_samples=4)
    drive(searcher, weak_scores=[0.3], rounds=4)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = make_searcher(num_samples=4)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggested == {STRONG.key: 2, WEAK.key: 2}
    assert len(restored.study(WEAK.key).trials) == 2
    assert restored.suggest("t4") == searcher.suggest("t4")  # same sampler state: same next suggestion
