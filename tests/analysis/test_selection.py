"""Each selection method on hand-built records whose answers are known."""

from __future__ import annotations

import pandas as pd
import pytest

from fishr_tune.analysis.selection import leave_one_out, oracle, select, summarize_selected, training_domain

N_ENVS = 3


def rec(run: str, test_envs: tuple[int, ...], step: int, out: list[float], inn: list[float], *, config: str = "c0",
        steps: int = 3, trial_seed: int = 0, algorithm: str = "ERM") -> dict:
    row = {"run": run, "dataset": "D", "algorithm": algorithm, "test_envs": test_envs, "trial_seed": trial_seed,
           "step": step, "steps": steps, "config": config}
    for i in range(N_ENVS):
        row[f"env{i}_out_acc"] = out[i]
        row[f"env{i}_in_acc"] = inn[i]
    return row


def table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def only(result: pd.DataFrame) -> dict:
    assert len(result) == 1, result
    return result.iloc[0].to_dict()


def test_training_domain_picks_best_checkpoint_then_best_run() -> None:
    rows = [
        # run a: its best validation (mean of env0/env1 out) is at step 1: 0.8
        rec("a", (2,), 0, [0.6, 0.6, 0.99], [0.5, 0.5, 0.10]),
        rec("a", (2,), 1, [0.8, 0.8, 0.00], [0.5, 0.5, 0.20]),
        rec("a", (2,), 2, [0.7, 0.7, 0.99], [0.5, 0.5, 0.30]),
        # run b: best 0.75 — lower, even though its test accuracy is higher
        rec("b", (2,), 2, [0.75, 0.75, 1.0], [0.5, 0.5, 0.90], config="c1"),
    ]
    chosen = only(training_domain(table(rows)))
    assert (chosen["run"], chosen["step"], chosen["test_acc"]) == ("a", 1, 0.20)
    assert chosen["val_acc"] == pytest.approx(0.8)


def test_training_domain_never_looks_at_the_test_environment() -> None:
    rows = [rec("a", (2,), 0, [0.6, 0.6, 0.0], [0, 0, 0.1]), rec("b", (2,), 0, [0.5, 0.5, 1.0], [0, 0, 0.9], config="c1")]
    assert only(training_domain(table(rows)))["run"] == "a"


def test_ties_go_to_the_earliest_checkpoint_and_the_run_domainbeds_reversed_sort_keeps() -> None:
    """Within a run the first (earliest) of equal checkpoints; across runs the last by (hparams_seed, run)."""
    rows = [
        rec("z", (2,), 0, [0.7, 0.7, 0], [0, 0, 0.4], config="c1"),
        rec("b", (2,), 1, [0.7, 0.7, 0], [0, 0, 0.3]),
        rec("b", (2,), 0, [0.7, 0.7, 0], [0, 0, 0.2]),
    ]
    chosen = only(training_domain(table(rows)))
    assert (chosen["run"], chosen["step"], chosen["test_acc"]) == ("z", 0, 0.4)  # no hparams_seed: the name decides
    # the answer does not depend on the order of the records
    assert only(training_domain(table(rows[::-1])))["test_acc"] == 0.4
    # DomainBed's runs: the higher hparams_seed wins a tie, whatever the names
    seeded = [{**row, "hparams_seed": 5 if row["run"] == "b" else 3} for row in rows]
    chosen = only(training_domain(table(seeded)))
    assert (chosen["run"], chosen["step"], chosen["test_acc"]) == ("b", 0, 0.2)


def test_runs_stopped_early_compete_in_training_domain_and_in_oracle_at_their_last_checkpoint() -> None:
    rows = [
        rec("stopped", (2,), 0, [0.9, 0.9, 0.9], [0, 0, 0.6]),  # ASHA stopped it after step 0 of 3
        rec("full", (2,), 0, [0.5, 0.5, 0.5], [0, 0, 0.1], config="c1"),
        rec("full", (2,), 2, [0.6, 0.6, 0.7], [0, 0, 0.3], config="c1"),
    ]
    assert only(training_domain(table(rows)))["run"] == "stopped"
    chosen = only(oracle(table(rows)))  # DomainBed's oracle takes every run's last record, truncated runs too
    assert (chosen["run"], chosen["step"], chosen["test_acc"]) == ("stopped", 0, 0.6)


