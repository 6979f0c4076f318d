"""The long table every source becomes, and the selection table built from it.

One row per record, flattened with `hparams.<name>` and `args.<name>` columns (records.flatten), plus `run`
naming the run it came from. Readers: analysis.readers (files) and analysis.mlflow_reader (a sweep's runs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fishr_tune import records
from fishr_tune.analysis.selection import SELECTION_METHODS, select, summarize_selected
from fishr_tune.errors import ConfigError, quote

RUN = "run"
MLFLOW_RUN_ID = "mlflow_run_id"


def plain_value(value: Any) -> Any:
    """numpy scalars and arrays (parquet gives lists back as arrays) as plain Python values."""
    if isinstance(value, np.ndarray):
        return [plain_value(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _config_key(values: Mapping[str, Any]) -> str:
    searched = {k[len(records.HPARAM_PREFIX):]: plain_value(v) for k, v in values.items() if not is_missing(v)}
    return json.dumps(searched, sort_keys=True, default=str)


def _test_envs_tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):  # a JSON list (a parquet export of mixed columns, or a tag)
        value = json.loads(value)
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    return tuple(int(e) for e in plain_value(value))


def selection_table(table: pd.DataFrame) -> pd.DataFrame:
    """The columns that selection needs, from a gathered long table.

    Everything that is constant within a run (dataset, algorithm, test envs, trial seed, planned steps, the
    configuration key) is computed once per run from its first row and broadcast, so this stays linear in
    numpy rather than in Python calls per record.
    """
    if table.empty:
        raise ConfigError("no records: the source holds no checkpoint records")
    needed = [*(records.arg_column(name) for name in ("dataset", "algorithm", "test_envs", "trial_seed")), records.STEP, RUN]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ConfigError(f"records lack {', '.join(missing)}: not fishr-tune or DomainBed records")
    out = table.reset_index(drop=True)
    out = out.assign(**{RUN: out[RUN].astype(str)})
    run_codes, run_names = pd.factorize(out[RUN], sort=False)
    first_rows = pd.Series(np.arange(len(out))).groupby(run_codes).first().to_numpy()
    runs = out.iloc[first_rows]
    hparam_columns = sorted(c for c in out.columns if str(c).startswith(records.HPARAM_PREFIX))
    per_run = pd.DataFrame({
        "dataset": runs[records.arg_column("dataset")].astype(str).to_numpy(),
        "algorithm": runs[records.arg_column("algorithm")].astype(str).to_numpy(),
        "test_envs": [_test_envs_tuple(v) for v in runs[records.arg_column("test_envs")]],
        "trial_seed": runs[records.arg_column("trial_seed")].astype(int).to_numpy(),
        # DomainBed breaks ties between runs by hparams_seed (selection.py); our sweeps' trials all have 0
        "hparams_seed": (pd.to_numeric(runs[records.arg_column("hparams_seed")], errors="coerce").fillna(0).astype(int).to_numpy()
                         if records.arg_column("hparams_seed") in runs else np.zeros(len(runs), dtype=int)),
        "config": [_config_key(v) for v in runs[hparam_columns].to_dict("records")] if hparam_columns else "{}",
    })
    for column in per_run.columns:
        values = per_run[column].to_numpy()
        out[column] = pd.Series(values[run_codes], index=out.index, dtype=object if column in ("test_envs", "config") else None)
    out["step"] = out["step"].astype(int)
    last_step = out.groupby(run_codes)["step"].transform("max")
    # DomainBed records have no (or a null) args.steps: the longest run of the group sets the final step.
    inferred = out.groupby(["dataset", "algorithm", "trial_seed"])["step"].transform("max") + 1
    if records.arg_column("steps") in out.columns:
        planned = pd.to_numeric(out[records.arg_column("steps")], errors="coerce")
        out["steps"] = planned.fillna(inferred).astype(int)
    else:
        out["steps"] = inferred.astype(int)
    out["last_step"] = last_step.astype(int)
    return out


def filter_groups(prepared: pd.DataFrame, algorithm: str | None = None, test_env: int | None = None,
                  trial_seed: int | None = None, dataset: str | None = None) -> pd.DataFrame:
    """Keep the records of the named algorithm / test env / trial seed (a run counts for every env it holds out)."""
    keep = np.ones(len(prepared), dtype=bool)
    if dataset is not None:
        keep &= (prepared["dataset"] == dataset).to_numpy()
    if algorithm is not None:
        keep &= (prepared["algorithm"] == algorithm).to_numpy()
    if trial_seed is not None:
        keep &= (prepared["trial_seed"] == trial_seed).to_numpy()
    if test_env is not None:
        codes, uniques = pd.factorize(prepared["test_envs"])
        holds = np.array([test_env in envs for envs in uniques], dtype=bool)
        keep &= holds[codes] if len(uniques) else keep
    return prepared[keep]


def selections(prepared: pd.DataFrame, methods: Sequence[str] = SELECTION_METHODS) -> dict[str, pd.DataFrame]:
    for method in methods:
        if method not in SELECTION_METHODS:
            raise ConfigError(f"--selection: expected one of {', '.join(SELECTION_METHODS)}, got {quote(method)}")
    return {method: select(prepared, method) for method in methods}


def summaries_of(selected: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {method: summarize_selected(frame) for method, frame in selected.items()}


def summaries(table: pd.DataFrame, methods: Sequence[str] = SELECTION_METHODS) -> dict[str, pd.DataFrame]:
    return summaries_of(selections(selection_table(table), methods))


def varying_hparams(prepared: pd.DataFrame) -> dict[tuple[str, str], list[str]]:
    """Per (dataset, algorithm): the hyperparameters whose value differs between runs (the ones a reader cares about)."""
    out: dict[tuple[str, str], list[str]] = {}
    first = prepared.drop_duplicates(RUN)
    for (dataset, algorithm), part in first.groupby(["dataset", "algorithm"], sort=True):
        configs = [json.loads(c) for c in part["config"].unique()]
        names = sorted(set().union(*configs)) if configs else []
        out[(str(dataset), str(algorithm))] = [
            n for n in names if len({json.dumps(c.get(n), sort_keys=True, default=str) for c in configs}) > 1
        ]
    return out


def export_parquet(table: pd.DataFrame, path: str | Path) -> Path:
    """The long table as parquet (`--records` reads it back); object columns of mixed types become JSON text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        table.to_parquet(path, index=False)
    except (TypeError, ValueError, ImportError) as error:
        if isinstance(error, ImportError):
            raise
        fixed = table.copy()
        for column in fixed.columns:
            if fixed[column].dtype == object:
                kinds = {type(v) for v in fixed[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
                if len(kinds) > 1:
                    fixed[column] = fixed[column].map(lambda v: None if v is None else json.dumps(plain_value(v), default=str))
        fixed.to_parquet(path, index=False)
    return path
