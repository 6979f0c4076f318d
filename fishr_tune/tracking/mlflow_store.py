"""What each journal operation means to MLflow's client: the one place that replays the journal into a tracking store.

Replaying an operation is harmless, so a crash between sending and marking it sent neither loses nor duplicates
anything:

- runs are looked up by a key tag before being created, so a retried trial continues its own run;
- metric points carry the timestamp they were journaled with, and MLflow's SQL store drops exact duplicates;
- params are logged once with fixed values (re-logging the same value is accepted by MLflow);
- tags and artifacts overwrite;
- dataset inputs are deduplicated by (name, digest) in MLflow's SQL store.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

KEY_TAG = "fishr_tune.key"
DATASET_CONTEXT_TAG = "mlflow.data.context"  # what the UI shows next to a run's dataset input (train / validation / test)


def quick_failures() -> None:
    """An unreachable server must fail fast (MLflow's default retries for minutes); users can still override."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def resolve_tracking_uri(uri: str) -> str:
    """`sqlite:///relative.db` is made absolute so `mlflow-sync` from another directory finds the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def connect(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def experiment_id(client: Any, experiment_name: str) -> str:
    """The experiment's id, created (or restored from MLflow's trash) on first use."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return str(experiment.experiment_id)
    return str(client.create_experiment(experiment_name))


def find_run(client: Any, experiment_id: str, key: str) -> str | None:
    found = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=1)
    return found[0].info.run_id if found else None


def send(client: Any, experiment_id: str, runs: dict[str, str], op: Mapping[str, Any],
         save_runs: Callable[[Mapping[str, str]], None]) -> None:
    """Replay one operation; `runs` (journal key -> MLflow run id) grows as runs are created, saved at once."""
    from mlflow.entities import Metric, Param, RunTag

    key = op["key"]
    if op["op"] == "start":
        run_id = runs.get(key) or find_run(client, experiment_id, key)
        if run_id is None:
            tags = {KEY_TAG: key, "mlflow.runName": op["name"], **op["tags"]}
            if op["parent"] is not None:
                tags["mlflow.parentRunId"] = runs[op["parent"]]
            run_id = client.create_run(experiment_id, tags=tags, run_name=op["name"]).info.run_id
        else:
            client.update_run(run_id, status="RUNNING")
        runs[key] = run_id
        save_runs(runs)
        params = [Param(k, v) for k, v in op["params"].items()]
        run_tags = [RunTag(k, v) for k, v in op["tags"].items()]
        for start in range(0, max(len(params), 1), 100):
            client.log_batch(run_id, params=params[start : start + 100], tags=run_tags if start == 0 else [])
    elif op["op"] == "metrics":
        metrics = [
            Metric(name, value if value is not None else math.nan, op["timestamp"], op["step"])
            for name, value in op["metrics"].items()
        ]
        client.log_batch(runs[key], metrics=metrics)
    elif op["op"] == "tags":
        client.log_batch(runs[key], tags=[RunTag(k, v) for k, v in op["tags"].items()])
    elif op["op"] == "artifact":
        if Path(op["path"]).exists():
            client.log_artifact(runs[key], op["path"], op["artifact_path"])
    elif op["op"] == "refs":
        client.log_batch(runs[key], tags=[RunTag(k, runs[ref]) for k, ref in op["refs"].items() if ref in runs])
    elif op["op"] == "inputs":
        from mlflow.entities import Dataset, DatasetInput, InputTag

        client.log_inputs(runs[key], [
            DatasetInput(Dataset(**item["dataset"]), tags=[InputTag(DATASET_CONTEXT_TAG, item["context"])])
            for item in op["inputs"]
        ])
    elif op["op"] == "experiment_tags":
        for name, value in op["tags"].items():
            client.set_experiment_tag(experiment_id, name, value)
    elif op["op"] == "adopt":
        run_id = (runs.get(key) or runs.get(op["from"]) or find_run(client, experiment_id, key)
                  or find_run(client, experiment_id, op["from"]))
        if run_id is None:
            raise ValueError(f"journal: run {op['from']!r} to adopt for {key!r} was never started")
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(KEY_TAG, key), *(RunTag(k, v) for k, v in op["tags"].items())])
        runs[key] = run_id
        save_runs(runs)
    elif op["op"] == "end":
        client.set_terminated(runs[key], status=op["status"])
    else:
        raise ValueError(f"unknown journal operation {op['op']!r}")
