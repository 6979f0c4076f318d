"""What a sweep's MLflow runs show, checked through the MLflow client against a real `mlflow server`: trial metrics
(best_val_acc / best_val_step), descriptions, statuses (ASHA-stopped runs are KILLED), dataset inputs, source tags,
the shared plot path, the parent's flat metrics and selected-trial tags, the experiment's view and description, and
`analyze --log-model`'s model, loaded back with mlflow.pytorch and pyfunc.

Records come from real `fishr_tune.training.Trainer` runs fed to the callback as Tune would (no Ray: seconds).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from fishr_tune import records
from fishr_tune.cli import main
from fishr_tune.data import get_dataset
from fishr_tune.records import BEST_VAL_ACC, BEST_VAL_STEP, SELECTED_RUN_TAG, VIEW_NAME
from fishr_tune.sweep.mlflow_inputs import split_entities
from fishr_tune.sweep.outcomes import GroupCounts, SweepSummary
from fishr_tune.sweep.spec import build_spec
from fishr_tune.sweep.tracking_callback import ACCURACY_PLOT, TrackingCallback
from fishr_tune.sweep.tracking_summary import finish_sweep_run
from fishr_tune.sweep.trainable import STEPS_TRAINED, dataset_key, trial_train_config
from fishr_tune.sweep.trial import GROUP_KEY, RunSettings, TrialSpec
from fishr_tune.tracking import MlflowJournal
from fishr_tune.tracking.mlflow_ui import (
    DESCRIPTION_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    VIEW_ID,
    VIEW_TAG_PREFIX,
)
from fishr_tune.training import Trainer

GROUP = "ERM/te2/ts0"
STEPS = 201
SETTINGS: dict[str, Any] = {
    "name": "looks", "description": "Does ERM's validation track its test accuracy?", "dataset": "ColoredMNIST-IRM",
    "algorithms": ["ERM"], "test_envs": [2], "trial_seeds": [0], "steps": STEPS, "checkpoint_freq": 100,
    "hyperparameters": {"lr": {"loguniform": [1e-3, 3e-3]}, "batch_size": {"choice": [32, 64]}, "hidden_dim": 64},
    "search": {"algorithm": "tpe", "num_samples": 2, "seed": 0},
    "scheduler": {"type": "asha", "grace_period": 100, "reduction_factor": 2},
}


@dataclass
class FakeTrial:
    """What the callback reads of a Tune trial."""

    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any] = field(default_factory=dict)


def trial_config(lr: float, batch_size: int, seed: int) -> dict[str, Any]:
    return {GROUP_KEY: GROUP, "dataset": "ColoredMNIST-IRM", "algorithm": "ERM", "test_envs": [2], "trial_seed": 0,
            "seed": seed, "hparams": {"lr": lr, "batch_size": batch_size, "hidden_dim": 64}}


def train_results(config: dict[str, Any], dataset: Any, upto: int) -> list[dict[str, Any]]:
    """The records a trial reports up to step `upto`, as Tune results."""
    run = RunSettings(steps=STEPS, checkpoint_freq=100, holdout_fraction=0.2, label_noise=None)
    trainer = Trainer(trial_train_config(TrialSpec.from_config(config), run), dataset=dataset)
    results = []
    for record in trainer.records():
        results.append({**records.flatten(record), GROUP_KEY: GROUP, STEPS_TRAINED: trainer.step})
        if record["step"] >= upto:
            break
    return results


@pytest.fixture(scope="module")
def recorded_sweep(mlflow_server, tmp_path_factory) -> dict[str, Any]:
    """Two trials of one group: `full` runs all 201 steps, `cut` is stopped by ASHA after step 100."""
    root = tmp_path_factory.mktemp("looks")
    spec = build_spec({**SETTINGS, "tracking_uri": mlflow_server.uri, "storage_path": str(root)}, str(root / "looks.yaml"))
    dataset = get_dataset("ColoredMNIST-IRM", seed=0)
    entities = {dataset_key(0): split_entities(dataset, 0, 0.2)}
    resolved = {"label_noise": dataset.info["label_noise"], "storage_path": str(root), "tracking_uri": mlflow_server.uri}
    journal = MlflowJournal(root / "journal", mlflow_server.uri, "looks")
    callback = TrackingCallback(spec, journal, entities, resolved)
    callback.start_sweep_run()
    trials = {"full": FakeTrial("full0001", trial_config(2e-3, 64, 1)), "cut": FakeTrial("cut00002", trial_config(1e-3, 32, 2))}
    results = {"full": train_results(trials["full"].config, dataset, STEPS), "cut": train_results(trials["cut"].config, dataset, 100)}
    for name, trial in trials.items():
        callback.on_trial_start(0, [], trial)
        for result in results[name]:
            callback.on_trial_result(0, [], trial, result)
        trial.last_result = results[name][-1]
        callback.on_trial_complete(0, [], trial)
    summary = SweepSummary(name="looks", experiment_dir=str(root), trials=2, finished=1, stopped_early=1, failed=0,
                           unfinished=0, steps_trained=301, steps_without_early_stopping=402, trial_compute_s=1.0,
                           wall_time_s=2.0, groups={GROUP: GroupCounts(finished=1, stopped_early=1, best_val_acc=0.5)})
    assert finish_sweep_run(callback, summary) == 0
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("looks")
    runs = {r.data.tags.get("ray_trial_id", "parent"): r for r in client.search_runs([experiment.experiment_id])}
    return {"client": client, "experiment": experiment, "runs": runs, "results": results, "entities": entities,
            "uri": mlflow_server.uri, "root": root}


def test_each_trial_has_its_best_validation_so_far_at_every_checkpoint(recorded_sweep) -> None:
    client, runs = recorded_sweep["client"], recorded_sweep["runs"]
    for name, trial_id in (("full", "full0001"), ("cut", "cut00002")):
        run_id = runs[trial_id].info.run_id
        best = {m.step: m.value for m in client.get_metric_history(run_id, BEST_VAL_ACC)}
        at = {m.step: m.value for m in client.get_metric_history(run_id, BEST_VAL_STEP)}
        val = [(r["step"], r[records.VAL_ACC]) for r in recorded_sweep["results"][name]]
        for index, (step, _) in enumerate(val):
            top = max(v for _, v in val[: index + 1])
            first = min(s for s, v in val[: index + 1] if v == top)
            assert best[step] == pytest.approx(top, abs=1e-12) and at[step] == first
        assert runs[trial_id].data.metrics[BEST_VAL_ACC] == pytest.approx(max(v for _, v in val), abs=1e-12)


def test_finished_and_asha_stopped_trials_look_different(recorded_sweep) -> None:
    full, cut = recorded_sweep["runs"]["full0001"], recorded_sweep["runs"]["cut00002"]
    assert full.info.status == "FINISHED" and cut.info.status == "KILLED"
    assert cut.data.tags["status"] == "stopped early at step 100 by ASHA"
    assert "**Stopped early at step 100 by ASHA.**" in cut.data.tags[DESCRIPTION_TAG]
    assert "**Finished.**" in full.data.tags[DESCRIPTION_TAG]
    assert "test env 2 (-90%)" in full.data.tags[DESCRIPTION_TAG] and "`lr`=0.002" in full.data.tags[DESCRIPTION_TAG]


def test_every_trial_has_one_input_per_environment_and_split(recorded_sweep) -> None:
    client, entities = recorded_sweep["client"], recorded_sweep["entities"][dataset_key(0)]
    run = client.get_run(recorded_sweep["runs"]["full0001"].info.run_id)
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert len(inputs) == 6
    dataset = get_dataset("ColoredMNIST-IRM", seed=0)
    contexts = {}
    for key, entity in entities.items():
        logged = inputs[entity["name"]]
        assert logged.dataset.digest == entity["digest"] and len(entity["digest"]) >= 8
        env, split = key.split("/")
        size = len(dataset.environments[int(env)])
        expected = int(size * 0.2) if split == "out" else size - int(size * 0.2)
        assert json.loads(logged.dataset.profile)["features_shape"] == [expected, 2, 14, 14]
        contexts[key] = {t.key: t.value for t in logged.tags}["mlflow.data.context"]
    assert contexts == {"0/in": "training", "0/out": "validation", "1/in": "training", "1/out": "validation",
                        "2/in": "test", "2/out": "test"}
    # the in and out splits of one environment are different data: different digests
    assert len({e["digest"] for e in entities.values()}) == 6


def test_source_tags_and_shared_plot_path(recorded_sweep) -> None:
    client, runs = recorded_sweep["client"], recorded_sweep["runs"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True).stdout.strip()
    for run in runs.values():
        assert run.data.tags["mlflow.source.git.commit"] == commit
        assert run.data.tags["mlflow.source.name"]
    for trial_id in ("full0001", "cut00002"):
        root = client.list_artifacts(runs[trial_id].info.run_id)  # Compare matches only the root's files
        assert [a.path for a in root if not a.is_dir] == [ACCURACY_PLOT] == ["accuracy.png"]


def test_the_parent_names_each_group_selection_with_flat_metrics_and_real_settings(recorded_sweep) -> None:
    parent, runs = recorded_sweep["runs"]["parent"], recorded_sweep["runs"]
    assert all("/" not in name for name in parent.data.metrics)
    assert parent.data.metrics["best_val_acc_ERM_te2_ts0"] == 0.5
    # training-domain selection as DomainBed's collect_results: each run's best validation, then the best run
    # (ties: the run that sorts last, as DomainBed's sort-and-reverse picks)
    best = [(max(r[records.VAL_ACC] for r in recorded_sweep["results"][name]), trial)
            for name, trial in (("full", "full0001"), ("cut", "cut00002"))]
    expected = max(best)[1]
    assert parent.data.tags[f"{SELECTED_RUN_TAG}ERM_te2_ts0"] == runs[expected].info.run_id
    # ... and its description names the selected trial as the run list shows it, with its best validation
    top = max(best)[0]
    description = parent.data.tags[DESCRIPTION_TAG]
    assert f"- `ERM/te2/ts0`: **{runs[expected].info.run_name}**, best_val_acc {top:.4f}" in description
    # right after the question, where MLflow's collapsed description still shows it
    assert description.index("Does ERM's") < description.index("**Selected by") < description.index("TPE search")
    assert parent.data.params["label_noise"] == "0.25"
    assert parent.data.params["storage_path"] == str(recorded_sweep["root"])
    assert parent.data.params["tracking_uri"] == recorded_sweep["uri"]
    assert json.loads(parent.data.tags[records.SPACE_TAG]) == {"ERM": {"lr": "loguniform", "batch_size": "choice"}}


def test_the_experiment_opens_on_training_runs_with_its_description(recorded_sweep) -> None:
    tags = recorded_sweep["experiment"].tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    assert tags[DESCRIPTION_TAG].startswith("Does ERM's validation track its test accuracy?")
    assert "TPE search, 2 configurations per group" in tags[DESCRIPTION_TAG]


def test_the_experiment_has_a_saved_view_of_the_trials_ranked_by_best_validation(recorded_sweep) -> None:
    """MLflow keeps the run list's columns per browser; the saved view (under *Views*) is the experiment's own."""
    client, experiment = recorded_sweep["client"], recorded_sweep["experiment"]
    envelope = json.loads(experiment.tags[f"{VIEW_TAG_PREFIX}{VIEW_ID}"])
    assert envelope["name"] == VIEW_NAME and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])  # MLflow's UI parses the state from a JSON string
    assert state["selectedColumns"][:3] == ["metrics.`best_val_acc`", "metrics.`best_val_step`", "metrics.`val_acc`"]
    assert {"params.`lr`", "params.`batch_size`"} <= set(state["selectedColumns"])
    assert "params.`hidden_dim`" not in state["selectedColumns"]  # fixed in the space, not searched
    # the view's filter and sort are valid MLflow search syntax and give the trials, best validation first
    key = state["orderByKey"].split("`")[1]
    assert state["orderByKey"] == f"metrics.`{key}`" and key == BEST_VAL_ACC and state["orderByAsc"] is False
    found = client.search_runs([experiment.experiment_id], state["searchFilter"], order_by=[f"metrics.{key} DESC"])
    trials = [r for r in recorded_sweep["runs"].values() if r.data.tags.get(records.KIND_TAG) == records.KIND_TRIAL]
    assert sorted(r.info.run_id for r in found) == sorted(r.info.run_id for r in trials) and len(found) == 2
    values = [r.data.metrics[BEST_VAL_ACC] for r in found]
    assert values == sorted(values, reverse=True)


def test_the_quickstart_files_description_reaches_its_experiment(mlflow_server, tmp_path) -> None:
    """The shipped file, as `fishr-tune sweep` loads it: its own words open the experiment's description."""
    from fishr_tune.sweep.spec import load_spec

    source = Path(__file__).resolve().parents[2] / "search_spaces" / "quickstart.yaml"
    spec = load_spec(source)
    spec = build_spec({**spec.settings.model_dump(mode="json"), "name": "qs-description", "tracking_uri": mlflow_server.uri,
                       "storage_path": str(tmp_path)}, str(source))
    callback = TrackingCallback(spec, MlflowJournal(tmp_path / "journal", mlflow_server.uri, "qs-description"))
    callback.start_sweep_run()
    assert callback.journal.flush(force=True) == 0
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("qs-description")
    description = experiment.tags[DESCRIPTION_TAG]
    assert description.startswith(load_spec(source).settings.description + "\n\n")
    assert "ColoredMNIST-IRM: ERM, Fishr" in description  # then what the sweep covers, from the same file
    parent = client.search_runs([experiment.experiment_id])[0]
    assert parent.data.tags[DESCRIPTION_TAG] == description and "description" not in parent.data.params


