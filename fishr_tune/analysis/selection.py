"""DomainBed's three model-selection methods, as pure functions over the long records table.

The table has one row per record (checkpoint) with at least: `run` (one training run), `dataset`,
`algorithm`, `test_envs` (a tuple), `trial_seed`, `step`, `steps` (the planned number of steps), `config`
(a key naming the hyperparameter configuration, equal across runs that share hyperparameters) and the
`env{i}_in_acc` / `env{i}_out_acc` columns. `fishr_tune.analysis.table` builds it from any source.

A *group* is (dataset, algorithm, test_env, trial_seed): selection happens within a group, and results are
then averaged over trial seeds. Each method returns one row per group: the selected run, step, its
validation accuracy and the test environment's `in` accuracy at that checkpoint.

The rules are DomainBed's `collect_results` (domainbed/model_selection.py), for DomainBed sweeps and ours alike:
- training_domain: per run, the checkpoint with the best mean `out` accuracy of the training envs (the earliest
  among equal ones, as `Q.argmax` keeps the first record); every checkpoint a run reached is a candidate, so a run
  that ASHA stopped competes with its best checkpoint.
- oracle: per run, its last record, whatever its step: DomainBed reads every results.jsonl and never checks
  `done`, so a truncated run (or one that ASHA stopped) competes with the checkpoint where it stopped.
- leave_one_out: a (configuration, step) is a candidate only if the run with test envs {t} and every run
  with test envs {t, v} of that configuration reached that step (DomainBed's `_step_acc` returns None otherwise);
  per configuration the earliest of its best steps.
- Across runs (configurations): the best validation accuracy; among equal ones the run that sorts *last* by
  (`hparams_seed`, `run`), since DomainBed sorts its runs by hparams_seed, sorts them by accuracy (a stable
  sort) and takes the first of the reversed list. On DomainBed sweeps the hparams_seed decides; on ours (every
  trial has hparams_seed 0) the run name does. NaN accuracies lose, as DomainBed's sort maps them to -inf.

A DomainBed run is its (group, hparams_seed); here it is a results.jsonl's directory (a Ray trial, an MLflow
run). The two agree on DomainBed sweeps, where each (group, hparams_seed) has one run directory. A configuration
(leave_one_out) is the pair (hparams_seed, hyperparameters), which is DomainBed's hparams_seed on its sweeps and
the hyperparameters on ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd

SELECTION_METHODS = ("training_domain", "leave_one_out", "oracle")
GROUP = ["dataset", "algorithm", "test_env", "trial_seed"]
RESULT_COLUMNS = [*GROUP, "run", "config", "step", "val_acc", "test_acc"]
_ACC_COLUMN = re.compile(r"^env(\d+)_(in|out)_acc$")


def env_count(table: pd.DataFrame) -> int:
    indices = [int(m.group(1)) for c in table.columns if (m := _ACC_COLUMN.match(str(c)))]
    return max(indices) + 1 if indices else 0


def _accuracy_matrix(table: pd.DataFrame, split: str, n_envs: int) -> np.ndarray:
    columns = [f"env{i}_{split}_acc" for i in range(n_envs)]
    return np.column_stack([table[c].to_numpy(dtype=float) if c in table else np.full(len(table), np.nan) for c in columns])


def _test_env_positions(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: how many test envs, the first and the second (-1 when absent); one Python call per distinct tuple."""
    codes, uniques = pd.factorize(table["test_envs"], use_na_sentinel=False)
    lengths = np.array([len(envs) for envs in uniques], dtype=int)
    first = np.array([int(envs[0]) if len(envs) > 0 else -1 for envs in uniques], dtype=int)
    second = np.array([int(envs[1]) if len(envs) > 1 else -1 for envs in uniques], dtype=int)
    if len(uniques) == 0:
        return (np.zeros(0, dtype=int),) * 3  # type: ignore[return-value]
    return lengths[codes], first[codes], second[codes]


def _single_test_env_rows(table: pd.DataFrame) -> pd.DataFrame:
    lengths, first, _ = _test_env_positions(table)
    single = table[lengths == 1].copy()
    single["test_env"] = first[lengths == 1]
    return single


