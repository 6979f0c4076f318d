"""`inconsistency_epsilon` in a sweep: each trial's last record carries the inconsistency score of its final model,
and MLflow receives it once, at that step, equal to the score recomputed from the trial's last checkpoint."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from fishr_tune import records
from fishr_tune.errors import ConfigError
from fishr_tune.sweep.runner import build_datasets, run_sweep
from fishr_tune.sweep.spec import build_spec
from fishr_tune.sweep.trainable import dataset_key, final_inconsistency, trial_train_config
from fishr_tune.sweep.trial import RunSettings, TrialSpec
from fishr_tune.training import CHECKPOINT_FILE, Trainer


@pytest.mark.parametrize("value", [0, -0.5, "nan", "inf", "small"])
def test_inconsistency_epsilon_must_be_a_positive_finite_number(value: Any, tiny_sweep: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="inconsistency_epsilon"):
        build_spec({**tiny_sweep, "name": "bad", "inconsistency_epsilon": value}, "space.yaml")


def last_checkpoint(trial_dir: Path) -> Path:
    return max(trial_dir.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[-1])) / CHECKPOINT_FILE


def test_each_trial_logs_its_final_models_inconsistency_once(local_ray, tiny_sweep: dict[str, Any]) -> None:
    spec = build_spec({**tiny_sweep, "name": "scored", "inconsistency_epsilon": 0.05,
                       "search": {"algorithm": "random", "num_samples": 1, "seed": 0}}, "space.yaml")
    summary = run_sweep(spec, stream=open(os.devnull, "w"))
    assert summary.finished == 2 and summary.mlflow_pending == 0

    client = MlflowClient(tiny_sweep["tracking_uri"])
    experiment = client.get_experiment_by_name("scored")
    trial_runs = {r.data.tags["ray_trial_id"]: r for r in client.search_runs([experiment.experiment_id])
                  if r.data.tags.get(records.KIND_TAG) == records.KIND_TRIAL}
    assert len(trial_runs) == 2
    datasets = build_datasets(spec)
    run_settings = RunSettings(steps=spec.settings.steps, checkpoint_freq=spec.settings.checkpoint_freq,
                               holdout_fraction=spec.settings.holdout_fraction, label_noise=spec.settings.label_noise)
    torch.set_num_threads(1)  # as the trial computed it (cpu: 1): the same reductions in the same order
    for trial_dir in Path(summary.experiment_dir).iterdir():
        if not (trial_dir / "params.json").is_file():
            continue
        config = json.loads((trial_dir / "params.json").read_text())
        run = trial_runs[json.loads((trial_dir / "result.json").read_text().splitlines()[0])["trial_id"]]
        for key in (records.INCONSISTENCY, records.INCONSISTENCY_DIAGONAL):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [spec.settings.steps - 1], key  # once, with the last record
        trial = TrialSpec.from_config(config)
        trainer = Trainer(trial_train_config(trial, run_settings), dataset=datasets[dataset_key(trial.trial_seed)])
        trainer.load_checkpoint(last_checkpoint(trial_dir))
        assert trainer.step == spec.settings.steps
        expected = final_inconsistency(trainer, 0.05)
        for key, value in expected.items():
            assert math.isfinite(value) and value > 0
            assert run.data.metrics[key] == pytest.approx(value, rel=1e-6), key
        trainer.close()