def test_oracle_uses_the_last_checkpoint_not_the_best() -> None:
    rows = [
        rec("a", (2,), 1, [0, 0, 0.99], [0, 0, 0.9]),
        rec("a", (2,), 2, [0, 0, 0.50], [0, 0, 0.4]),
        rec("b", (2,), 2, [0, 0, 0.60], [0, 0, 0.5], config="c1"),
    ]
    chosen = only(oracle(table(rows)))
    assert (chosen["run"], chosen["test_acc"]) == ("b", 0.5)


def loo_rows(config: str, val_acc_env0: float, val_acc_env1: float, test_acc: float, steps=(0, 1)) -> list[dict]:
    """Test env 2: run {2}, and runs {2,0}, {2,1} whose env0 / env1 in-accuracy validates the configuration."""
    rows = []
    for step in steps:
        rows.append(rec(f"{config}-2", (2,), step, [0.5] * 3, [0.5, 0.5, test_acc + step / 100], config=config))
        rows.append(rec(f"{config}-20", (2, 0), step, [0.5] * 3, [val_acc_env0, 0.5, 0.5], config=config))
        rows.append(rec(f"{config}-21", (2, 1), step, [0.5] * 3, [0.5, val_acc_env1, 0.5], config=config))
    return rows


def test_leave_one_out_validates_on_the_held_out_training_domains() -> None:
    rows = loo_rows("good", 0.9, 0.8, 0.3) + loo_rows("bad", 0.6, 0.6, 0.9)
    result = leave_one_out(table(rows))
    chosen = result[result["test_env"] == 2].iloc[0]
    assert chosen["config"] == "good" and chosen["val_acc"] == pytest.approx(0.85)
    assert chosen["step"] == 0 and chosen["test_acc"] == pytest.approx(0.3)  # tie over steps: earliest


def test_leave_one_out_needs_every_validation_domain() -> None:
    rows = [r for r in loo_rows("good", 0.9, 0.8, 0.3) if r["run"] != "good-21"] + loo_rows("ok", 0.7, 0.7, 0.5)
    result = leave_one_out(table(rows))
    assert result[result["test_env"] == 2].iloc[0]["config"] == "ok"


def test_leave_one_out_missing_steps_make_a_step_ineligible() -> None:
    # the {2,1} run of "good" was stopped after step 0: only step 0 is a candidate for "good"
    rows = [r for r in loo_rows("good", 0.9, 0.8, 0.3) if not (r["run"] == "good-21" and r["step"] == 1)]
    result = leave_one_out(table(rows))
    chosen = result[result["test_env"] == 2].iloc[0]
    assert chosen["step"] == 0


def test_summary_mean_and_standard_error_over_trial_seeds() -> None:
    rows = []
    for seed, acc in ((0, 0.6), (1, 0.8)):
        for env in range(N_ENVS):
            inn = [0.0] * N_ENVS
            inn[env] = acc
            rows.append(rec(f"r{seed}{env}", (env,), 2, [0.5] * 3, inn, trial_seed=seed))
    summary = summarize_selected(training_domain(table(rows))).set_index("test_env")
    assert summary.loc["0", "mean"] == pytest.approx(70.0)
    assert summary.loc["0", "se"] == pytest.approx(10.0 / 2**0.5)  # std (ddof 0) 10 over sqrt(2)
    assert summary.loc["avg", "mean"] == pytest.approx(70.0) and summary.loc["avg", "n"] == 2


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="selection must be one of"):
        select(table([rec("a", (2,), 0, [0] * 3, [0] * 3)]), "best")


