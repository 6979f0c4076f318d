"""What analyze sends back to MLflow: the selected checkpoints as models on their trial runs, the plots on the
sweep's parent run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fishr_tune.analysis.best_config import BestConfig
from fishr_tune.analysis.mlflow_reader import MlflowSweep
from fishr_tune.analysis.table import MLFLOW_RUN_ID, RUN, is_missing
from fishr_tune.errors import ConfigError


def log_selected_models(sweep: MlflowSweep, prepared: pd.DataFrame, bests: Sequence[BestConfig]) -> list[Any]:
    """Each selected checkpoint as an MLflow model on its trial run (fishr_tune.analysis.model_export), checked against the
    accuracies MLflow recorded at that step."""
    from fishr_tune.analysis.model_export import log_selected_model

    if MLFLOW_RUN_ID not in prepared.columns:
        raise ConfigError("--log-model: needs an MLflow source (--experiment), where each selected run has a trial run")
    logged = []
    for best in bests:
        problem = best.reproduction_problem()
        if problem:
            raise ConfigError(f"--log-model: {problem}")
        rows = prepared[(prepared[RUN] == best.run) & (prepared["step"] == best.step)]
        row = rows.iloc[0]
        expected = {c: float(row[c]) for c in rows.columns if str(c).startswith("env") and str(c).endswith("_acc")
                    and not is_missing(row[c])}
        logged.append(log_selected_model(sweep.tracking_uri, str(row[MLFLOW_RUN_ID]), best.config, best.step, expected))
    return logged


def log_plots_to_mlflow(sweep: MlflowSweep, paths: Sequence[Path]) -> None:
    """The plots as artifacts of the sweep's parent run (under analyze/)."""
    if sweep.parent_run_id is None or not paths:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep.tracking_uri)
    for path in paths:
        client.log_artifact(sweep.parent_run_id, str(path), "analyze")