def _dataset_env_counts(table: pd.DataFrame) -> pd.Series:
    """Environments per dataset: the env{i}_out_acc columns that hold a value for any of its records.

    Per dataset, not per table: a table may mix datasets with 3 and 4 environments.
    """
    columns = [c for c in table.columns if (m := _ACC_COLUMN.match(str(c))) and m.group(2) == "out"]
    present = table[columns].notna().groupby(table["dataset"]).any()
    return present.sum(axis=1)


def _pick(frame: pd.DataFrame, by: list[str], score: str, tiebreak: list[tuple[str, bool]]) -> pd.DataFrame:
    """Per `by` group, the row with the highest `score`; ties go to the first row by `tiebreak` ((column, ascending))."""
    columns = [*by, score, *(name for name, _ in tiebreak)]
    ascending = [True] * len(by) + [False] + [up for _, up in tiebreak]
    ordered = frame.sort_values(columns, ascending=ascending, kind="mergesort", na_position="last")
    return ordered.drop_duplicates(by, keep="first")


def _with_hparams_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """`hparams_seed` as an integer column (0 where a source has none, as every trial of our sweeps)."""
    seeds = pd.to_numeric(frame["hparams_seed"], errors="coerce") if "hparams_seed" in frame else pd.Series(0, index=frame.index)
    return frame.assign(hparams_seed=seeds.fillna(0).astype(int))


# Among equal validation accuracies the run DomainBed's sort-then-reverse keeps: the last by (hparams_seed, run).
_LAST_RUN = [("hparams_seed", False), ("run", False)]


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=RESULT_COLUMNS)


def training_domain_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Every single-test-env checkpoint with `val_acc` (mean out-split accuracy of the training envs) and
    `test_acc` (the test env's in split); rows without a training-domain accuracy are dropped."""
    single = _single_test_env_rows(table)
    if single.empty:
        return single.assign(val_acc=pd.Series(dtype=float), test_acc=pd.Series(dtype=float))
    n_envs = env_count(single)
    out = _accuracy_matrix(single, "out", n_envs)
    rows = np.arange(len(single))
    test_env = single["test_env"].to_numpy()
    out[rows, test_env] = np.nan
    finite = np.isfinite(out)
    counts = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        single["val_acc"] = np.where(finite, out, 0.0).sum(axis=1) / counts
    single["test_acc"] = _accuracy_matrix(single, "in", n_envs)[rows, test_env]
    return single[counts > 0]


def training_domain(table: pd.DataFrame) -> pd.DataFrame:
    """Best mean out-split accuracy of the training environments, over checkpoints and then over runs."""
    single = training_domain_scores(table)
    if single.empty:
        return _empty()
    best_per_run = _pick(_with_hparams_seed(single), [*GROUP, "run"], "val_acc", [("step", True)])
    return _pick(best_per_run, GROUP, "val_acc", _LAST_RUN)[RESULT_COLUMNS].reset_index(drop=True)


def oracle(table: pd.DataFrame) -> pd.DataFrame:
    """Test-domain validation: each run's last checkpoint (truncated or stopped runs too), chosen by the test env's
    out split."""
    single = _single_test_env_rows(table)
    if single.empty:
        return _empty()
    single = single[single["step"] == single.groupby("run")["step"].transform("max")]
    single = single.drop_duplicates(["run", "step"], keep="last")  # DomainBed: the last record of the highest step
    if single.empty:
        return _empty()
    n_envs = env_count(single)
    rows = np.arange(len(single))
    test_env = single["test_env"].to_numpy()
    single["val_acc"] = _accuracy_matrix(single, "out", n_envs)[rows, test_env]
    single["test_acc"] = _accuracy_matrix(single, "in", n_envs)[rows, test_env]
    return _pick(_with_hparams_seed(single), GROUP, "val_acc", _LAST_RUN)[RESULT_COLUMNS].reset_index(drop=True)


def leave_one_out(table: pd.DataFrame) -> pd.DataFrame:
    """Leave-one-domain-out: for test env t, validate on each other env v with the run that also held out v."""
    n_envs = env_count(table)
    if n_envs < 3 or table.empty:
        return _empty()
    table = _with_hparams_seed(table)
    lengths, first, second = _test_env_positions(table)
    single = _single_test_env_rows(table)
    is_pair = lengths == 2
    pairs = table[is_pair]
    if single.empty or pairs.empty:
        return _empty()
    keys = ["dataset", "algorithm", "trial_seed", "hparams_seed", "config", "step"]
    # One row per (pair run record, its held-out test env t): the accuracy on the other env v is validation for t.
    in_matrix = _accuracy_matrix(pairs, "in", n_envs)
    pair_first, pair_second = first[is_pair], second[is_pair]
    pair_rows = []
    for test_env, val_env in ((pair_first, pair_second), (pair_second, pair_first)):
        part = pairs[keys].copy()
        part["test_env"] = test_env
        part["val_env"] = val_env
        part["val_env_acc"] = in_matrix[np.arange(len(pairs)), val_env]
        pair_rows.append(part)
    validation = pd.concat(pair_rows, ignore_index=True).dropna(subset=["val_env_acc"])
    validation = validation.drop_duplicates([*keys, "test_env", "val_env"])
    per_step = validation.groupby([*keys, "test_env"], sort=False).agg(
        val_acc=("val_env_acc", "mean"), n_val=("val_env", "nunique")
    ).reset_index()
    # Every other environment of the candidate's own dataset must validate it (DomainBed's `_step_acc` is None otherwise).
    needed = per_step["dataset"].map(_dataset_env_counts(table)) - 1
    per_step = per_step[per_step["n_val"] == needed]
    rows = np.arange(len(single))
    single["test_acc"] = _accuracy_matrix(single, "in", n_envs)[rows, single["test_env"].to_numpy()]
    candidates = single[[*keys, "test_env", "run", "test_acc"]].merge(per_step, on=[*keys, "test_env"], how="inner")
    if candidates.empty:
        return _empty()
    # per configuration its earliest best step; across configurations the last by (hparams_seed, config), as DomainBed
    tiebreak = [("hparams_seed", False), ("config", False), ("step", True), ("run", False)]
    return _pick(candidates, GROUP, "val_acc", tiebreak)[RESULT_COLUMNS].reset_index(drop=True)


METHODS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "training_domain": training_domain,
    "leave_one_out": leave_one_out,
    "oracle": oracle,
}


