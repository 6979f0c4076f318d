"""What MLflow's web UI reads beyond runs and metrics: descriptions, the experiment's kind, saved views and their links.

MLflow 3.17 keeps the run list's columns, sort and filter per browser (localStorage): a new user sees Source, Models
and Dataset only. Its one experiment-side hook is a saved view, an experiment tag `mlflow.sharedViewState.<id>`
holding {name, createdAt, updatedAt, state: JSON string}, listed under *Views* and opened by
`#/experiments/<id>/runs?viewStateShareKey=<id>`. fishr-tune saves one per sweep, VIEW_ID.
"""

from __future__ import annotations

import json
import time
from typing import Any

DESCRIPTION_TAG = "mlflow.note.content"  # the run's (and the experiment's) description in MLflow's UI
# The experiment tag MLflow 3's UI reads to pick its default view; without it an experiment opens on GenAI traces.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_ID = "fishr-tune-trials"


def saved_view(name: str, state: dict[str, Any], now_ms: int | None = None) -> str:
    """A saved view's tag value (for the experiment tag VIEW_TAG_PREFIX + its id)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)})


def view_url(tracking_uri: str, experiment_name: str) -> str:
    """Where the saved view opens: a full URL for a tracking server, the UI's route otherwise ("" if unknown)."""
    from mlflow.tracking import MlflowClient

    try:
        experiment = MlflowClient(tracking_uri).get_experiment_by_name(experiment_name)
    except Exception:  # noqa: BLE001  (a link is a convenience: never fail a finished sweep over it)
        return ""
    if experiment is None:
        return ""
    # workflowType: MLflow 3.17's UI otherwise keeps its GenAI navigation around the training-runs list
    route = f"#/experiments/{experiment.experiment_id}/runs?viewStateShareKey={VIEW_ID}&workflowType=machine_learning"
    return f"{tracking_uri.rstrip('/')}/{route}" if tracking_uri.startswith(("http://", "https://")) else route
