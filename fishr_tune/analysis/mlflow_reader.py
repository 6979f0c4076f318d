"""A sweep's records from the MLflow store: the child (trial) runs of its experiment, and its parent run for the
settings every trial shares. The one module of analysis that talks to fishr_tune.tracking."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fishr_tune import records
from fishr_tune.analysis.table import MLFLOW_RUN_ID, RUN
from fishr_tune.errors import ConfigError, quote

# Settings of the sweep (its parent run's params) that every trial shares: what best.yaml needs besides the trial's own.
SWEEP_ARGS = ("steps", "checkpoint_freq", "holdout_fraction", "label_noise", "data_dir")
SQLITE_HEADER = b"SQLite format 3\x00"

Progress = Callable[[Iterable[Any], int, str], Iterable[Any]]


def no_progress(items: Iterable[Any], total: int, description: str) -> Iterable[Any]:
    return items


def _decode_param(value: str, keep_string: bool = False) -> Any:
    """MLflow params are strings; fishr-tune JSON-encodes every value that was not a string (tracking.param_value)."""
    if keep_string:
        return value
    try:
        return json.loads(value)
    except (json.JSONDecodeError, ValueError):
        return value


def _string_hparams(algorithm: str, dataset: str) -> set[str]:
    """Hyperparameters whose registry default is a string: their params are logged raw, never JSON-decoded."""
    try:
        from fishr_tune.hparams import default_hparams

        return {k for k, v in default_hparams(algorithm, dataset).items() if isinstance(v, str)}
    except (ConfigError, KeyError, ValueError):
        return set()


@dataclass
class MlflowSweep:
    """What analyze read from one MLflow experiment: the records table and the sweep's parent run (for artifacts)."""

    table: pd.DataFrame
    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None
    spaces: dict[str, dict[str, str]] | None = None  # algorithm -> hparam -> distribution kind (the parent's SPACE_TAG)


def _check_store(tracking_uri: str) -> None:
    """A sqlite URI naming no file would make MLflow create an empty store: refuse instead."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return
    path = Path(tracking_uri[len(prefix):])
    if not path.exists():
        raise ConfigError(f"--tracking-uri: no MLflow store at {path} (pass --tracking-uri or --records)")
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as error:
        raise ConfigError(f"--tracking-uri: cannot read {path} ({error.strerror or error})") from None
    if header and header != SQLITE_HEADER:  # an empty file is a new, empty SQLite database
        raise ConfigError(f"--tracking-uri: {path} is not an SQLite database (so not an MLflow store)")



def _all_runs(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def from_mlflow(tracking_uri: str, experiment: str, progress: Progress = no_progress) -> MlflowSweep:
    """The child (trial) runs of a sweep's experiment, one row per (run, step) as records.flatten would give."""
    from mlflow.tracking import MlflowClient

    from fishr_tune.tracking import quick_failures

    _check_store(tracking_uri)
    quick_failures()
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(f"--experiment: no experiment {quote(experiment)} in {tracking_uri}; existing: {', '.join(names) or 'none'}")
    experiment_id = found.experiment_id
    parents = _all_runs(client, experiment_id, f"tags.`{records.KIND_TAG}` = '{records.KIND_SWEEP}'")
    parent = parents[0] if parents else None
    sweep_args = {}
    if parent is not None:
        sweep_args = {k: _decode_param(parent.data.params[k]) for k in SWEEP_ARGS if k in parent.data.params}
    trials = sorted(_all_runs(client, experiment_id, f"tags.`{records.KIND_TAG}` = '{records.KIND_TRIAL}'"),
                    key=lambda r: r.data.tags.get("ray_trial_id", r.info.run_id))
    rows: list[dict[str, Any]] = []
    for run in progress(trials, len(trials), f"Reading {len(trials)} runs of {experiment}"):
        rows.extend(_mlflow_run_rows(client, run, sweep_args))
    spaces = json.loads(parent.data.tags[records.SPACE_TAG]) if parent is not None and records.SPACE_TAG in parent.data.tags else None
    return MlflowSweep(pd.DataFrame(rows), tracking_uri, experiment_id, parent.info.run_id if parent else None, spaces)


def _mlflow_run_rows(client: Any, run: Any, sweep_args: Mapping[str, Any]) -> list[dict[str, Any]]:
    tags = run.data.tags
    args: dict[str, Any] = dict(sweep_args)
    if records.ARGS_TAG in tags:  # the trial's own args, as its first record held them
        args.update(json.loads(tags[records.ARGS_TAG]))
    else:
        args.update({"dataset": tags.get("dataset"), "algorithm": tags.get("algorithm"),
                     "test_envs": json.loads(tags.get("test_envs", "[]")), "trial_seed": int(tags.get("trial_seed", 0))})
    keep_strings = _string_hparams(str(args.get("algorithm")), str(args.get("dataset")))
    base = {records.hparam_column(k): _decode_param(v, k in keep_strings) for k, v in run.data.params.items()}
    base.update({records.arg_column(k): v for k, v in args.items()})
    base[RUN] = tags.get("ray_trial_id", run.info.run_id)
    base[MLFLOW_RUN_ID] = run.info.run_id
    by_step: dict[int, dict[str, Any]] = {}
    for metric in sorted(run.data.metrics):
        for point in client.get_metric_history(run.info.run_id, metric):
            by_step.setdefault(int(point.step), {records.STEP: int(point.step)})[metric] = point.value
    return [{**base, **by_step[step]} for step in sorted(by_step)]