def test_leave_one_out_counts_environments_per_dataset() -> None:
    # A 4-environment dataset in the same table must not make the 3-environment one need a 4th validation domain.
    other = rec("x", (0,), 0, [0.5] * 3, [0.5] * 3)
    other.update(dataset="E", env3_out_acc=0.5, env3_in_acc=0.5)
    rows = loo_rows("good", 0.9, 0.8, 0.3) + [other]
    result = leave_one_out(table(rows))
    chosen = result[(result["dataset"] == "D") & (result["test_env"] == 2)]
    assert len(chosen) == 1 and chosen.iloc[0]["config"] == "good"


def test_leave_one_out_a_stopped_single_run_leaves_only_the_steps_it_reached() -> None:
    # the {2} run of "good" stopped after step 0: its step 1 (higher test acc) is no candidate
    rows = [r for r in loo_rows("good", 0.9, 0.8, 0.3) if not (r["run"] == "good-2" and r["step"] == 1)]
    chosen = only(leave_one_out(table(rows)))
    assert (chosen["step"], chosen["test_acc"]) == (0, pytest.approx(0.3))


def test_training_domain_with_a_missing_out_split_uses_the_training_envs_it_has() -> None:
    rows = [rec("a", (2,), 0, [0.9, float("nan"), 0.0], [0, 0, 0.4]), rec("b", (2,), 0, [0.8, 0.8, 0.0], [0, 0, 0.5], config="c1")]
    chosen = only(training_domain(table(rows)))
    assert chosen["run"] == "a" and chosen["val_acc"] == pytest.approx(0.9)


def test_oracle_takes_a_truncated_runs_last_record_and_ties_go_to_the_higher_hparams_seed() -> None:
    rows = [rec("b", (2,), 2, [0, 0, 0.6], [0, 0, 0.5]), rec("a", (2,), 2, [0, 0, 0.6], [0, 0, 0.4], config="c1"),
            rec("c", (2,), 1, [0, 0, 0.55], [0, 0, 0.99], config="c2")]
    chosen = only(oracle(table(rows)))
    assert (chosen["run"], chosen["test_acc"]) == ("b", 0.5)  # tie a/b at 0.6, no hparams_seed: the last name
    seeded = [{**row, "hparams_seed": {"a": 9, "b": 1, "c": 4}[row["run"]]} for row in rows]
    assert only(oracle(table(seeded)))["run"] == "a"
    # the truncated run c (stopped at step 1) wins once its last record is the best
    rows[2] = rec("c", (2,), 1, [0, 0, 0.7], [0, 0, 0.99], config="c2")
    assert (only(oracle(table(rows)))["run"], only(oracle(table(rows)))["step"]) == ("c", 1)


def test_summary_average_is_the_mean_of_the_test_env_means() -> None:
    rows = [rec("r0", (0,), 2, [0.5] * 3, [0.6, 0, 0]), rec("r1", (1,), 2, [0.5] * 3, [0, 0.8, 0]),
            rec("s0", (0,), 2, [0.5] * 3, [0.4, 0, 0], trial_seed=1)]
    summary = summarize_selected(training_domain(table(rows))).set_index("test_env")
    # DomainBed's Avg: the mean of the column means, (60 + 40) / 2 = 50 and 80, so 65; the error from seed 0 alone
    assert summary.loc["avg", "mean"] == pytest.approx(65.0)
    assert summary.loc["avg", "n"] == 1 and summary.loc["avg", "se"] == pytest.approx(0.0)
    assert summary.loc["0", "n"] == 2


def test_summary_average_is_missing_when_the_algorithm_lacks_a_test_env() -> None:
    rows = [rec("r0", (0,), 2, [0.5] * 3, [0.6, 0, 0]), rec("r1", (1,), 2, [0.5] * 3, [0, 0.8, 0]),
            rec("i0", (0,), 2, [0.5] * 3, [0.7, 0, 0], algorithm="IRM")]
    summary = summarize_selected(training_domain(table(rows)))
    assert set(summary.loc[summary["algorithm"] == "IRM", "test_env"]) == {"0"}