def select(table: pd.DataFrame, method: str) -> pd.DataFrame:
    if method not in METHODS:
        raise ValueError(f"selection must be one of {SELECTION_METHODS}, got {method!r}")
    return METHODS[method](table)


def summarize_selected(selected: pd.DataFrame) -> pd.DataFrame:
    """Mean ± standard error over trial seeds, in percent, per (dataset, algorithm, test_env), plus `avg`.

    As DomainBed's `collect_results`: the standard error is std (ddof 0) / sqrt(n); `avg` is the mean of the
    test environments' means (missing, "X", when the algorithm lacks one of the dataset's test environments here).
    DomainBed prints no error for it; ours is that of the per-trial-seed averages over the seeds that have every
    test environment (`n` counts them; NaN when none has).
    """
    rows = []
    if selected.empty:
        return pd.DataFrame(columns=["dataset", "algorithm", "test_env", "mean", "se", "n"])
    for (dataset, algorithm, test_env), part in selected.groupby(["dataset", "algorithm", "test_env"], sort=True):
        rows.append(_mean_se(dataset, algorithm, str(int(test_env)), part["test_acc"].to_numpy(dtype=float)))
    for (dataset, algorithm), part in selected.groupby(["dataset", "algorithm"], sort=True):
        envs = set(selected.loc[selected["dataset"] == dataset, "test_env"])
        if set(part["test_env"]) != envs:
            continue
        per_seed = part.groupby("trial_seed").filter(lambda seed: set(seed["test_env"]) == envs)  # noqa: B023  (called here)
        seed_means = per_seed.groupby("trial_seed")["test_acc"].mean().to_numpy()
        row = _mean_se(dataset, algorithm, "avg", seed_means) if len(seed_means) else {
            "dataset": dataset, "algorithm": algorithm, "test_env": "avg", "se": float("nan"), "n": 0}
        row["mean"] = 100 * float(part.groupby("test_env")["test_acc"].mean().mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_se(dataset: str, algorithm: str, test_env: str, values: np.ndarray) -> dict[str, object]:
    return {
        "dataset": dataset,
        "algorithm": algorithm,
        "test_env": test_env,
        "mean": 100 * float(np.mean(values)),
        "se": 100 * float(np.std(values) / np.sqrt(len(values))),
        "n": int(len(values)),
    }
