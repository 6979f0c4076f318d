"""What a sweep trial reports for early stopping: the validation loss and the tie-broken score (no Ray cluster)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fishr_tune import records
from fishr_tune.sweep.schedule import SCHEDULER_METRIC, accuracy_resolution
from fishr_tune.sweep.trainable import scheduler_metrics, validation_nll
from fishr_tune.training import Trainer, make_config


def trainer_for(algorithm: str = "ERM", **hparams: float) -> Trainer:
    return Trainer(make_config({"dataset": "ColoredMNIST-IRM", "algorithm": algorithm, "test_envs": [2], "steps": 30,
                                "checkpoint_freq": 10, "device": "cpu", "hparams": hparams}, "test"))


def reference_nll(trainer: Trainer) -> float:
    """Independently: the whole out split through the network at once, torch's mean reduction, in float64."""
    losses = []
    with torch.no_grad():
        for env in trainer.train_envs:
            x, y = trainer.splits[env]["out"]
            logits = trainer.algorithm.predict(x).double()
            losses.append(float(F.binary_cross_entropy_with_logits(logits[:, 0], y.double()) if logits.shape[1] == 1
                                else F.cross_entropy(logits, y)))
    return sum(losses) / len(losses)


def test_the_validation_loss_is_the_training_envs_out_split_loss_and_falls_as_training_fits() -> None:
    trainer = trainer_for(lr=1e-3)
    first = next(trainer.records())
    nll_first = validation_nll(trainer)
    assert trainer.algorithm.training  # evaluation leaves the model in training mode
    # float32 logits summed in batches against a float64 reference: agreement to 1e-5 relative
    assert nll_first == pytest.approx(reference_nll(trainer), rel=1e-5)
    for record in trainer.records():
        last = record
    assert validation_nll(trainer) < nll_first  # 30 Adam steps at 1e-3 fit the colour shortcut
    assert last[records.STEP] > first[records.STEP]


def test_the_reported_score_is_val_acc_plus_a_tie_break_below_half_its_resolution() -> None:
    trainer = trainer_for(lr=1e-3)
    record = next(trainer.records())
    metrics = scheduler_metrics(trainer, record)
    resolution = accuracy_resolution([trainer.split_size(env, "out") for env in trainer.train_envs])
    assert resolution == 1 / (2 * math.lcm(*(trainer.split_size(env, "out") for env in trainer.train_envs)))
    assert metrics[records.VAL_NLL] == validation_nll(trainer)
    assert record[records.VAL_ACC] < metrics[SCHEDULER_METRIC] < record[records.VAL_ACC] + resolution / 2