def test_analyze_logs_the_selected_checkpoint_as_a_loadable_model(recorded_sweep) -> None:
    import mlflow.pyfunc
    import mlflow.pytorch

    client, uri = recorded_sweep["client"], recorded_sweep["uri"]
    result = CliRunner().invoke(main, ["analyze", "--experiment", "looks", "--tracking-uri", uri,
                                       "--selection", "training_domain", "--log-model", "--format", "json"])
    assert result.exit_code == 0, result.output
    parent = recorded_sweep["runs"]["parent"]
    selected_id = parent.data.tags[f"{SELECTED_RUN_TAG}ERM_te2_ts0"]
    run = client.get_run(selected_id)
    status_before = next(r for r in recorded_sweep["runs"].values() if r.info.run_id == selected_id).info.status
    assert run.info.status == status_before  # logging the model does not reopen or relabel the run
    model_uri = run.data.tags["fishr_tune.model_uri"]
    model = mlflow.pytorch.load_model(model_uri)
    info = mlflow.models.get_model_info(model_uri)
    assert info.signature is not None and tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 2, 14, 14)
    assert info.run_id == selected_id
    # the loaded model's accuracy on the test environment's in split is the recorded one at the selected step
    run = RunSettings(steps=1, checkpoint_freq=1, holdout_fraction=0.2)
    trainer = Trainer(trial_train_config(TrialSpec.from_config(trial_config(0.001, 32, 0)), run))
    x, y = trainer.splits[2]["in"]
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())
    accuracy = correct / len(y)  # counted exactly: a float32 mean would differ from the record by its rounding
    history = {m.step: m.value for m in client.get_metric_history(selected_id, "env2_in_acc")}
    selected_step = int(client.get_logged_model(info.model_id).tags["fishr_tune.selected_step"])
    assert accuracy == pytest.approx(history[selected_step], abs=1e-12)
    logits = mlflow.pyfunc.load_model(model_uri).predict(x[:5].numpy())
    assert np.asarray(logits).shape == (5, 2)
    np.testing.assert_allclose(np.asarray(logits), model(x[:5]).detach().numpy(), rtol=1e-5, atol=1e-6)
