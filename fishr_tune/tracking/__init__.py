"""Tracking: the Tracker interface (base) and its one implementation, MLflow behind a crash-safe journal.

`journal` keeps the operations on disk, `mlflow_store` replays them through MLflow's client, `mlflow_ui` holds
what MLflow's web UI reads (descriptions, the experiment kind, saved views). Nothing here imports the sweep.
"""

from fishr_tune.tracking.base import Tracker
from fishr_tune.tracking.journal import MlflowJournal, param_value
from fishr_tune.tracking.mlflow_store import quick_failures, resolve_tracking_uri

__all__ = ["MlflowJournal", "Tracker", "param_value", "quick_failures", "resolve_tracking_uri"]
