"""The selected checkpoint of a group as an MLflow model on its trial run (`fishr-tune analyze --log-model`).

Sweeps keep only a trial's latest checkpoints, so the selected one is rebuilt: the trial's configuration is
trained again up to the selected step (training is exact: same seeds, same batches), and the rebuilt record must
equal the one MLflow holds for that step before anything is logged. The model is the algorithm's `predict`
(logits), with a signature and an input example taken from the test environment, so `mlflow models` and the
model registry can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fishr_tune.algorithms.base import Algorithm
from fishr_tune.errors import ConfigError

MODEL_NAME = "model"
TOLERANCE = 1e-9  # accuracies are ratios of counts: an exact rerun gives them bit for bit
EXAMPLE_ROWS = 4


class Predictor(nn.Module):
    """The algorithm's prediction (class logits) as a plain module: what a deployed model computes."""

    def __init__(self, algorithm: Algorithm):
        super().__init__()
        self.algorithm = algorithm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.algorithm.predict(x)


@dataclass
class LoggedModel:
    run_id: str
    step: int
    model_uri: str
    val_acc: float


def rebuild(config: dict[str, Any], step: int, expected: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    """Train `config` (a best-config's TrainConfig fields) to `step`; returns the trainer and its record there.

    Refuses (ConfigError) when the rebuilt record's accuracies differ from `expected` (MLflow's values at `step`).
    """
    from fishr_tune.training import Trainer, make_config

    train_config = make_config({**config, "steps": step + 1}, "--log-model")
    trainer = Trainer(train_config)
    record = None
    for record in trainer.records():  # noqa: B007  (the last record is the one wanted)
        pass
    if record is None or int(record["step"]) != step:
        raise ConfigError(f"--log-model: rebuilding run to step {step} gave no record there")
    differing = sorted(k for k, v in expected.items() if k in record and abs(float(record[k]) - float(v)) > TOLERANCE)
    if differing:
        raise ConfigError(f"--log-model: the rebuilt checkpoint at step {step} differs from the recorded one in "
                          f"{', '.join(differing)}; the data or code changed since the sweep, so no model was logged")
    return trainer, record


def example_inputs(trainer: Any) -> torch.Tensor:
    """A few inputs of the first test environment (image datasets: the first evaluation images): the input example."""
    if trainer.file_splits is not None:  # images decoded by the evaluation transform, as the model sees them
        data = trainer.file_splits.eval_data
        x = torch.stack([data[i][0] for i in range(min(EXAMPLE_ROWS, len(data)))])
    else:
        env = trainer.test_envs[0] if trainer.test_envs else 0
        x, _ = trainer.splits[env]["in"]
    return x[:EXAMPLE_ROWS].detach().cpu().float()


def log_selected_model(tracking_uri: str, run_id: str, config: dict[str, Any], step: int,
                       expected: dict[str, float]) -> LoggedModel:
    """Rebuild the checkpoint at `step` and log it as an MLflow PyTorch model on trial run `run_id`.

    The run keeps its status (a run ASHA stopped stays KILLED); the model is a LoggedModel linked to the run,
    tagged with the selected step.
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    trainer, record = rebuild(config, step, expected)
    model = Predictor(trainer.algorithm).cpu().eval()
    example = example_inputs(trainer)
    with torch.no_grad():
        output = model(example)
    signature = infer_signature(example.numpy(), output.numpy())
    client = MlflowClient(tracking_uri)
    status = client.get_run(run_id).info.status
    mlflow.set_tracking_uri(tracking_uri)
    import fishr_tune

    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"fishr-tune=={fishr_tune.__version__}"]
    try:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model, name=MODEL_NAME, signature=signature, input_example=example.numpy(), step=step,
                pip_requirements=requirements, tags={"fishr_tune.selected_step": str(step)},
            )
    finally:
        client.set_terminated(run_id, status=status)
    client.set_tag(run_id, "fishr_tune.model_uri", info.model_uri)
    return LoggedModel(run_id, step, info.model_uri, float(record["val_acc"]))
