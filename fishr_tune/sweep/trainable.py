"""The Tune trainable: fishr_tune.training.Trainer reporting every record with a checkpoint to resume from.

A retried trial loads `Trainer.state_dict()` (model, optimizers, algorithm state such as Fishr's moving averages,
sampler and RNG states) from its last checkpoint and continues at the step it stopped, not from 0.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
import torch
import torch.nn.functional as F
from ray import tune

from fishr_tune import records
from fishr_tune.data import MultiDomainDataset
from fishr_tune.sweep.schedule import SCHEDULER_METRIC, accuracy_resolution, scheduler_score
from fishr_tune.sweep.trial import FAILURE_KEY, GROUP_KEY, RunSettings, TrialSpec
from fishr_tune.training import CHECKPOINT_FILE, EVAL_CHUNK_SIZE, NonFiniteLossError, TrainConfig, Trainer

STEPS_TRAINED = "steps_trained"
NODE_ID = "node_id"
START_STEP = "start_step"

# Called after each report with the number of optimizer steps trained so far (a seam for fault-injection tests).
AfterReport = Callable[[int], None]


def dataset_key(trial_seed: int) -> str:
    return f"trial_seed={trial_seed}"


def trial_train_config(trial: TrialSpec, run: RunSettings) -> TrainConfig:
    """The TrainConfig of one trial: the searcher's choice (`trial`) plus the sweep-wide settings (`run`)."""
    return TrainConfig(
        dataset=trial.dataset,
        algorithm=trial.algorithm,
        test_envs=list(trial.test_envs),
        hparams=dict(trial.hparams),
        hparams_seed=0,
        trial_seed=trial.trial_seed,
        seed=trial.seed,
        steps=run.steps,
        checkpoint_freq=run.checkpoint_freq,
        holdout_fraction=run.holdout_fraction,
        label_noise=run.label_noise,
        device=run.device,
    )


def tune_metrics(record: Mapping[str, Any], group: str, steps_trained: int, start_step: int) -> dict[str, Any]:
    """The record flattened (hparams.<name>, args.<name>) plus what the sweep needs to route and count it."""
    metrics = records.flatten(record)
    metrics[GROUP_KEY] = group
    metrics[STEPS_TRAINED] = steps_trained
    metrics[START_STEP] = start_step
    metrics[NODE_ID] = ray.get_runtime_context().get_node_id()
    return metrics


def final_inconsistency(trainer: Trainer, epsilon: float) -> dict[str, float]:
    """The trained head's inconsistency score on the training environments' `in` splits, as `fishr-tune inspect`
    computes it from the run's checkpoint: logged with the trial's last record so MLflow can rank runs by it."""
    from fishr_tune.analysis.inspect import loss_kind, training_domains
    from fishr_tune.inconsistency import inconsistency

    report = inconsistency(trainer.algorithm.classifier, training_domains(trainer), loss_kind(trainer), epsilon=epsilon)
    trainer.algorithm.train()
    return {records.INCONSISTENCY: report.inconsistency, records.INCONSISTENCY_DIAGONAL: report.inconsistency_diagonal}


def validation_nll(trainer: Trainer) -> float | None:
    """Mean over the training envs of the mean loss on their out split (cross-entropy; a single logit: binary).

    None for file-backed image data: that would be a second pass over its validation images.
    """
    if trainer.file_splits is not None:
        return None
    losses = []
    trainer.algorithm.eval()
    try:
        with torch.no_grad():
            for env in trainer.train_envs:
                x, y = trainer.splits[env]["out"]
                if len(y) == 0:
                    return None
                total = 0.0
                for start in range(0, len(y), EVAL_CHUNK_SIZE):
                    logits = trainer.algorithm.predict(x[start : start + EVAL_CHUNK_SIZE]).float()
                    target = y[start : start + EVAL_CHUNK_SIZE]
                    if logits.shape[1] == 1:
                        loss = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), reduction="sum")
                    else:
                        loss = F.cross_entropy(logits, target, reduction="sum")
                    total += float(loss)
                losses.append(total / len(y))
    finally:
        trainer.algorithm.train()
    return sum(losses) / len(losses)


def scheduler_metrics(trainer: Trainer, record: Mapping[str, Any]) -> dict[str, Any]:
    """VAL_NLL and the score ASHA ranks by (val_acc with ties broken by that loss), for the record just taken."""
    nll = validation_nll(trainer)
    resolution = accuracy_resolution([trainer.split_size(env, "out") for env in trainer.train_envs])
    metrics: dict[str, Any] = {SCHEDULER_METRIC: scheduler_score(record[records.VAL_ACC], nll, resolution)}
    if nll is not None:
        metrics[records.VAL_NLL] = nll
    return metrics


def run_trial(
    config: dict[str, Any],
    dataset_refs: Mapping[str, Any],
    run: RunSettings,
    after_report: AfterReport | None = None,
) -> None:
    """Train one configuration, reporting each record to Tune with a checkpoint of the full trainer state."""
    trial = TrialSpec.from_config(config)
    torch.set_num_threads(max(1, int(run.cpus_per_trial)))
    dataset: MultiDomainDataset = ray.get(dataset_refs[dataset_key(trial.trial_seed)])
    trainer = Trainer(trial_train_config(trial, run), dataset=dataset)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load_checkpoint(Path(directory) / CHECKPOINT_FILE)
    start_step = trainer.step
    system = None
    if run.system_metrics:
        from fishr_tune.sweep.system_metrics import SystemMetrics

        system = SystemMetrics()
    try:
        for record in trainer.records():
            metrics = tune_metrics(record, trial.group, trainer.step, start_step)
            metrics.update(scheduler_metrics(trainer, record))
            if system is not None:
                metrics.update(system.take())
            if run.inconsistency_epsilon is not None and record[records.STEP] == trainer.steps - 1:
                metrics.update(final_inconsistency(trainer, run.inconsistency_epsilon))
            with tempfile.TemporaryDirectory() as directory:
                trainer.save_checkpoint(Path(directory) / CHECKPOINT_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
            if after_report is not None:
                after_report(trainer.step)
    except NonFiniteLossError as error:
        # Retrying from the checkpoint would diverge again: end the trial with the reason, the sweep goes on.
        tune.report({
            records.STEP: trainer.step,  # the step whose loss was not finite
            records.VAL_ACC: math.nan,
            FAILURE_KEY: f"non-finite loss: {error}",
            GROUP_KEY: trial.group,
            STEPS_TRAINED: trainer.step,
            START_STEP: start_step,
            NODE_ID: ray.get_runtime_context().get_node_id(),
        })
    finally:
        if system is not None:
            system.close()


def sweep_trainable(config: dict[str, Any], dataset_refs: Mapping[str, Any], run: RunSettings) -> None:
    """The function trainable the runner hands to Tune (via tune.with_parameters)."""
    run_trial(config, dataset_refs, run)
